//! Labelled incidents injected into replayed traffic, and where they are placed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// Identifier of an injected incident (1-based, in time order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub u32);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INC-{:03}", self.0)
    }
}

/// The kind of injected incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Latency multiplied by a large factor for a burst of events.
    LatencySpike,
    /// Completion tokens multiplied by 10 (a runaway generation loop).
    TokenBlowup,
    /// Reported cost multiplied by 5 (a pricing or model-routing change).
    CostJump,
    /// Error rate raised from ~1 % to 30–60 % (a provider outage).
    ErrorBurst,
    /// Latency creeping up linearly to 2–3× over ten minutes.
    SlowDrift,
}

impl IncidentKind {
    /// Every kind, in the order incidents are laid out in time.
    pub const ALL: [IncidentKind; 5] = [
        IncidentKind::LatencySpike,
        IncidentKind::ErrorBurst,
        IncidentKind::TokenBlowup,
        IncidentKind::CostJump,
        IncidentKind::SlowDrift,
    ];

    /// How long the incident lasts, seconds.
    pub fn duration_s(self) -> u32 {
        match self {
            IncidentKind::LatencySpike => 90,
            IncidentKind::ErrorBurst | IncidentKind::TokenBlowup => 120,
            IncidentKind::CostJump => 180,
            IncidentKind::SlowDrift => 600,
        }
    }

    /// What Sentinel should raise: (metric, anomaly type) pairs, any of which counts as a detection.
    pub fn signals(self) -> Vec<Signal> {
        let pairs: &[(&str, &str)] = match self {
            IncidentKind::LatencySpike => &[
                ("latency_ms", "latency_spike"),
                ("tokens_per_second", "throughput_degradation"),
            ],
            IncidentKind::TokenBlowup => &[
                ("completion_tokens", "token_usage_spike"),
                ("total_tokens", "token_usage_spike"),
                ("cost_usd", "cost_anomaly"),
                ("latency_ms", "latency_spike"),
            ],
            IncidentKind::CostJump => &[("cost_usd", "cost_anomaly")],
            IncidentKind::ErrorBurst => &[("error_rate", "error_rate_increase")],
            IncidentKind::SlowDrift => &[
                ("latency_ms", "latency_spike"),
                ("latency_ms", "latency_drift"),
                ("tokens_per_second", "throughput_degradation"),
            ],
        };
        pairs
            .iter()
            .map(|&(metric, anomaly_type)| Signal {
                metric: metric.to_owned(),
                anomaly_type: anomaly_type.to_owned(),
            })
            .collect()
    }

    /// Draws the incident's magnitude: latency factor, token factor, cost factor, error rate or final drift factor.
    pub(super) fn draw_magnitude(self, rng: &mut Rng) -> f64 {
        let raw = match self {
            IncidentKind::LatencySpike => rng.uniform_range(6.0, 20.0),
            IncidentKind::TokenBlowup => 10.0,
            IncidentKind::CostJump => 5.0,
            IncidentKind::ErrorBurst => rng.uniform_range(0.3, 0.6),
            IncidentKind::SlowDrift => rng.uniform_range(2.0, 3.0),
        };
        (raw * 100.0).round() / 100.0
    }

    fn describe(self, magnitude: f64) -> String {
        match self {
            IncidentKind::LatencySpike => format!("latency x{magnitude} on every call"),
            IncidentKind::TokenBlowup => {
                format!("completion tokens x{magnitude} (runaway generation loop)")
            }
            IncidentKind::CostJump => {
                format!("reported cost x{magnitude} (pricing / model-routing change)")
            }
            IncidentKind::ErrorBurst => format!(
                "error rate {:.0} % (provider outage: 503, 429, 500)",
                magnitude * 100.0
            ),
            IncidentKind::SlowDrift => {
                format!("latency rising linearly to x{magnitude} by the end")
            }
        }
    }
}

/// A metric and the anomaly type Sentinel should raise on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signal {
    /// Metric name as in alerts (`latency_ms`, `completion_tokens`, `cost_usd`, `error`, ...).
    pub metric: String,
    /// Anomaly type as in alerts (`latency_spike`, `token_usage_spike`, ...).
    pub anomaly_type: String,
}

/// One injected, labelled incident on a single service × model key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Identifier carried by the incident's events.
    pub id: IncidentId,
    /// What was injected.
    pub kind: IncidentKind,
    /// Affected service.
    pub service: String,
    /// Affected model.
    pub model: String,
    /// First affected event time (inclusive), Unix ms.
    pub start_ms: i64,
    /// End of the affected period (exclusive), Unix ms.
    pub end_ms: i64,
    /// Size of the change (factor, or error rate for an error burst).
    pub magnitude: f64,
    /// Metric/anomaly-type pairs that count as detecting it.
    pub signals: Vec<Signal>,
    /// Human-readable summary.
    pub description: String,
}

impl Incident {
    /// Whether the incident covers event time `timestamp_ms`.
    pub fn covers(&self, timestamp_ms: i64) -> bool {
        (self.start_ms..self.end_ms).contains(&timestamp_ms)
    }

    /// Fraction of the incident elapsed at `timestamp_ms`, in `[0, 1]`.
    pub fn progress(&self, timestamp_ms: i64) -> f64 {
        let span = (self.end_ms - self.start_ms).max(1) as f64;
        ((timestamp_ms - self.start_ms) as f64 / span).clamp(0.0, 1.0)
    }
}

/// A key the planner may put an incident on.
pub(super) struct Candidate {
    pub key: usize,
    pub service: usize,
    pub reports_cost: bool,
    pub bursty: bool,
    pub expected_rate: f64,
}

/// Chooses one distinct key per incident kind: cost jumps need a key that reports cost;
/// steady (non-bursty) keys first, then keys of services not yet affected, then busier keys.
pub(super) fn choose_keys(
    candidates: &[Candidate],
) -> Result<Vec<(IncidentKind, usize)>, IncidentKind> {
    const CHOICE_ORDER: [IncidentKind; 5] = [
        IncidentKind::CostJump,
        IncidentKind::TokenBlowup,
        IncidentKind::LatencySpike,
        IncidentKind::ErrorBurst,
        IncidentKind::SlowDrift,
    ];
    let mut used_keys = Vec::new();
    let mut used_services = Vec::new();
    let mut chosen = Vec::new();
    for kind in CHOICE_ORDER {
        let best = candidates
            .iter()
            .filter(|c| !used_keys.contains(&c.key))
            .filter(|c| kind != IncidentKind::CostJump || c.reports_cost)
            .min_by(|a, b| {
                let rank = |c: &Candidate| (c.bursty, used_services.contains(&c.service));
                rank(a)
                    .cmp(&rank(b))
                    .then(b.expected_rate.total_cmp(&a.expected_rate))
                    .then(a.key.cmp(&b.key))
            })
            .ok_or(kind)?;
        used_keys.push(best.key);
        used_services.push(best.service);
        chosen.push((kind, best.key));
    }
    Ok(chosen)
}

/// Builds the incident record for `kind` on `service`/`model` over `[start_ms, end_ms)`.
pub(super) fn incident(
    id: u32,
    kind: IncidentKind,
    service: &str,
    model: &str,
    (start_ms, end_ms): (i64, i64),
    magnitude: f64,
) -> Incident {
    Incident {
        id: IncidentId(id),
        kind,
        service: service.to_owned(),
        model: model.to_owned(),
        start_ms,
        end_ms,
        magnitude,
        signals: kind.signals(),
        description: kind.describe(magnitude),
    }
}
