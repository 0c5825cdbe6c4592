//! Replay: a deterministic generator of realistic, labelled LLM telemetry.
//!
//! Latency and errors per provider come from llmperf measurements, token mixes and
//! arrival burstiness from the Azure 2023 and Mooncake traces, and the daily rate shape
//! from ServeGen, all through the fitted constants in [`params`] (regenerate them with
//! the `fit-replay` binary). Nothing outside the crate is read at run time.
//!
//! A [`Replay`] yields [`LabeledEvent`]s in time order. With `incidents` on, five
//! labelled incidents ([`IncidentKind`]) are laid out one after another, each on its own
//! service × model key and only after that key has a warm-up of clean events.

mod arrivals;
pub mod catalog;
pub mod fit;
mod incident;
#[rustfmt::skip]
pub mod params;
pub mod profile;
mod text;

use std::collections::BTreeMap;

use chrono::DateTime;
use sentinel_core::Event;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::rng::{splitmix64, Rng, WeightedIndex};
use arrivals::{Arrivals, ServiceArrivalSpec};
pub use catalog::{model_traits, ModelTraits};
pub use fit::{fit_traces, FitError};
pub use incident::{Incident, IncidentId, IncidentKind, Signal};
pub use profile::FittedParams;
use profile::{ArrivalFit, LatencyProfile, TokenMix};
use text::Failure;

impl FittedParams {
    /// The parameters committed in `params.rs`.
    pub fn committed() -> Self {
        FittedParams {
            latency_profiles: params::LATENCY_PROFILES.to_vec(),
            token_mixes: params::TOKEN_MIXES.to_vec(),
            arrivals: params::ARRIVALS.to_vec(),
            diurnal: params::DIURNAL,
            diurnal_clients: params::DIURNAL_CLIENTS,
        }
    }
}

/// Default start of event time: Monday 2026-01-05 09:00 UTC.
pub const DEFAULT_START: &str = "2026-01-05T09:00:00Z";
/// Pause between consecutive incidents, seconds.
pub const INCIDENT_GAP_S: i64 = 60;
/// Latencies are capped here (ms), below the validation bound of 300 000 ms.
pub const MAX_LATENCY_MS: f64 = 290_000.0;

const EVENT_STREAM: u64 = 1;
const INCIDENT_STREAM: u64 = 2;
const ARRIVAL_STREAM_BASE: u64 = 1_000;
const CONTENT_FILTER_RATE: f64 = 0.002;
const NEW_SESSION_RATE: f64 = 0.05;
/// Arrival fits active less than this fraction of windows count as bursty.
const BURSTY_ON_FRACTION: f64 = 0.9;

/// The type of traffic a service sends, selecting its token mix and burstiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Code completion and assistance (Azure 2023 code trace).
    Code,
    /// Chat (Azure 2023 conversation trace).
    Conversation,
    /// Long-context conversation and summarisation (Mooncake trace).
    LongContext,
}

impl Workload {
    /// The name of the workload's token mix and arrival fit in [`params`].
    pub fn name(self) -> &'static str {
        match self {
            Workload::Code => "code",
            Workload::Conversation => "conversation",
            Workload::LongContext => "long-context",
        }
    }
}

/// One model a service calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name (must be known to [`catalog::MODELS`]).
    pub model: String,
    /// Provider reported on events (`openai`, `anthropic`, `together`, ...).
    pub provider: String,
    /// Name of the latency profile in [`params::LATENCY_PROFILES`] (e.g. `together_70b`).
    pub latency_profile: String,
    /// Relative share of the service's calls.
    #[serde(default = "default_weight")]
    pub weight: f64,
}

/// One service (application) sending telemetry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name (`service_name` on events).
    pub name: String,
    /// Kind of traffic.
    pub workload: Workload,
    /// Relative share of all traffic.
    pub share: f64,
    /// Whether the service reports `cost_usd` itself (otherwise Sentinel prices events).
    #[serde(default)]
    pub reports_cost: bool,
    /// Prompts longer than this are truncated (context budget).
    #[serde(default = "default_max_prompt_tokens")]
    pub max_prompt_tokens: u32,
    /// `max_tokens` of the service's calls; reaching it finishes with `length`.
    #[serde(default = "default_max_completion_tokens")]
    pub max_completion_tokens: u32,
    /// Models called, 1 to 16.
    pub models: Vec<ModelConfig>,
}

fn default_weight() -> f64 {
    1.0
}

fn default_max_prompt_tokens() -> u32 {
    90_000
}

fn default_max_completion_tokens() -> u32 {
    8_192
}

/// Settings of a replay run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Start of event time (RFC 3339).
    pub start: String,
    /// Length of event time, seconds.
    pub duration_s: f64,
    /// Stop after this many events, if set.
    pub max_events: Option<u64>,
    /// Mean request rate over a day, events per second (the time of day scales it).
    pub base_rate_per_s: f64,
    /// Number of distinct users.
    pub users: u32,
    /// Exponent of the Zipf-like user popularity.
    pub user_zipf_exponent: f64,
    /// A user's session ends after this much idle time, seconds.
    pub session_idle_timeout_s: f64,
    /// Fraction of events carrying prompt/response text.
    pub text_rate: f64,
    /// Fraction of texts containing PII (email, phone, card number, IP).
    pub pii_rate: f64,
    /// Whether to inject the labelled incidents.
    pub incidents: bool,
    /// Clean events an affected key has before its incident starts.
    pub warmup_events_per_key: u32,
    /// The services.
    pub services: Vec<ServiceConfig>,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            seed: 42,
            start: DEFAULT_START.to_owned(),
            duration_s: 1_800.0,
            max_events: None,
            base_rate_per_s: 150.0,
            users: 20_000,
            user_zipf_exponent: 1.1,
            session_idle_timeout_s: 1_800.0,
            text_rate: 0.05,
            pii_rate: 0.3,
            incidents: true,
            warmup_events_per_key: 1_500,
            services: catalog::default_services(),
        }
    }
}

/// A generated event and the incident it belongs to, if any.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabeledEvent {
    /// The telemetry event.
    pub event: Event,
    /// The injected incident covering this event, if any.
    pub incident: Option<IncidentId>,
}

/// Why a replay could not be set up.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// A configuration value is out of range.
    #[error("invalid replay configuration: {0}")]
    Config(String),
    /// The start time is not RFC 3339.
    #[error("invalid start time {start:?}: {message}")]
    Start {
        /// The rejected value.
        start: String,
        /// Parser message.
        message: String,
    },
    /// A model names a latency profile that was not fitted.
    #[error("{service}/{model}: unknown latency profile {profile:?}; known: {known}")]
    UnknownProfile {
        /// Service of the model.
        service: String,
        /// The model.
        model: String,
        /// The unknown profile name.
        profile: String,
        /// Comma-separated known profiles.
        known: String,
    },
    /// A model is not in the built-in catalog.
    #[error("{service}: unknown model {model:?}; known: {known}")]
    UnknownModel {
        /// Service of the model.
        service: String,
        /// The unknown model.
        model: String,
        /// Comma-separated known models.
        known: String,
    },
    /// The fitted parameters lack a workload (a damaged `params.rs`).
    #[error("params.rs has no token mix or arrival fit for workload {0:?}")]
    MissingWorkload(String),
    /// No key can take an incident of this kind (e.g. no service reports cost).
    #[error("no service/model key can take a {0:?} incident (cost jumps need a service with reports_cost)")]
    NoKeyForIncident(IncidentKind),
    /// A key chosen for an incident never reaches its warm-up.
    #[error("{service}/{model} gets only {events} events, fewer than the {needed} warm-up events its incident needs")]
    WarmupNotReached {
        /// Affected service.
        service: String,
        /// Affected model.
        model: String,
        /// Events the key gets in the whole run.
        events: u64,
        /// Warm-up required.
        needed: u32,
    },
    /// The incidents do not fit in the run.
    #[error(
        "the incidents need {needed_s:.0} s of event time but the replay lasts {duration_s:.0} s"
    )]
    IncidentsDoNotFit {
        /// Event time the incidents need.
        needed_s: f64,
        /// Configured duration.
        duration_s: f64,
    },
}

/// One service × model key, resolved against the parameters.
#[derive(Debug, Clone)]
struct Key {
    service: usize,
    model: String,
    provider: String,
    profile: &'static LatencyProfile,
    traits: ModelTraits,
    incident: Option<usize>,
}

/// One service, resolved against the parameters.
#[derive(Debug, Clone)]
struct Service {
    name: String,
    workload: Workload,
    mix: &'static TokenMix,
    reports_cost: bool,
    max_prompt: u64,
    max_completion: u64,
    keys: Vec<usize>,
    user_offset: usize,
}

/// Iterator of labelled events replaying realistic LLM traffic.
#[derive(Debug, Clone)]
pub struct Replay {
    config: ReplayConfig,
    start_ms: i64,
    services: Vec<Service>,
    keys: Vec<Key>,
    incidents: Vec<Incident>,
    arrivals: Arrivals,
    rng: Rng,
    users: WeightedIndex,
    user_ids: Vec<String>,
    sessions: Vec<(u64, i64)>,
    session_idle_ms: i64,
    emitted: u64,
}

fn config_error(message: impl Into<String>) -> ReplayError {
    ReplayError::Config(message.into())
}

fn check_range(name: &str, value: f64, low: f64, high: f64) -> Result<(), ReplayError> {
    if value.is_finite() && (low..=high).contains(&value) {
        Ok(())
    } else {
        Err(config_error(format!(
            "{name} is {value}; must be within {low}..={high}"
        )))
    }
}

fn validate(config: &ReplayConfig) -> Result<(), ReplayError> {
    check_range("duration_s", config.duration_s, 1.0, 90.0 * 86_400.0)?;
    check_range("base_rate_per_s", config.base_rate_per_s, 1e-3, 1e7)?;
    check_range("user_zipf_exponent", config.user_zipf_exponent, 0.0, 10.0)?;
    check_range(
        "session_idle_timeout_s",
        config.session_idle_timeout_s,
        1.0,
        1e7,
    )?;
    check_range("text_rate", config.text_rate, 0.0, 1.0)?;
    check_range("pii_rate", config.pii_rate, 0.0, 1.0)?;
    if config.users == 0 || config.users > 1_000_000 {
        return Err(config_error(format!(
            "users is {}; must be within 1..=1000000",
            config.users
        )));
    }
    if config.services.is_empty() || config.services.len() > 64 {
        return Err(config_error("services must list 1 to 64 services"));
    }
    for (i, s) in config.services.iter().enumerate() {
        if s.name.trim().is_empty() {
            return Err(config_error(format!("service {i} has an empty name")));
        }
        if config.services[..i].iter().any(|o| o.name == s.name) {
            return Err(config_error(format!(
                "service {:?} is listed twice",
                s.name
            )));
        }
        check_range(&format!("{}.share", s.name), s.share, 1e-9, 1e9)?;
        if s.max_prompt_tokens == 0 || s.max_completion_tokens == 0 {
            return Err(config_error(format!(
                "{}: max_prompt_tokens and max_completion_tokens must be positive",
                s.name
            )));
        }
        if s.models.is_empty() || s.models.len() > 16 {
            return Err(config_error(format!(
                "{}: models must list 1 to 16 models",
                s.name
            )));
        }
        for (j, m) in s.models.iter().enumerate() {
            if m.model.trim().is_empty() || m.provider.trim().is_empty() {
                return Err(config_error(format!(
                    "{}: model {j} has an empty model or provider name",
                    s.name
                )));
            }
            if s.models[..j].iter().any(|o| o.model == m.model) {
                return Err(config_error(format!(
                    "{}: model {:?} is listed twice",
                    s.name, m.model
                )));
            }
            check_range(
                &format!("{}/{}.weight", s.name, m.model),
                m.weight,
                1e-9,
                1e9,
            )?;
        }
    }
    Ok(())
}

fn token_mix(workload: Workload) -> Result<&'static TokenMix, ReplayError> {
    params::TOKEN_MIXES
        .iter()
        .find(|m| m.name == workload.name())
        .ok_or_else(|| ReplayError::MissingWorkload(workload.name().to_owned()))
}

fn arrival_fit(workload: Workload) -> Result<&'static ArrivalFit, ReplayError> {
    params::ARRIVALS
        .iter()
        .find(|a| a.name == workload.name())
        .ok_or_else(|| ReplayError::MissingWorkload(workload.name().to_owned()))
}

impl Replay {
    /// Sets up a replay; fails on invalid configuration or when the incidents do not fit.
    pub fn new(config: ReplayConfig) -> Result<Self, ReplayError> {
        validate(&config)?;
        let start_ms = DateTime::parse_from_rfc3339(&config.start)
            .map_err(|e| ReplayError::Start {
                start: config.start.clone(),
                message: e.to_string(),
            })?
            .timestamp_millis();

        let total_share: f64 = config.services.iter().map(|s| s.share).sum();
        let mut services = Vec::new();
        let mut keys = Vec::new();
        let mut specs = Vec::new();
        for (si, sc) in config.services.iter().enumerate() {
            let mut key_indices = Vec::new();
            for mc in &sc.models {
                let profile = params::LATENCY_PROFILES
                    .iter()
                    .find(|p| p.name == mc.latency_profile.as_str())
                    .ok_or_else(|| ReplayError::UnknownProfile {
                        service: sc.name.clone(),
                        model: mc.model.clone(),
                        profile: mc.latency_profile.clone(),
                        known: params::LATENCY_PROFILES
                            .iter()
                            .map(|p| p.name.as_ref())
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let traits = model_traits(&mc.model).ok_or_else(|| ReplayError::UnknownModel {
                    service: sc.name.clone(),
                    model: mc.model.clone(),
                    known: catalog::MODELS
                        .iter()
                        .map(|(m, _)| *m)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
                key_indices.push(keys.len());
                keys.push(Key {
                    service: si,
                    model: mc.model.clone(),
                    provider: mc.provider.clone(),
                    profile,
                    traits,
                    incident: None,
                });
            }
            specs.push(ServiceArrivalSpec {
                fit: arrival_fit(sc.workload)?,
                mean_rate: config.base_rate_per_s * sc.share / total_share,
                key_weights: sc.models.iter().map(|m| m.weight).collect(),
            });
            services.push(Service {
                name: sc.name.clone(),
                workload: sc.workload,
                mix: token_mix(sc.workload)?,
                reports_cost: sc.reports_cost,
                max_prompt: u64::from(sc.max_prompt_tokens),
                max_completion: u64::from(sc.max_completion_tokens),
                keys: key_indices,
                user_offset: (si * config.users as usize / config.services.len()),
            });
        }

        let second_of_day = start_ms.rem_euclid(86_400_000) as f64 / 1000.0;
        let arrivals = Arrivals::new(
            config.seed,
            ARRIVAL_STREAM_BASE,
            second_of_day,
            config.duration_s,
            specs,
        );

        let weights: Vec<f64> = (1..=config.users)
            .map(|rank| f64::from(rank).powf(-config.user_zipf_exponent))
            .collect();
        let users = WeightedIndex::new(&weights)
            .map_err(|e| config_error(format!("user popularity: {e}")))?;
        let user_ids = (0..config.users).map(|u| format!("user-{u:06}")).collect();

        let mut replay = Replay {
            start_ms,
            services,
            keys,
            incidents: Vec::new(),
            arrivals,
            rng: Rng::from_stream(config.seed, EVENT_STREAM),
            users,
            user_ids,
            sessions: vec![(0, i64::MIN / 2); config.users as usize],
            session_idle_ms: (config.session_idle_timeout_s * 1000.0) as i64,
            emitted: 0,
            config,
        };
        if replay.config.incidents {
            replay.plan_incidents()?;
        }
        Ok(replay)
    }

    /// The injected incidents, in time order.
    pub fn incidents(&self) -> &[Incident] {
        &self.incidents
    }

    /// The configuration the replay runs with.
    pub fn config(&self) -> &ReplayConfig {
        &self.config
    }

    /// Start of event time, Unix ms.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }

    /// End of event time (exclusive), Unix ms.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + (self.config.duration_s * 1000.0) as i64
    }

    /// Chooses the incident keys and lays the incidents out one after another, each after
    /// its key's warm-up (found by running the arrival stream ahead).
    fn plan_incidents(&mut self) -> Result<(), ReplayError> {
        let duration_ms = (self.config.duration_s * 1000.0) as i64;
        let mut candidates = Vec::new();
        for (si, sc) in self.config.services.iter().enumerate() {
            let total_weight: f64 = sc.models.iter().map(|m| m.weight).sum();
            let fit = arrival_fit(sc.workload)?;
            for (mi, mc) in sc.models.iter().enumerate() {
                candidates.push(incident::Candidate {
                    key: self.services[si].keys[mi],
                    service: si,
                    reports_cost: sc.reports_cost,
                    bursty: fit.on_fraction() < BURSTY_ON_FRACTION,
                    expected_rate: sc.share * mc.weight / total_weight,
                });
            }
        }
        let chosen = incident::choose_keys(&candidates).map_err(ReplayError::NoKeyForIncident)?;

        let needed = u64::from(self.config.warmup_events_per_key.max(1));
        let mut counts = vec![0u64; self.keys.len()];
        let mut warm_at = vec![None; self.keys.len()];
        let mut waiting = chosen.len();
        for (t, s, k) in self.arrivals.clone() {
            let key = self.services[s].keys[k];
            counts[key] += 1;
            if counts[key] == needed && chosen.iter().any(|&(_, c)| c == key) {
                warm_at[key] = Some(t);
                waiting -= 1;
                if waiting == 0 {
                    break;
                }
            }
        }

        let mut magnitude_rng = Rng::from_stream(self.config.seed, INCIDENT_STREAM);
        let mut cursor_ms = 0i64;
        for (n, kind) in IncidentKind::ALL.into_iter().enumerate() {
            let Some(&(_, key)) = chosen.iter().find(|(k, _)| *k == kind) else {
                return Err(ReplayError::NoKeyForIncident(kind));
            };
            let (service, model) = (
                &self.services[self.keys[key].service].name,
                &self.keys[key].model,
            );
            let warm_s = warm_at[key].ok_or_else(|| ReplayError::WarmupNotReached {
                service: service.clone(),
                model: model.clone(),
                events: counts[key],
                needed: self.config.warmup_events_per_key,
            })?;
            let after_warmup_ms = ((warm_s * 1000.0).floor() as i64 / 1000 + 1) * 1000;
            let start = cursor_ms.max(after_warmup_ms);
            let end = start + i64::from(kind.duration_s()) * 1000;
            if end > duration_ms {
                let remaining: i64 = IncidentKind::ALL[n + 1..]
                    .iter()
                    .map(|k| (i64::from(k.duration_s()) + INCIDENT_GAP_S) * 1000)
                    .sum();
                return Err(ReplayError::IncidentsDoNotFit {
                    needed_s: (end + remaining) as f64 / 1000.0,
                    duration_s: self.config.duration_s,
                });
            }
            cursor_ms = end + INCIDENT_GAP_S * 1000;
            let magnitude = kind.draw_magnitude(&mut magnitude_rng);
            self.incidents.push(incident::incident(
                n as u32 + 1,
                kind,
                service,
                model,
                (self.start_ms + start, self.start_ms + end),
                magnitude,
            ));
            self.keys[key].incident = Some(self.incidents.len() - 1);
        }
        Ok(())
    }

    /// Builds the event of one arrival.
    fn make_event(&mut self, timestamp_ms: i64, key_index: usize) -> LabeledEvent {
        let Replay {
            config,
            services,
            keys,
            incidents,
            rng,
            users,
            user_ids,
            sessions,
            session_idle_ms,
            ..
        } = self;
        let key = &keys[key_index];
        let service = &services[key.service];
        let active = key
            .incident
            .map(|i| &incidents[i])
            .filter(|inc| inc.covers(timestamp_ms));
        let active_kind = active.map(|inc| inc.kind);
        let magnitude = active.map_or(1.0, |inc| inc.magnitude);

        let prompt_tokens =
            (service.mix.input_tokens.sample(rng).round() as u64).clamp(1, service.max_prompt);
        let mut completion =
            (service.mix.output_tokens.sample(rng).round() as u64).clamp(1, service.max_completion);
        if active_kind == Some(IncidentKind::TokenBlowup) {
            completion =
                ((completion as f64 * magnitude).round() as u64).min(service.max_completion);
        }

        let failure = if active_kind == Some(IncidentKind::ErrorBurst) {
            rng.bernoulli(magnitude)
                .then(|| Failure::draw(rng, &Failure::OUTAGE))
        } else {
            let u = rng.uniform();
            let rate_limit = key.profile.rate_limit_rate;
            if u < rate_limit {
                Some(Failure::RateLimited)
            } else if u < rate_limit + key.profile.other_error_rate {
                Some(Failure::draw(rng, &Failure::OTHER))
            } else {
                None
            }
        };

        let mut ttft_ms =
            key.profile.ttft_s.sample(rng) * 1000.0 + key.traits.prefill_ms(prompt_tokens);
        let mut latency_ms = match failure {
            Some(Failure::Timeout) => 60_000.0 + rng.uniform_range(0.0, 500.0),
            Some(_) => ttft_ms,
            None => {
                let per_token_ms = key.profile.time_per_output_token_s.sample(rng) * 1000.0;
                ttft_ms + (completion - 1) as f64 * per_token_ms
            }
        };
        let slowdown = match (active_kind, active) {
            (Some(IncidentKind::LatencySpike), _) => magnitude,
            (Some(IncidentKind::SlowDrift), Some(inc)) => {
                1.0 + (magnitude - 1.0) * inc.progress(timestamp_ms)
            }
            _ => 1.0,
        };
        if failure != Some(Failure::Timeout) {
            ttft_ms *= slowdown;
            latency_ms *= slowdown;
        }
        let latency_ms = round_to(latency_ms.clamp(0.1, MAX_LATENCY_MS), 1000.0);

        let (completion_tokens, finish_reason) = if failure.is_some() {
            (0, None)
        } else if completion >= service.max_completion {
            (completion, Some("length"))
        } else if rng.bernoulli(CONTENT_FILTER_RATE) {
            (completion, Some("content_filter"))
        } else {
            (completion, Some("stop"))
        };
        let cost_usd = service.reports_cost.then(|| {
            if failure.is_some() {
                0.0
            } else {
                let factor = if active_kind == Some(IncidentKind::CostJump) {
                    magnitude
                } else {
                    1.0
                };
                key.traits.cost_usd(prompt_tokens, completion_tokens) * factor
            }
        });

        let rank = users.sample(rng);
        let user = (rank + service.user_offset) % user_ids.len();
        let (session_no, last_ms) = &mut sessions[user];
        if timestamp_ms - *last_ms > *session_idle_ms || rng.bernoulli(NEW_SESSION_RATE) {
            *session_no += 1;
        }
        *last_ms = timestamp_ms;
        let mut session_seed = config.seed ^ ((user as u64) << 24) ^ *session_no;
        let session_id = text::hex_of("sess_", splitmix64(&mut session_seed));

        let (prompt_text, response_text) = if rng.bernoulli(config.text_rate) {
            let with_pii = rng.bernoulli(config.pii_rate);
            let (prompt, response) = text::conversation(rng, service.workload, with_pii);
            (Some(prompt), failure.is_none().then_some(response))
        } else {
            (None, None)
        };

        let mut metadata = BTreeMap::new();
        match failure {
            Some(f) => metadata.insert("http_status".to_owned(), f.status().into()),
            None => metadata.insert("ttft_ms".to_owned(), round_to(ttft_ms, 10.0).into()),
        };

        let event = Event {
            event_id: Some(text::uuid_v4(rng)),
            timestamp_ms,
            service: service.name.clone(),
            model: key.model.clone(),
            provider: Some(key.provider.clone()),
            trace_id: Some(text::hex_id(rng, "", 32)),
            span_id: Some(text::hex_id(rng, "", 16)),
            user_id: Some(user_ids[user].clone()),
            session_id: Some(session_id),
            request_id: Some(text::hex_id(rng, "req_", 24)),
            latency_ms,
            prompt_tokens: Some(prompt_tokens),
            completion_tokens: Some(completion_tokens),
            total_tokens: Some(prompt_tokens + completion_tokens),
            cost_usd,
            finish_reason: finish_reason.map(str::to_owned),
            prompt_text,
            response_text,
            errors: failure
                .map(|f| vec![f.message().to_owned()])
                .unwrap_or_default(),
            metadata,
        };
        LabeledEvent {
            event,
            incident: active.map(|inc| inc.id),
        }
    }
}

fn round_to(x: f64, scale: f64) -> f64 {
    (x * scale).round() / scale
}

impl Iterator for Replay {
    type Item = LabeledEvent;

    fn next(&mut self) -> Option<LabeledEvent> {
        if self.config.max_events.is_some_and(|m| self.emitted >= m) {
            return None;
        }
        let (t_s, service, key) = self.arrivals.next()?;
        self.emitted += 1;
        let timestamp_ms = self.start_ms + (t_s * 1000.0).floor() as i64;
        let key_index = self.services[service].keys[key];
        Some(self.make_event(timestamp_ms, key_index))
    }
}
