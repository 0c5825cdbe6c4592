//! A shard's detection: baselines of every (service, model) key, detector state and dedup,
//! turning events into anomalies deterministically, with serialisable state and a digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::anomaly::{rfc3339, stable_uuid, Anomaly, AnomalyContext, AnomalyDetails, Finding};
use crate::config::{ConfigError, DetectionConfig, DetectorKind, MetricConfig, Scale};
use crate::dedup::{Dedup, DedupKey, Repeat};
use crate::detect::{iqr_score, modified_z_score, z_score, IQR_CONSISTENCY, MAD_CONSISTENCY};
use crate::drift::Drift;
use crate::event::Event;
use crate::incident::{Actor, CallEvidence, Change, Incident, Notification, Resolution, Silence};
use crate::key::{cap_evidence, KeyState, MetricState};
use crate::metric::{Metric, MetricValues};
use crate::onset::OnsetDetector;
use crate::window::{quantile_of_sorted, Window};

/// What observing one event produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    /// Alerts raised by this event.
    pub anomalies: Vec<Anomaly>,
    /// Hits folded into alerts that were already open.
    pub repeats: Vec<Repeat>,
    /// Whether any detector flagged the event, raised or folded.
    pub flagged: bool,
    /// Incidents this event opened, escalated or resolved.
    pub incidents: Vec<Change>,
    /// What receivers are told of those changes.
    pub notifications: Vec<Notification>,
}

/// Why an operator's request about an incident or silence cannot be carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IncidentError {
    /// No open incident has this id on this shard.
    #[error("no open incident {0}")]
    NotOpen(String),
    /// No silence has this id on this shard.
    #[error("no silence {0}")]
    NoSilence(String),
}

/// Why a serialised detection state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The bytes are not a detection state of this version.
    #[error("detection state is corrupt or of another version: {0}")]
    Decode(#[from] crate::codec::CodecError),
    /// The state decoded but carries an unusable configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Statistics of one metric's baseline, in the metric's own units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricBaseline {
    /// Metric name.
    pub metric: String,
    /// Samples in the window.
    pub count: usize,
    /// Mean of the samples.
    pub mean: f64,
    /// Population standard deviation of the samples.
    pub std_dev: f64,
    /// Median.
    pub median: f64,
    /// First quartile.
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Median absolute deviation from the median.
    pub mad: f64,
}

/// The baselines of one (service, model) key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyBaseline {
    /// Service.
    pub service_name: String,
    /// Model.
    pub model: String,
    /// Events observed on this key.
    pub events: u64,
    /// Share of failed calls over the error-rate baseline buckets and the current bucket.
    pub error_rate: f64,
    /// Median requests per request-rate bucket, once a bucket closed.
    pub requests_per_bucket: Option<f64>,
    /// Per-metric statistics (metrics with no sample yet are left out).
    pub metrics: Vec<MetricBaseline>,
}

/// The detection state of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardDetector {
    shard: u32,
    #[serde(with = "config_as_json")]
    config: DetectionConfig,
    /// Effective per-metric settings, derived from `config`, in [`Metric::ALL`] order.
    #[serde(skip)]
    metric_configs: Vec<MetricConfig>,
    /// Keys by service, then model; boxed so a map node does not hold eleven key states inline.
    keys: BTreeMap<String, BTreeMap<String, Box<KeyState>>>,
    dedup: Dedup,
    observed: u64,
    raised: u64,
    /// Silences by id.
    silences: BTreeMap<String, Silence>,
}

impl ShardDetector {
    /// An empty detector for `shard` with a checked configuration.
    pub fn new(shard: u32, config: DetectionConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(ShardDetector {
            shard,
            metric_configs: resolve(&config),
            config,
            keys: BTreeMap::new(),
            dedup: Dedup::default(),
            observed: 0,
            raised: 0,
            silences: BTreeMap::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &DetectionConfig {
        &self.config
    }

    /// Replaces the configuration; windows already created keep the size they were created with.
    pub fn set_config(&mut self, config: DetectionConfig) -> Result<(), ConfigError> {
        config.check()?;
        self.metric_configs = resolve(&config);
        self.config = config;
        Ok(())
    }

    /// Events observed so far.
    pub fn observed(&self) -> u64 {
        self.observed
    }

    /// Alerts raised so far (repeats folded into open alerts not counted).
    pub fn raised(&self) -> u64 {
        self.raised
    }

    /// Number of (service, model) keys with a baseline.
    pub fn key_count(&self) -> usize {
        self.keys.values().map(BTreeMap::len).sum()
    }

    /// Whether (service, model) has a baseline.
    pub fn has_key(&self, service: &str, model: &str) -> bool {
        self.keys
            .get(service)
            .is_some_and(|models| models.contains_key(model))
    }

    /// Number of models of `service` with a baseline.
    pub fn model_count(&self, service: &str) -> usize {
        self.keys.get(service).map_or(0, BTreeMap::len)
    }

    /// The (service, model) keys with a baseline, in key order.
    pub fn keys(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys
            .iter()
            .flat_map(|(s, models)| models.keys().map(move |m| (s.as_str(), m.as_str())))
    }

    /// Scores one event against the baselines as they were before it, then adds it.
    ///
    /// `values` are the event's metrics (see `pricing::extract_metrics`). Metrics of a
    /// failed call are not added to the value baselines (a rate-limited call's latency
    /// says nothing about the model); the call still counts for error rate, request
    /// rate and per-user usage.
    pub fn observe(&mut self, event: &Event, values: &MetricValues) -> Observation {
        self.observed += 1;
        let cfg = &self.config;
        let shard = self.shard;
        let silences = &self.silences;
        let key = match self
            .keys
            .get_mut(event.service.as_str())
            .and_then(|models| models.get_mut(event.model.as_str()))
        {
            Some(key) => key,
            None => self
                .keys
                .entry(event.service.clone())
                .or_default()
                .entry(event.model.clone())
                .or_insert_with(|| Box::new(KeyState::new(cfg))),
        };
        key.events += 1;
        let at = event.timestamp_ms;
        let failed = event.is_error();
        // During an incident the key's baselines keep their level for a while, so the
        // incident is judged against what was normal before it.
        let hold = key.tracker.holds(at, &cfg.incidents);
        let mut findings = Vec::new();
        let mut evidence = CallEvidence::default();
        if !failed {
            key.value_evidence(values, &self.metric_configs, cfg, at, hold, &mut evidence);
            for metric in Metric::ALL {
                if let Some(v) = values.get(metric).filter(|v| v.is_finite()) {
                    let state = &mut key.metrics[metric.index()];
                    let mc = &self.metric_configs[metric.index()];
                    observe_metric(state, metric, mc, cfg, at, v, !hold, &mut findings);
                }
            }
        }
        key.error_evidence(failed, cfg, at, &mut evidence);
        findings.extend(key.error_rate.observe(at, failed, &cfg.error_rate));
        findings.extend(key.request_rate.observe(at, &cfg.request_rate));
        if let Some(user) = event.user_id.as_deref() {
            findings.extend(key.users.observe(at, user, &cfg.user_usage));
        }
        key.finding_evidence(&findings, cfg, at, &mut evidence);
        cap_evidence(values, cfg, at, &mut evidence);
        let incidents = key.tracker.step(
            at,
            (&event.service, &event.model),
            evidence,
            &cfg.incidents,
            |ordinal| {
                stable_uuid(
                    b"sentinel-incident\0",
                    &[
                        &shard.to_be_bytes(),
                        event.service.as_bytes(),
                        &[0],
                        event.model.as_bytes(),
                        &[0],
                        &ordinal.to_be_bytes(),
                    ],
                )
            },
            |incident| {
                silences
                    .values()
                    .find(|s| s.matches(incident, at))
                    .map(|s| s.silence_id.clone())
            },
        );
        let open_incident = key.tracker.open.as_ref().map(|i| i.incident_id.clone());
        let runbook = cfg.runbook_base_url.as_deref();
        let mut out = Observation {
            flagged: !findings.is_empty(),
            notifications: incidents
                .iter()
                .filter(|c| c.notify)
                .map(|c| Notification::of(c.kind, &c.incident, at, runbook))
                .collect(),
            incidents,
            ..Observation::default()
        };
        for finding in findings {
            self.raise(event, finding, open_incident.as_deref(), &mut out);
        }
        if open_incident.is_some() && !out.anomalies.is_empty() {
            if let Some(key) = self.key_mut(&event.service, &event.model) {
                for anomaly in &out.anomalies {
                    key.tracker.link(&anomaly.alert_id);
                }
            }
        }
        out
    }

    fn key_mut(&mut self, service: &str, model: &str) -> Option<&mut KeyState> {
        self.keys
            .get_mut(service)
            .and_then(|models| models.get_mut(model))
            .map(|key| &mut **key)
    }

    /// Open incidents of the shard, in key order.
    pub fn open_incidents(&self) -> Vec<&Incident> {
        self.keys
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|key| key.tracker.open.as_ref())
            .collect()
    }

    /// The silences of the shard, active or not, in id order.
    pub fn silences(&self) -> impl Iterator<Item = &Silence> {
        self.silences.values()
    }

    /// Adds (or replaces) a silence; it keeps back notifications of incidents opening while it is active.
    pub fn add_silence(&mut self, silence: Silence) {
        self.silences.insert(silence.silence_id.clone(), silence);
    }

    /// Ends a silence at `at_ms` (it stays listed until purged).
    pub fn expire_silence(
        &mut self,
        silence_id: &str,
        at_ms: i64,
    ) -> Result<&Silence, IncidentError> {
        let silence = self
            .silences
            .get_mut(silence_id)
            .ok_or_else(|| IncidentError::NoSilence(silence_id.to_owned()))?;
        silence.ends_at_ms = silence.ends_at_ms.min(at_ms);
        Ok(silence)
    }

    /// Forgets silences that ended before `before_ms`; returns how many.
    pub fn purge_silences(&mut self, before_ms: i64) -> usize {
        let before = self.silences.len();
        self.silences.retain(|_, s| s.ends_at_ms >= before_ms);
        before - self.silences.len()
    }

    fn open_incident_mut(&mut self, incident_id: &str) -> Result<&mut KeyState, IncidentError> {
        self.keys
            .values_mut()
            .flat_map(BTreeMap::values_mut)
            .find(|key| {
                key.tracker
                    .open
                    .as_ref()
                    .is_some_and(|i| i.incident_id == incident_id)
            })
            .map(|key| &mut **key)
            .ok_or_else(|| IncidentError::NotOpen(incident_id.to_owned()))
    }

    /// Acknowledges an open incident: it stays open but sends no escalation notifications.
    pub fn acknowledge(
        &mut self,
        incident_id: &str,
        actor: Actor,
    ) -> Result<Incident, IncidentError> {
        let key = self.open_incident_mut(incident_id)?;
        let incident = key.tracker.open.as_mut().expect("found open above");
        incident.acknowledged = Some(actor);
        Ok(incident.clone())
    }

    /// Resolves an open incident by hand; the change, and the notification receivers get.
    pub fn resolve_incident(
        &mut self,
        incident_id: &str,
        actor: Actor,
    ) -> Result<(Change, Option<Notification>), IncidentError> {
        let runbook = self.config.runbook_base_url.clone();
        let key = self.open_incident_mut(incident_id)?;
        let at = actor.at_ms;
        let change = key
            .tracker
            .close(at, Resolution::Manual, Some(actor))
            .expect("found open above");
        let notification = change
            .notify
            .then(|| Notification::of(change.kind, &change.incident, at, runbook.as_deref()));
        Ok((change, notification))
    }

    fn raise(
        &mut self,
        event: &Event,
        finding: Finding,
        incident: Option<&str>,
        out: &mut Observation,
    ) {
        let window = self.config.dedup_window_ms;
        let at = event.timestamp_ms;
        let key = DedupKey {
            service: event.service.clone(),
            model: event.model.clone(),
            metric: finding.metric.to_owned(),
            anomaly_type: finding.anomaly_type,
        };
        if let Some(repeat) = self.dedup.fold(&key, at, window) {
            out.repeats.push(repeat);
            return;
        }
        let alert_id = self.alert_id(finding.metric, finding.anomaly_type.name());
        let related_alerts = self.dedup.open_on(&event.service, &event.model, at, window);
        self.dedup.open(key, alert_id.clone(), at);
        self.raised += 1;
        let severity = self.config.severity.severity(finding.ratio);
        let confidence =
            self.config
                .severity
                .confidence(finding.ratio, finding.votes, finding.voters);
        let mut additional = BTreeMap::new();
        for (name, value) in [
            ("event_id", event.event_id.as_ref()),
            ("provider", event.provider.as_ref()),
            ("session_id", event.session_id.as_ref()),
        ] {
            if let Some(value) = value {
                additional.insert(name.to_owned(), value.clone().into());
            }
        }
        let anomaly_type = finding.anomaly_type;
        out.anomalies.push(Anomaly {
            alert_id,
            timestamp: rfc3339(at),
            timestamp_ms: at,
            severity,
            anomaly_type,
            service_name: event.service.clone(),
            model: event.model.clone(),
            detection_method: finding.method.to_owned(),
            confidence,
            details: AnomalyDetails {
                metric: finding.metric.to_owned(),
                value: finding.value,
                baseline: finding.baseline,
                threshold: finding.threshold,
                deviation_sigma: finding.deviation_sigma,
                additional: finding.additional,
            },
            context: AnomalyContext {
                trace_id: event.trace_id.clone(),
                user_id: event.user_id.clone(),
                region: event
                    .metadata
                    .get("region")
                    .and_then(|r| r.as_str())
                    .map(str::to_owned),
                time_window: finding.time_window,
                sample_count: finding.sample_count,
                additional,
            },
            root_cause: None,
            remediation: anomaly_type
                .remediation()
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            related_alerts,
            runbook_url: self
                .config
                .runbook_base_url
                .as_ref()
                .map(|base| format!("{}/{}", base.trim_end_matches('/'), anomaly_type.name())),
            incident_id: incident.map(str::to_owned),
        });
    }

    /// A stable UUID-shaped id from the shard, the event's position and what was raised.
    fn alert_id(&self, metric: &str, anomaly_type: &str) -> String {
        stable_uuid(
            b"sentinel-alert\0",
            &[
                &self.shard.to_be_bytes(),
                &self.observed.to_be_bytes(),
                metric.as_bytes(),
                &[0],
                anomaly_type.as_bytes(),
            ],
        )
    }

    /// Forgets dedup entries of alerts raised before `before_ms`; returns how many.
    pub fn purge_dedup(&mut self, before_ms: i64) -> usize {
        self.dedup.purge(before_ms)
    }

    /// Baselines of the keys matching `service` and `model` (`None` matches all), in key order.
    pub fn baselines(&self, service: Option<&str>, model: Option<&str>) -> Vec<KeyBaseline> {
        let mut out = Vec::new();
        for (svc, models) in &self.keys {
            if service.is_some_and(|s| s != svc) {
                continue;
            }
            for (mdl, key) in models {
                if model.is_some_and(|m| m != mdl) {
                    continue;
                }
                out.push(self.key_baseline(svc, mdl, key));
            }
        }
        out
    }

    fn key_baseline(&self, service: &str, model: &str, key: &KeyState) -> KeyBaseline {
        let ((requests, errors), (history_requests, history_errors)) = key.error_rate.counts();
        let (requests, errors) = (
            u64::from(requests) + history_requests,
            u64::from(errors) + history_errors,
        );
        KeyBaseline {
            service_name: service.to_owned(),
            model: model.to_owned(),
            events: key.events,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            requests_per_bucket: key.request_rate.median_per_bucket(),
            metrics: Metric::ALL
                .iter()
                .filter_map(|&m| {
                    raw_baseline(
                        &key.metrics[m.index()].window,
                        m,
                        self.metric_configs[m.index()].scale,
                    )
                })
                .collect(),
        }
    }

    /// The state as canonical bytes (same events in the same order give the same bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    /// Restores a state written by [`ShardDetector::to_bytes`], or by an earlier version
    /// (bincode, before the format byte; its first byte may be anything, so it is tried
    /// when the current encoding does not decode).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let mut state: ShardDetector = match crate::codec::decode(bytes) {
            Ok(state) => state,
            Err(current) => bincode::deserialize(bytes).map_err(|_| current)?,
        };
        state.config.check()?;
        state.metric_configs = resolve(&state.config);
        Ok(state)
    }

    /// SHA-256 of the canonical bytes, as lowercase hex: equal on replicas that agree.
    pub fn digest(&self) -> String {
        Sha256::digest(self.to_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The configuration travels as JSON text inside the binary state: it holds internally
/// tagged enums, which bincode (the state's encoding before the format byte) cannot
/// decode, and checkpoints of that encoding must still restore.
mod config_as_json {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::config::DetectionConfig;

    pub fn serialize<S: Serializer>(config: &DetectionConfig, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&serde_json::to_string(config).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DetectionConfig, D::Error> {
        serde_json::from_str(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// The effective settings of every metric, in [`Metric::ALL`] order.
fn resolve(config: &DetectionConfig) -> Vec<MetricConfig> {
    Metric::ALL.iter().map(|&m| config.metric(m)).collect()
}

/// Scores `raw` on one metric, adds it to the baseline if `learn`, and appends what fired.
#[allow(clippy::too_many_arguments)]
fn observe_metric(
    state: &mut MetricState,
    metric: Metric,
    mc: &MetricConfig,
    cfg: &DetectionConfig,
    at: i64,
    raw: f64,
    learn: bool,
    findings: &mut Vec<Finding>,
) {
    let t = mc.scale.forward(raw);
    let mut keep_out = false;
    if state.window.len() >= cfg.min_samples {
        findings.extend(point_finding(&state.window, metric, mc, cfg, raw, t));
    } else if let Some(finding) = young_finding(&state.window, metric, mc, cfg, raw, t) {
        // Never more calls kept out than kept: a key whose first calls were the odd ones
        // still builds a baseline.
        keep_out = (state.held_out as usize) < state.window.len();
        findings.push(finding);
    }
    if cfg.cusum.enabled && mc.runs(DetectorKind::Cusum) {
        let drift = state
            .drift
            .get_or_insert_with(|| Drift::new(cfg.cusum.baseline_buckets));
        findings.extend(drift.observe(at, t, raw, metric, mc, &cfg.cusum));
    }
    if cfg.onset.enabled && mc.runs(DetectorKind::Onset) {
        let median = state.window.median();
        let onset = state
            .onset
            .get_or_insert_with(|| Box::new(OnsetDetector::new(cfg.onset.detector)));
        let score = onset.update(at.div_euclid(1000), t);
        let side = median.map_or(0.0, |m| (t - m).signum());
        if score.onset && score.surprisal >= cfg.onset.threshold && mc.direction.admits(side) {
            findings.push(onset_finding(metric, mc, cfg, raw, median, score.surprisal));
        }
    }
    if learn && keep_out {
        state.held_out = state.held_out.saturating_add(1);
    } else if learn {
        state.window.push(t);
    }
}

/// A young baseline's judgement of `t` (see [`crate::config::YoungConfig`]): its distance
/// from the key's median in predictive standard deviations of a spread pooled from the
/// prior and the key's own calls (their MAD).
fn young_finding(
    w: &Window,
    metric: Metric,
    mc: &MetricConfig,
    cfg: &DetectionConfig,
    raw: f64,
    t: f64,
) -> Option<Finding> {
    let young = &cfg.young;
    let n = w.len();
    if !young.enabled || n == 0 || !matches!(mc.scale, Scale::Log { .. }) {
        return None;
    }
    // Median and MAD: one odd call among a young key's few does not move them.
    let median = w.median()?;
    let own_df = (n - 1) as f64;
    let own_var = (w.mad()? / MAD_CONSISTENCY).powi(2);
    let pooled_var = (young.prior_weight * young.prior_spread.powi(2) + own_df * own_var)
        / (young.prior_weight + own_df);
    let sd = pooled_var.sqrt().max(mc.floor.at(median)) * (1.0 + 1.0 / n as f64).sqrt();
    let z = (t - median) / sd;
    if !mc.direction.admits(z) || z.abs() <= young.threshold {
        return None;
    }
    let mut additional = BTreeMap::new();
    additional.insert("prior_spread".into(), young.prior_spread.into());
    raw_figures(w, mc.scale, &mut additional);
    Some(Finding {
        metric: metric.name(),
        anomaly_type: mc.point_type,
        method: "young_baseline",
        value: raw,
        baseline: mc.scale.inverse(median),
        threshold: mc.scale.inverse(median + z.signum() * young.threshold * sd),
        deviation_sigma: z,
        ratio: z.abs() / young.threshold,
        votes: 1,
        voters: 1,
        sample_count: n as u64,
        time_window: format!("last {n} samples"),
        additional,
    })
}

/// The finding of an onset of `surprisal` on `metric`.
fn onset_finding(
    metric: Metric,
    mc: &MetricConfig,
    cfg: &DetectionConfig,
    raw: f64,
    median: Option<f64>,
    surprisal: f64,
) -> Finding {
    let mut additional = BTreeMap::new();
    additional.insert("surprisal".into(), surprisal.into());
    let baseline = median.map_or(raw, |m| mc.scale.inverse(m));
    Finding {
        metric: metric.name(),
        anomaly_type: mc.point_type,
        method: DetectorKind::Onset.name(),
        value: raw,
        baseline,
        threshold: baseline,
        deviation_sigma: 0.0,
        ratio: surprisal / cfg.onset.threshold,
        votes: 1,
        voters: 1,
        sample_count: cfg.onset.detector.window as u64,
        time_window: format!("last {} values", cfg.onset.detector.window),
        additional,
    }
}

/// Votes of the point detectors on `t`; a finding when enough of them agree.
fn point_finding(
    w: &Window,
    metric: Metric,
    mc: &MetricConfig,
    cfg: &DetectionConfig,
    raw: f64,
    t: f64,
) -> Option<Finding> {
    let detectors = [
        (DetectorKind::ZScore, cfg.z_score),
        (DetectorKind::Iqr, cfg.iqr),
        (DetectorKind::Mad, cfg.mad),
    ];
    let voters = detectors
        .iter()
        .filter(|(kind, d)| d.enabled && mc.runs(*kind))
        .count();
    let needed = cfg.min_votes.min(voters);
    let n = w.len();
    let mut votes = 0;
    let mut judged = 0;
    let mut best: Option<(f64, DetectorKind, f64, f64)> = None;
    // Cheapest first (z-score is O(1)); stop as soon as the vote cannot be reached.
    for (kind, detector) in detectors {
        if !detector.enabled || !mc.runs(kind) {
            continue;
        }
        if votes + (voters - judged) < needed {
            return None;
        }
        judged += 1;
        let (score, sigmas) = match kind {
            DetectorKind::ZScore => (z_score(w, t, mc.floor), detector.threshold),
            // The Tukey fence Q3 + k·IQR lies 0.6745 + 1.349 k σ out on a normal sample.
            DetectorKind::Iqr => (
                iqr_score(w, t, mc.floor),
                MAD_CONSISTENCY + IQR_CONSISTENCY * detector.threshold,
            ),
            _ => (modified_z_score(w, t, mc.floor), detector.threshold),
        };
        let score = score?;
        let threshold = detector.threshold * small_sample_factor(n, sigmas);
        if mc.direction.admits(score) && score.abs() > threshold {
            votes += 1;
            let ratio = score.abs() / threshold;
            if best.is_none_or(|(r, ..)| ratio > r) {
                best = Some((ratio, kind, score, threshold));
            }
        }
    }
    let (ratio, kind, score, threshold) = best?;
    if votes < needed {
        return None;
    }
    let median = w.median()?;
    let side = score.signum();
    let (threshold_t, deviation_sigma) = match kind {
        DetectorKind::ZScore => {
            let mean = w.mean()?;
            let sd = w.std_dev()?.max(mc.floor.at(mean));
            (mean + side * threshold * sd, score)
        }
        DetectorKind::Iqr => {
            let (q1, q3) = (w.q1()?, w.q3()?);
            let iqr = (q3 - q1).max(mc.floor.at(median));
            let fence = if side > 0.0 { q3 } else { q1 };
            // IQR of a normal sample is 1.349 σ.
            (
                fence + side * threshold * iqr,
                (t - median) / (iqr / IQR_CONSISTENCY),
            )
        }
        _ => {
            let mad = w.mad()?.max(mc.floor.at(median));
            (median + side * threshold * mad / MAD_CONSISTENCY, score)
        }
    };
    let mut additional = BTreeMap::new();
    additional.insert("votes".into(), votes.into());
    additional.insert("detectors".into(), voters.into());
    raw_figures(w, mc.scale, &mut additional);
    Some(Finding {
        metric: metric.name(),
        anomaly_type: mc.point_type,
        method: kind.name(),
        value: raw,
        baseline: mc.scale.inverse(median),
        threshold: mc.scale.inverse(threshold_t),
        deviation_sigma,
        ratio,
        votes,
        voters,
        sample_count: w.len() as u64,
        time_window: format!("last {} samples", w.len()),
        additional,
    })
}

/// How much wider a threshold of `sigmas` σ must be when the baseline has only `n`
/// samples: the ratio of Student's t quantile with n − 1 degrees of freedom to the
/// normal quantile at the same tail probability (Cornish–Fisher expansion), i.e. the
/// prediction interval of a new value rather than the interval of known parameters.
/// 1.35 at n = 10 for 3σ, 1.03 at n = 100, 1.003 at n = 1000.
fn small_sample_factor(n: usize, sigmas: f64) -> f64 {
    let nu = n.saturating_sub(1).max(1) as f64;
    let z2 = sigmas * sigmas;
    1.0 + (z2 + 1.0) / (4.0 * nu) + (5.0 * z2 * z2 + 16.0 * z2 + 3.0) / (96.0 * nu * nu)
}

/// Adds what consumers of the original single-process Sentinel read to a flagged value's
/// figures: the baseline's mean and standard deviation in the metric's own units (O(W),
/// for a flagged value only).
fn raw_figures(w: &Window, scale: Scale, additional: &mut BTreeMap<String, serde_json::Value>) {
    let raw: Vec<f64> = w.iter().map(|t| scale.inverse(t)).collect();
    if let Some((mean, std_dev)) = raw_moments(&raw) {
        additional.insert("baseline_mean".into(), mean.into());
        additional.insert("baseline_stddev".into(), std_dev.into());
    }
}

/// Mean and population standard deviation of raw values; `None` when there are none.
fn raw_moments(raw: &[f64]) -> Option<(f64, f64)> {
    if raw.is_empty() {
        return None;
    }
    let n = raw.len() as f64;
    let mean = raw.iter().sum::<f64>() / n;
    let var = raw.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

/// Statistics of a window in raw units (O(W log W): a query, not the hot path).
fn raw_baseline(w: &Window, metric: Metric, scale: Scale) -> Option<MetricBaseline> {
    let mut raw: Vec<f64> = w.iter().map(|t| scale.inverse(t)).collect();
    let (mean, std_dev) = raw_moments(&raw)?;
    raw.sort_by(f64::total_cmp);
    let q = quantile_of_sorted;
    let median = q(&raw, 0.5)?;
    let mut dev: Vec<f64> = raw.iter().map(|x| (x - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    Some(MetricBaseline {
        metric: metric.name().to_owned(),
        count: raw.len(),
        mean,
        std_dev,
        median,
        q1: q(&raw, 0.25)?,
        q3: q(&raw, 0.75)?,
        p95: q(&raw, 0.95)?,
        p99: q(&raw, 0.99)?,
        mad: q(&dev, 0.5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::{AnomalyType, Severity};
    use crate::test_calls::{Call, Draws};

    /// Log-normal traffic for one key, with a deterministic generator.
    struct Traffic {
        draws: Draws,
        at: i64,
    }

    impl Traffic {
        fn new() -> Self {
            Traffic {
                draws: Draws::new(None),
                at: 1_767_600_000_000,
            }
        }

        /// The next call: 10 calls/s, latency median 800 ms (σ 0.5 in log space).
        fn next(&mut self, latency_factor: f64, failed: bool) -> (Event, MetricValues) {
            self.at += 100;
            let d = &mut self.draws;
            let latency_ms = 800.0 * (0.5 * d.normal()).exp() * latency_factor;
            let prompt_tokens = (500.0 * (0.3 * d.normal()).exp()).round();
            let completion_tokens = (200.0 * (0.3 * d.normal()).exp()).round();
            Call {
                at: self.at,
                user: d.user(50),
                latency_ms,
                prompt_tokens,
                completion_tokens,
                cost_usd: prompt_tokens * 2.5e-6 + completion_tokens * 1e-5,
                error: failed.then_some("429 Too Many Requests"),
            }
            .observed()
        }
    }

    fn detector() -> ShardDetector {
        ShardDetector::new(7, DetectionConfig::default()).unwrap()
    }

    fn run(d: &mut ShardDetector, t: &mut Traffic, n: usize, factor: f64) -> Vec<Anomaly> {
        (0..n)
            .flat_map(|_| {
                let (e, v) = t.next(factor, false);
                d.observe(&e, &v).anomalies
            })
            .collect()
    }

    #[test]
    fn latency_spike_raises_one_alert_with_the_contract_fields() {
        let mut d = detector();
        let mut t = Traffic::new();
        run(&mut d, &mut t, 2000, 1.0);
        d.purge_dedup(i64::MAX);
        let (e, v) = t.next(20.0, false);
        let out = d.observe(&e, &v);
        let spike = out
            .anomalies
            .iter()
            .find(|a| a.anomaly_type == AnomalyType::LatencySpike)
            .expect("a 20x latency spike is raised");
        assert_eq!(spike.service_name, "chat");
        assert_eq!(spike.model, "gpt-4o");
        assert_eq!(spike.details.metric, "latency_ms");
        assert!(spike.details.value > spike.details.threshold);
        assert!(spike.details.threshold > spike.details.baseline);
        assert!((600.0..1000.0).contains(&spike.details.baseline));
        assert!(spike.severity >= Severity::Medium);
        assert!(spike.confidence > 0.5 && spike.confidence <= 1.0);
        assert_eq!(spike.context.sample_count, 1000);
        let json = serde_json::to_value(spike).unwrap();
        for field in [
            "alert_id",
            "timestamp",
            "severity",
            "anomaly_type",
            "service_name",
            "model",
            "detection_method",
            "confidence",
            "details",
            "context",
            "root_cause",
            "remediation",
            "related_alerts",
            "runbook_url",
        ] {
            assert!(json.get(field).is_some(), "alert JSON lacks {field}");
        }
        assert_eq!(json["anomaly_type"], "latency_spike");
        assert_eq!(json["timestamp"].as_str().unwrap().len(), 24);
    }

    #[test]
    fn a_point_alert_carries_the_region_and_the_baselines_mean_and_stddev_in_metric_units() {
        let mut d = detector();
        let mut t = Traffic::new();
        run(&mut d, &mut t, 2000, 1.0);
        d.purge_dedup(i64::MAX);
        let latency = d.baselines(Some("chat"), None)[0].metrics[0].clone();
        let (mut e, v) = t.next(20.0, false);
        e.metadata
            .insert("region".into(), serde_json::json!("eu-west-1"));
        let out = d.observe(&e, &v);
        let spike = out
            .anomalies
            .iter()
            .find(|a| a.anomaly_type == AnomalyType::LatencySpike)
            .expect("a 20x latency spike is raised");
        assert_eq!(spike.context.region.as_deref(), Some("eu-west-1"));
        let figure = |name: &str| spike.details.additional[name].as_f64().unwrap();
        assert!((figure("baseline_mean") / latency.mean - 1.0).abs() < 1e-9);
        assert!((figure("baseline_stddev") / latency.std_dev - 1.0).abs() < 1e-9);
        let json = serde_json::to_value(spike).unwrap();
        assert_eq!(json["context"]["region"], "eu-west-1");
        let mut plain = spike.clone();
        plain.context.region = None;
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json["context"].get("region").is_none(), "no region, no key");
    }

    /// The original example producer's run: 20 normal calls spread over 12 service/model
    /// pairs, then one slow, token-heavy call on every pair.
    fn original_example_run(d: &mut ShardDetector, t: &mut Traffic) -> Vec<Anomaly> {
        let pairs: Vec<(String, String)> = ["chatbot", "summarizer", "translator"]
            .iter()
            .flat_map(|s| {
                ["gpt-4", "gpt-3.5-turbo", "claude-3", "llama-2"]
                    .map(|m| (s.to_string(), m.to_string()))
            })
            .collect();
        let call = |t: &mut Traffic, (service, model): &(String, String), factor: f64| {
            let (mut e, mut v) = t.next(1.0, false);
            e.service = service.clone();
            e.model = model.clone();
            for metric in [Metric::LatencyMs, Metric::PromptTokens, Metric::TotalTokens] {
                v.set(metric, v.get(metric).map(|x| x * factor));
            }
            (e, v)
        };
        for i in 0..20 {
            let (e, v) = call(t, &pairs[i % pairs.len()], 1.0);
            d.observe(&e, &v);
        }
        let mut raised = Vec::new();
        for pair in &pairs {
            let (e, v) = call(t, pair, 12.0);
            raised.extend(d.observe(&e, &v).anomalies);
        }
        raised
    }

    #[test]
    fn cold_keys_are_judged_from_their_second_call_and_their_outliers_kept_out() {
        let mut d = detector();
        let mut t = Traffic::new();
        let first = original_example_run(&mut d, &mut t);
        let caught = |raised: &[Anomaly]| {
            raised
                .iter()
                .map(|a| (a.service_name.clone(), a.model.clone()))
                .collect::<std::collections::BTreeSet<_>>()
        };
        // Eight pairs got two normal calls, four got one.
        assert!(caught(&first).len() >= 8, "{first:#?}");
        assert!(first.iter().all(|a| a.detection_method == "young_baseline"));
        for flagged in &first {
            let baseline = &d.baselines(Some(&flagged.service_name), Some(&flagged.model))[0];
            let metric = baseline
                .metrics
                .iter()
                .find(|m| m.metric == flagged.details.metric)
                .unwrap();
            assert!(
                metric.p99 < flagged.details.value,
                "a flagged call entered the young baseline: {metric:#?}"
            );
        }
        d.purge_dedup(i64::MAX);
        let second = original_example_run(&mut d, &mut t);
        assert_eq!(caught(&second).len(), 12, "a second run: {second:#?}");
    }

    #[test]
    fn hits_of_one_incident_fold_into_the_open_alert() {
        let cfg = DetectionConfig {
            dedup_window_ms: 30_000,
            ..DetectionConfig::default()
        };
        let mut d = ShardDetector::new(7, cfg).unwrap();
        let mut t = Traffic::new();
        run(&mut d, &mut t, 2000, 1.0);
        d.purge_dedup(i64::MAX);
        let mut raised = 0;
        let mut repeats = Vec::new();
        for _ in 0..5 {
            let (e, v) = t.next(20.0, false);
            let out = d.observe(&e, &v);
            raised += out
                .anomalies
                .iter()
                .filter(|a| a.anomaly_type == AnomalyType::LatencySpike)
                .count();
            repeats.extend(out.repeats);
        }
        assert_eq!(raised, 1);
        assert!(repeats.iter().any(|r| r.count == 5));
        // after 40 s of quiet traffic (more than the 30 s window), a new spike is a new alert
        run(&mut d, &mut t, 400, 1.0);
        let (e, v) = t.next(20.0, false);
        assert!(d
            .observe(&e, &v)
            .anomalies
            .iter()
            .any(|a| a.anomaly_type == AnomalyType::LatencySpike));
    }

    #[test]
    fn clean_traffic_raises_almost_nothing() {
        let mut d = detector();
        let mut t = Traffic::new();
        let mut flagged = 0;
        for _ in 0..20_000 {
            let (e, v) = t.next(1.0, false);
            flagged += usize::from(d.observe(&e, &v).flagged);
        }
        assert!(flagged < 100, "{flagged} of 20000 clean events flagged");
    }

    #[test]
    fn slow_latency_drift_is_caught_by_cusum() {
        let mut d = detector();
        let mut t = Traffic::new();
        // twelve minutes of history: the drift detector needs ten closed buckets
        run(&mut d, &mut t, 7200, 1.0);
        let mut drift = Vec::new();
        // latency creeping up to ×2.5 over five minutes
        for i in 0..3000 {
            let factor = 1.0 + 1.5 * f64::from(i) / 3000.0;
            let (e, v) = t.next(factor, false);
            drift.extend(
                d.observe(&e, &v)
                    .anomalies
                    .into_iter()
                    .filter(|a| a.anomaly_type == AnomalyType::LatencyDrift)
                    .map(|a| (i, a)),
            );
        }
        let (at, first) = drift.first().expect("a ×2.5 ramp is caught");
        assert_eq!(first.detection_method, "cusum");
        assert_eq!(first.context.time_window, "60s");
        assert!(*at < 1800, "caught only after {at} events");
    }

    #[test]
    fn failed_calls_feed_error_rate_not_latency() {
        let mut d = detector();
        let mut t = Traffic::new();
        for i in 0..4000 {
            let (e, v) = t.next(1.0, i % 100 == 0);
            d.observe(&e, &v);
        }
        let latency_before = d.baselines(Some("chat"), None)[0].metrics[0].clone();
        let mut burst = Vec::new();
        for i in 0..600 {
            let (mut e, mut v) = t.next(1.0, i % 2 == 0);
            if e.is_error() {
                // a rate-limited call returns at once
                e.latency_ms = 5.0;
                v.set(Metric::LatencyMs, Some(5.0));
            }
            burst.extend(d.observe(&e, &v).anomalies);
        }
        assert!(burst
            .iter()
            .any(|a| a.anomaly_type == AnomalyType::ErrorRateIncrease
                && a.detection_method == "error_rate"));
        assert!(!burst.iter().any(|a| a.details.metric == "latency_ms"));
        let latency_after = &d.baselines(Some("chat"), Some("gpt-4o"))[0].metrics[0];
        assert_eq!(latency_after.metric, "latency_ms");
        assert!((latency_after.median / latency_before.median - 1.0).abs() < 0.1);
    }

    #[test]
    fn the_baselines_error_rate_counts_the_current_bucket() {
        let mut d = detector();
        let mut t = Traffic::new();
        // 10 calls a second: the first 60-second bucket is still open after 50 calls
        for i in 0..50 {
            let (e, v) = t.next(1.0, i % 5 == 0);
            d.observe(&e, &v);
        }
        let rate = |d: &ShardDetector| d.baselines(Some("chat"), None)[0].error_rate;
        assert!((rate(&d) - 0.2).abs() < 1e-9, "{}", rate(&d));
        for _ in 0..600 {
            let (e, v) = t.next(1.0, false);
            d.observe(&e, &v);
        }
        assert!((rate(&d) - 10.0 / 650.0).abs() < 1e-9, "{}", rate(&d));
    }

    #[test]
    fn replicas_agree_and_a_restored_state_continues_identically() {
        let mut a = detector();
        let mut b = detector();
        let (mut ta, mut tb) = (Traffic::new(), Traffic::new());
        run(&mut a, &mut ta, 3000, 1.0);
        run(&mut b, &mut tb, 3000, 1.0);
        assert_eq!(a.digest(), b.digest());
        let mut restored = ShardDetector::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(restored.digest(), a.digest());
        assert_eq!(restored, a);
        let mut raised = 0;
        for factor in [1.0, 15.0, 1.0, 1.0, 30.0] {
            let seen_a = run(&mut a, &mut ta, 400, factor);
            let seen_r = run(&mut restored, &mut tb, 400, factor);
            assert_eq!(seen_a, seen_r, "restored state raised different anomalies");
            raised += seen_a.len();
        }
        assert!(raised > 0);
        assert_eq!(a.digest(), restored.digest());
        assert_ne!(a.digest(), b.digest(), "b stayed behind");
    }

    #[test]
    fn small_baselines_need_a_larger_deviation() {
        assert!((small_sample_factor(10, 3.0) - 1.35).abs() < 0.01);
        assert!((small_sample_factor(100, 3.0) - 1.026).abs() < 0.001);
        assert!(small_sample_factor(1000, 3.0) < 1.003);
    }

    #[test]
    fn a_state_with_per_metric_settings_restores() {
        let mut config = DetectionConfig::default();
        let mut latency = MetricConfig::default_for(Metric::LatencyMs);
        latency.scale = Scale::Log { offset: 2.5 };
        config.metrics.insert(Metric::LatencyMs, latency);
        let mut a = ShardDetector::new(1, config).unwrap();
        run(&mut a, &mut Traffic::new(), 200, 1.0);
        let restored = ShardDetector::from_bytes(&a.to_bytes()).unwrap();
        assert_eq!(restored, a);
        assert_eq!(
            restored.config().metric(Metric::LatencyMs).scale,
            Scale::Log { offset: 2.5 }
        );
    }

    #[test]
    fn a_checkpoint_of_the_earlier_encoding_restores_to_the_same_state() {
        let mut a = detector();
        run(&mut a, &mut Traffic::new(), 300, 1.0);
        let earlier = bincode::serialize(&a).unwrap();
        assert_ne!(earlier[0], crate::codec::FORMAT);
        let restored = ShardDetector::from_bytes(&earlier).unwrap();
        assert_eq!(restored, a);
        assert_eq!(restored.digest(), a.digest());
        assert_eq!(a.to_bytes()[0], crate::codec::FORMAT);
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_panic() {
        let bytes = detector().to_bytes();
        assert!(ShardDetector::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        assert!(ShardDetector::from_bytes(b"not a state").is_err());
    }

    #[test]
    fn bad_configuration_lists_every_problem() {
        let cfg = DetectionConfig {
            window_size: 1,
            min_votes: 0,
            dedup_window_ms: -1,
            ..DetectionConfig::default()
        };
        let err = ShardDetector::new(0, cfg).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }
}
