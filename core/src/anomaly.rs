//! The anomaly / alert record (DESIGN §3.3), with the field names existing consumers expect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How bad an anomaly is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Just past the threshold.
    Low,
    /// Clearly past the threshold.
    Medium,
    /// Far past the threshold.
    High,
    /// Extreme.
    Critical,
}

impl Severity {
    /// The severity's name in alerts and routing keys.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What kind of anomaly was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyType {
    /// Latency far above its baseline.
    LatencySpike,
    /// Latency creeping away from its baseline.
    LatencyDrift,
    /// Fewer requests, or slower generation, than the baseline.
    ThroughputDegradation,
    /// More requests than the baseline.
    RequestRateSpike,
    /// Error rate above its baseline.
    ErrorRateIncrease,
    /// Token counts far above their baseline.
    TokenUsageSpike,
    /// Cost far above, or drifting from, its baseline.
    CostAnomaly,
    /// Prompt sizes drifting from their baseline.
    InputDrift,
    /// Completion sizes drifting from their baseline.
    OutputDrift,
    /// The relation between inputs and outputs changing.
    ConceptDrift,
    /// Output quality falling.
    QualityDegradation,
    /// A user sending far more than users usually do.
    SuspiciousUsage,
    /// Abuse or attack patterns.
    SecurityThreat,
}

impl AnomalyType {
    /// The type's name in alerts and routing keys.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyType::LatencySpike => "latency_spike",
            AnomalyType::LatencyDrift => "latency_drift",
            AnomalyType::ThroughputDegradation => "throughput_degradation",
            AnomalyType::RequestRateSpike => "request_rate_spike",
            AnomalyType::ErrorRateIncrease => "error_rate_increase",
            AnomalyType::TokenUsageSpike => "token_usage_spike",
            AnomalyType::CostAnomaly => "cost_anomaly",
            AnomalyType::InputDrift => "input_drift",
            AnomalyType::OutputDrift => "output_drift",
            AnomalyType::ConceptDrift => "concept_drift",
            AnomalyType::QualityDegradation => "quality_degradation",
            AnomalyType::SuspiciousUsage => "suspicious_usage",
            AnomalyType::SecurityThreat => "security_threat",
        }
    }

    /// First steps an operator can take for this kind of anomaly.
    pub fn remediation(self) -> &'static [&'static str] {
        match self {
            AnomalyType::LatencySpike | AnomalyType::LatencyDrift => &[
                "Check the provider's status page and regional health",
                "Compare latency across models of the service to tell provider from application",
                "Consider failing over to a secondary model or region",
            ],
            AnomalyType::ThroughputDegradation | AnomalyType::RequestRateSpike => &[
                "Check upstream traffic sources and client retry behaviour",
                "Check rate limits and quotas at the provider",
            ],
            AnomalyType::ErrorRateIncrease => &[
                "Inspect the errors of the affected calls (rate limits, timeouts, 5xx)",
                "Check provider quotas and API key validity",
                "Enable backoff or fail over to a secondary model",
            ],
            AnomalyType::TokenUsageSpike
            | AnomalyType::InputDrift
            | AnomalyType::OutputDrift
            | AnomalyType::ConceptDrift => &[
                "Look for prompt-template changes or runaway generation loops",
                "Check max_tokens limits on the affected calls",
            ],
            AnomalyType::CostAnomaly => &[
                "Check for model routing or pricing changes",
                "Check token usage of the affected calls",
            ],
            AnomalyType::QualityDegradation => &["Review recent responses of the affected model"],
            AnomalyType::SuspiciousUsage | AnomalyType::SecurityThreat => &[
                "Review the user's recent calls",
                "Apply a per-user rate limit or revoke the credentials",
            ],
        }
    }
}

/// Numbers behind an anomaly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnomalyDetails {
    /// Metric name (`latency_ms`, `error_rate`, ...).
    pub metric: String,
    /// Observed value, in the metric's units.
    pub value: f64,
    /// Baseline centre (median, or baseline rate), in the metric's units.
    pub baseline: f64,
    /// Value at which the detector fires, in the metric's units.
    pub threshold: f64,
    /// Distance from the baseline in (robust) standard deviations on the detection scale.
    pub deviation_sigma: f64,
    /// Detector-specific figures.
    pub additional: BTreeMap<String, serde_json::Value>,
}

/// Where and when an anomaly happened.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AnomalyContext {
    /// Trace of the triggering call, when known.
    pub trace_id: Option<String>,
    /// User of the triggering call, when known.
    pub user_id: Option<String>,
    /// Region of the triggering call (its `region` metadata), when it carries one (left
    /// out of JSON when it does not).
    #[serde(default)]
    pub region: Option<String>,
    /// Time span the detector looked at, e.g. `last 1000 samples` or `60s`.
    pub time_window: String,
    /// Samples (or requests) in the baseline that judged it.
    pub sample_count: u64,
    /// Other context (event id, provider, session).
    pub additional: BTreeMap<String, serde_json::Value>,
}

impl Serialize for AnomalyContext {
    /// JSON leaves out an unknown region; binary encodings, whose fields are positional,
    /// keep every field.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let skip_region = s.is_human_readable() && self.region.is_none();
        let mut out = s.serialize_struct("AnomalyContext", 6 - usize::from(skip_region))?;
        out.serialize_field("trace_id", &self.trace_id)?;
        out.serialize_field("user_id", &self.user_id)?;
        if skip_region {
            out.skip_field("region")?;
        } else {
            out.serialize_field("region", &self.region)?;
        }
        out.serialize_field("time_window", &self.time_window)?;
        out.serialize_field("sample_count", &self.sample_count)?;
        out.serialize_field("additional", &self.additional)?;
        out.end()
    }
}

/// One anomaly / alert, as delivered to RabbitMQ and webhooks and answered by queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Stable id (UUID form) used by receivers to drop repeats.
    pub alert_id: String,
    /// Event time of the triggering call, RFC 3339.
    pub timestamp: String,
    /// Event time of the triggering call in Unix ms (for ordering and retention).
    pub timestamp_ms: i64,
    /// How bad it is.
    pub severity: Severity,
    /// What kind of anomaly.
    pub anomaly_type: AnomalyType,
    /// Affected service.
    pub service_name: String,
    /// Affected model.
    pub model: String,
    /// Detector that raised it (`z_score`, `iqr`, `mad`, `cusum`, `error_rate`, ...).
    pub detection_method: String,
    /// Confidence in [0, 1].
    pub confidence: f64,
    /// Numbers behind it.
    pub details: AnomalyDetails,
    /// Where and when.
    pub context: AnomalyContext,
    /// Likely cause, when one can be told.
    pub root_cause: Option<String>,
    /// First steps for an operator.
    pub remediation: Vec<String>,
    /// Alerts open on the same service and model when this one was raised.
    pub related_alerts: Vec<String>,
    /// Runbook link, when configured.
    pub runbook_url: Option<String>,
    /// The incident open on the key when it was raised, if any.
    #[serde(default)]
    pub incident_id: Option<String>,
}

/// A detector's verdict before dedup turns it into an [`Anomaly`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Finding {
    pub metric: &'static str,
    pub anomaly_type: AnomalyType,
    pub method: &'static str,
    pub value: f64,
    pub baseline: f64,
    pub threshold: f64,
    pub deviation_sigma: f64,
    /// `|score| / threshold` of the deciding detector (≥ 1).
    pub ratio: f64,
    pub votes: usize,
    pub voters: usize,
    pub sample_count: u64,
    pub time_window: String,
    pub additional: BTreeMap<String, serde_json::Value>,
}

/// A UUID-shaped id (RFC 9562 version 8) from SHA-256 of `tag` and `parts`, in order.
pub(crate) fn stable_uuid(tag: &[u8], parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    h.update(tag);
    for part in parts {
        h.update(part);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 9562 version 8 (custom), variant 10.
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// RFC 3339 text of a Unix-ms time (UTC, millisecond precision).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// The wall clock in ms since the Unix epoch, for the edges (core's own decisions take
/// the time as an argument).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
