//! Detection configuration: detector thresholds, per-metric settings, severity mapping,
//! dedup and rate windows. Defaults are the product's published configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyType, Severity};
use crate::detect::ScaleFloor;
use crate::metric::Metric;
use crate::onset::OnsetConfig;

/// Everything that decides what a shard's detection raises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionConfig {
    /// Samples kept per baseline key (W).
    pub window_size: usize,
    /// Samples a baseline needs before the point detectors score anything.
    pub min_samples: usize,
    /// How a key's first calls are judged, before its baseline has `min_samples` of them.
    pub young: YoungConfig,
    /// Z-score detector.
    #[serde(deserialize_with = "shipped::z_score")]
    pub z_score: ThresholdDetector,
    /// IQR (Tukey fence) detector; its threshold is the IQR multiplier.
    #[serde(deserialize_with = "shipped::iqr")]
    pub iqr: ThresholdDetector,
    /// MAD (modified z-score) detector.
    #[serde(deserialize_with = "shipped::mad")]
    pub mad: ThresholdDetector,
    /// CUSUM drift detector.
    pub cusum: CusumConfig,
    /// Onset detector, for metrics that list `onset` among their detectors.
    pub onset: OnsetSection,
    /// How many of the enabled point detectors (z-score, IQR, MAD) must agree before a
    /// point anomaly is raised; capped at the number enabled for the metric.
    pub min_votes: usize,
    /// Per-metric settings; metrics not listed use [`MetricConfig::default_for`].
    pub metrics: BTreeMap<Metric, MetricConfig>,
    /// Maps distance past the threshold to severity and confidence.
    pub severity: SeverityConfig,
    /// One alert per (service, model, metric, anomaly type) while hits are closer than this, in event-time ms.
    pub dedup_window_ms: i64,
    /// Error-rate detection over event-time buckets.
    pub error_rate: ErrorRateConfig,
    /// Request-rate (throughput) detection over event-time buckets.
    pub request_rate: RequestRateConfig,
    /// Per-user usage detection (one user sending far more than users usually do).
    pub user_usage: UserUsageConfig,
    /// Base URL of runbooks; an alert links `<base>/<anomaly_type>` when set.
    pub runbook_base_url: Option<String>,
    /// Incidents: when evidence opens one, how it is graded, when it resolves.
    pub incidents: IncidentConfig,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            window_size: 1000,
            min_samples: 10,
            young: YoungConfig::default(),
            z_score: Z_SCORE,
            iqr: IQR,
            mad: MAD,
            cusum: CusumConfig::default(),
            onset: OnsetSection::default(),
            min_votes: 3,
            metrics: BTreeMap::new(),
            severity: SeverityConfig::default(),
            dedup_window_ms: 300_000,
            error_rate: ErrorRateConfig::default(),
            request_rate: RequestRateConfig::default(),
            user_usage: UserUsageConfig::default(),
            runbook_base_url: None,
            incidents: IncidentConfig::default(),
        }
    }
}

impl DetectionConfig {
    /// The effective settings of one metric.
    pub fn metric(&self, metric: Metric) -> MetricConfig {
        self.metrics
            .get(&metric)
            .cloned()
            .unwrap_or_else(|| MetricConfig::default_for(metric))
    }

    /// Checks the configuration for values no detector can work with, listing every problem.
    pub fn check(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.window_size < 2 || self.window_size > u16::MAX as usize {
            problems.push(format!(
                "window_size: {} is outside 2..={}",
                self.window_size,
                u16::MAX
            ));
        }
        if self.min_samples < 2 {
            problems.push(format!("min_samples: {} is below 2", self.min_samples));
        }
        for (name, d) in [
            ("z_score", &self.z_score),
            ("iqr", &self.iqr),
            ("mad", &self.mad),
        ] {
            if !(d.threshold.is_finite() && d.threshold > 0.0) {
                problems.push(format!(
                    "{name}.threshold: {} must be a positive number",
                    d.threshold
                ));
            }
        }
        if !(self.cusum.threshold.is_finite() && self.cusum.threshold > 0.0) {
            problems.push(format!(
                "cusum.threshold: {} must be a positive number",
                self.cusum.threshold
            ));
        }
        if !(self.cusum.drift.is_finite() && self.cusum.drift >= 0.0) {
            problems.push(format!(
                "cusum.drift: {} must be a non-negative number",
                self.cusum.drift
            ));
        }
        if self.cusum.min_buckets < 2 || self.cusum.min_buckets > self.cusum.baseline_buckets {
            problems.push(format!(
                "cusum.min_buckets: {} must be between 2 and cusum.baseline_buckets ({})",
                self.cusum.min_buckets, self.cusum.baseline_buckets
            ));
        }
        if !(self.cusum.min_spread.is_finite() && self.cusum.min_spread >= 0.0) {
            problems.push(format!(
                "cusum.min_spread: {} must be a non-negative number",
                self.cusum.min_spread
            ));
        }
        if !(self.onset.threshold.is_finite() && self.onset.threshold > 0.0) {
            problems.push(format!(
                "onset.threshold: {} must be a positive number",
                self.onset.threshold
            ));
        }
        if self.onset.detector.window < 2 || self.onset.detector.window > u16::MAX as usize {
            problems.push(format!(
                "onset.detector.window: {} is outside 2..={}",
                self.onset.detector.window,
                u16::MAX
            ));
        }
        for (name, v) in [
            ("young.prior_spread", self.young.prior_spread),
            ("young.prior_weight", self.young.prior_weight),
            ("young.threshold", self.young.threshold),
        ] {
            if !(v.is_finite() && v > 0.0) {
                problems.push(format!("{name}: {v} must be a positive number"));
            }
        }
        if self.min_votes == 0 {
            problems.push("min_votes: must be at least 1".to_string());
        }
        let s = &self.severity;
        if !(1.0 <= s.medium && s.medium <= s.high && s.high <= s.critical) {
            problems.push(format!(
                "severity: breakpoints must satisfy 1 <= medium ({}) <= high ({}) <= critical ({})",
                s.medium, s.high, s.critical
            ));
        }
        if self.dedup_window_ms < 0 {
            problems.push("dedup_window_ms: must not be negative".to_string());
        }
        for (name, bucket) in [
            ("error_rate.bucket_ms", self.error_rate.bucket_ms),
            ("request_rate.bucket_ms", self.request_rate.bucket_ms),
            ("user_usage.bucket_ms", self.user_usage.bucket_ms),
            ("cusum.bucket_ms", self.cusum.bucket_ms),
        ] {
            if bucket <= 0 {
                problems.push(format!("{name}: {bucket} must be positive"));
            }
        }
        if self.request_rate.baseline_buckets < 2 {
            problems.push("request_rate.baseline_buckets: must be at least 2".to_string());
        }
        self.incidents.check(&mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// A configuration that no detector can work with, with every problem found.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid detection configuration: {}", problems.join("; "))]
pub struct ConfigError {
    /// One line per problem, naming the key.
    pub problems: Vec<String>,
}

/// The shipped z-score detector.
const Z_SCORE: ThresholdDetector = ThresholdDetector::on(3.0);
/// The shipped IQR detector.
const IQR: ThresholdDetector = ThresholdDetector::on(1.5);
/// The shipped MAD detector.
const MAD: ThresholdDetector = ThresholdDetector::on(3.5);

/// Sections whose shipped values are not their type's defaults: keys left out of one keep
/// their shipped value (setting only `z_score.threshold` leaves the detector on).
mod shipped {
    use serde::de::{DeserializeOwned, Deserializer, Error};
    use serde::{Deserialize, Serialize};
    use serde_json::Value;

    use super::{OnsetSection, ThresholdDetector};
    use crate::onset::OnsetConfig;

    /// The keys given, over `shipped`.
    fn over<'de, D, T>(d: D, shipped: T) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: Serialize + DeserializeOwned,
    {
        // A configuration gives a map; compact encodings (the Raft log's MessagePack) give
        // every field in order, which needs no filling.
        let given = match Value::deserialize(d)? {
            Value::Object(given) => given,
            whole => return serde_json::from_value(whole).map_err(D::Error::custom),
        };
        let mut merged = serde_json::to_value(shipped).map_err(D::Error::custom)?;
        if let Some(keys) = merged.as_object_mut() {
            keys.extend(given);
        }
        serde_json::from_value(merged).map_err(D::Error::custom)
    }

    pub fn z_score<'de, D: Deserializer<'de>>(d: D) -> Result<ThresholdDetector, D::Error> {
        over(d, super::Z_SCORE)
    }

    pub fn iqr<'de, D: Deserializer<'de>>(d: D) -> Result<ThresholdDetector, D::Error> {
        over(d, super::IQR)
    }

    pub fn mad<'de, D: Deserializer<'de>>(d: D) -> Result<ThresholdDetector, D::Error> {
        over(d, super::MAD)
    }

    pub fn onset_detector<'de, D: Deserializer<'de>>(d: D) -> Result<OnsetConfig, D::Error> {
        over(d, OnsetSection::default().detector)
    }
}

/// A detector switched on or off with one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdDetector {
    /// Whether the detector runs at all.
    pub enabled: bool,
    /// The score beyond which it flags.
    pub threshold: f64,
}

impl ThresholdDetector {
    /// An enabled detector with this threshold.
    pub const fn on(threshold: f64) -> Self {
        ThresholdDetector {
            enabled: true,
            threshold,
        }
    }
}

/// A young baseline (fewer than `min_samples` calls, at least one): a call is judged
/// against the key's own mean with a spread pooled from a prior and the key's own calls,
/// so a new key is heard from its second call, and a call flagged so is kept out of the
/// young baseline (never more calls than it holds). Metrics on a log scale only.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct YoungConfig {
    /// Whether young baselines judge calls.
    pub enabled: bool,
    /// Standard deviation assumed before the key has its own, on the log scale (0.5: most
    /// calls within a factor of 2.7 of each other).
    pub prior_spread: f64,
    /// Calls' worth of weight the prior spread has against the key's own spread.
    pub prior_weight: f64,
    /// Predictive standard deviations past which a call is flagged.
    pub threshold: f64,
}

impl Default for YoungConfig {
    fn default() -> Self {
        YoungConfig {
            enabled: true,
            prior_spread: 0.5,
            prior_weight: 4.0,
            threshold: 3.5,
        }
    }
}

/// CUSUM drift detection over per-bucket means (see `drift`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CusumConfig {
    /// Whether CUSUM runs at all (per metric it also needs `cusum` in the metric's detectors).
    pub enabled: bool,
    /// Decision interval h, in standard deviations of a bucket mean.
    pub threshold: f64,
    /// Allowance k, in standard deviations of a bucket mean.
    pub drift: f64,
    /// Bucket width in event-time ms; CUSUM steps once per bucket.
    pub bucket_ms: i64,
    /// Past bucket means the reference is taken from.
    pub baseline_buckets: usize,
    /// Past buckets needed before drift is judged.
    pub min_buckets: usize,
    /// Standardised bucket means are clipped to ±this, so one wild bucket is not mistaken for drift.
    pub clip: f64,
    /// Smallest spread of bucket means assumed, on the metric's scale (0.05 on a log
    /// scale: shifts much below 5 % are not reported as drift).
    pub min_spread: f64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        CusumConfig {
            enabled: true,
            threshold: 6.0,
            drift: 0.5,
            bucket_ms: 60_000,
            baseline_buckets: 60,
            min_buckets: 10,
            clip: 3.0,
            min_spread: 0.05,
        }
    }
}

/// The onset detector in the live set: off for every metric unless listed in its `detectors`.
///
/// It keeps three windows of `detector.window` values per metric and key, so it suits
/// keys with steady, aggregate-like series more than raw per-call values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnsetSection {
    /// Whether it runs at all (per metric it also needs `onset` in the metric's detectors).
    pub enabled: bool,
    /// Surprisal (−log10 of the tail probability) an onset needs to count (7: one in ten million).
    pub threshold: f64,
    /// The detector's own parameters.
    #[serde(deserialize_with = "shipped::onset_detector")]
    pub detector: OnsetConfig,
}

impl Default for OnsetSection {
    fn default() -> Self {
        OnsetSection {
            enabled: true,
            threshold: 7.0,
            detector: OnsetConfig {
                window: 1000,
                quiet_secs: 3_600,
                season_secs: 0,
                ..OnsetConfig::default()
            },
        }
    }
}

/// Which side of the baseline counts as anomalous for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Only values above the baseline.
    Upper,
    /// Only values below the baseline.
    Lower,
    /// Both sides.
    Both,
}

impl Direction {
    /// Whether a signed score points the way this direction watches.
    pub fn admits(self, score: f64) -> bool {
        match self {
            Direction::Upper => score > 0.0,
            Direction::Lower => score < 0.0,
            Direction::Both => score != 0.0,
        }
    }
}

/// The scale a metric's baseline is kept and scored on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Scale {
    /// The raw value.
    Linear,
    /// `ln(value + offset)`: right-skewed metrics (latency, tokens, cost) become near-normal.
    Log {
        /// Added before the logarithm so zero stays finite.
        offset: f64,
    },
}

impl Scale {
    /// Maps a raw value onto this scale.
    pub fn forward(self, x: f64) -> f64 {
        match self {
            Scale::Linear => x,
            Scale::Log { offset } => (x + offset).max(f64::MIN_POSITIVE).ln(),
        }
    }

    /// Maps a value on this scale back to raw units.
    pub fn inverse(self, t: f64) -> f64 {
        match self {
            Scale::Linear => t,
            Scale::Log { offset } => t.exp() - offset,
        }
    }
}

/// A detector that can be switched on per metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Z-score against mean and σ.
    ZScore,
    /// Tukey fences on the quartiles.
    Iqr,
    /// Modified z-score against median and MAD.
    Mad,
    /// CUSUM drift.
    Cusum,
    /// Onset: the start of a change in level, spread or range, once (see `onset`).
    Onset,
}

impl DetectorKind {
    /// The `detection_method` name in alerts.
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::ZScore => "z_score",
            DetectorKind::Iqr => "iqr",
            DetectorKind::Mad => "mad",
            DetectorKind::Cusum => "cusum",
            DetectorKind::Onset => "onset",
        }
    }
}

/// Settings of one metric's baseline and detectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricConfig {
    /// Detectors that run on this metric (each also needs its global switch on).
    pub detectors: Vec<DetectorKind>,
    /// Scale the baseline is kept on.
    pub scale: Scale,
    /// Which side of the baseline is anomalous.
    pub direction: Direction,
    /// Smallest spread the detectors divide by, on the metric's scale.
    pub floor: ScaleFloor,
    /// Anomaly type raised by point detectors.
    pub point_type: AnomalyType,
    /// Anomaly type raised by CUSUM.
    pub drift_type: AnomalyType,
}

impl MetricConfig {
    /// The shipped settings of a metric.
    pub fn default_for(metric: Metric) -> Self {
        use DetectorKind::*;
        let log = |offset| Scale::Log { offset };
        // On a log scale an absolute floor of 0.01 is a 1% relative change of the raw value.
        let log_floor = ScaleFloor {
            absolute: 0.01,
            relative: 0.0,
        };
        let (detectors, scale, direction, point_type, drift_type) = match metric {
            Metric::LatencyMs => (
                vec![ZScore, Iqr, Mad, Cusum],
                log(1.0),
                Direction::Upper,
                AnomalyType::LatencySpike,
                AnomalyType::LatencyDrift,
            ),
            Metric::PromptTokens => (
                vec![ZScore, Iqr, Mad],
                log(1.0),
                Direction::Upper,
                AnomalyType::TokenUsageSpike,
                AnomalyType::InputDrift,
            ),
            Metric::CompletionTokens => (
                vec![ZScore, Iqr, Mad, Cusum],
                log(1.0),
                Direction::Upper,
                AnomalyType::TokenUsageSpike,
                AnomalyType::OutputDrift,
            ),
            Metric::TotalTokens => (
                vec![ZScore, Iqr, Mad],
                log(1.0),
                Direction::Upper,
                AnomalyType::TokenUsageSpike,
                AnomalyType::TokenUsageSpike,
            ),
            Metric::CostUsd => (
                vec![ZScore, Iqr, Mad, Cusum],
                log(1e-4),
                Direction::Upper,
                AnomalyType::CostAnomaly,
                AnomalyType::CostAnomaly,
            ),
            Metric::TokensPerSecond => (
                vec![ZScore, Iqr, Mad],
                log(0.1),
                Direction::Lower,
                AnomalyType::ThroughputDegradation,
                AnomalyType::ThroughputDegradation,
            ),
        };
        MetricConfig {
            detectors,
            scale,
            direction,
            floor: log_floor,
            point_type,
            drift_type,
        }
    }

    /// Whether a detector runs on this metric.
    pub fn runs(&self, kind: DetectorKind) -> bool {
        self.detectors.contains(&kind)
    }
}

/// How distance past a threshold maps to severity and confidence.
///
/// With `r = |score| / threshold` (≥ 1 when a detector fires): severity is `low` below
/// `medium`, `medium` below `high`, `high` below `critical`, else `critical`.
/// Confidence is `(votes / detectors) × (1 − ½·e^{−(r−1)})`: ½ at the threshold with
/// every detector agreeing, approaching 1 as the value moves further out.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeverityConfig {
    /// Ratio from which an anomaly is `medium`.
    pub medium: f64,
    /// Ratio from which an anomaly is `high`.
    pub high: f64,
    /// Ratio from which an anomaly is `critical`.
    pub critical: f64,
}

impl Default for SeverityConfig {
    fn default() -> Self {
        SeverityConfig {
            medium: 1.25,
            high: 1.6,
            critical: 2.5,
        }
    }
}

impl SeverityConfig {
    /// Severity of an anomaly whose score is `ratio` times its threshold.
    pub fn severity(&self, ratio: f64) -> Severity {
        if ratio >= self.critical {
            Severity::Critical
        } else if ratio >= self.high {
            Severity::High
        } else if ratio >= self.medium {
            Severity::Medium
        } else {
            Severity::Low
        }
    }

    /// Confidence in [0, 1] of an anomaly `ratio` times past its threshold, agreed by `votes` of `voters`.
    pub fn confidence(&self, ratio: f64, votes: usize, voters: usize) -> f64 {
        let agreement = votes as f64 / voters.max(1) as f64;
        let distance = 1.0 - 0.5 * (-(ratio - 1.0).max(0.0)).exp();
        (agreement * distance).clamp(0.0, 1.0)
    }
}

/// Error-rate detection: errors in the current event-time bucket against the rate of the
/// buckets before it (a one-sided binomial z-test with minimum counts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ErrorRateConfig {
    /// Whether error-rate detection runs.
    pub enabled: bool,
    /// Bucket width in event-time ms.
    pub bucket_ms: i64,
    /// Closed buckets forming the baseline rate.
    pub baseline_buckets: usize,
    /// Requests the current bucket needs before it is judged.
    pub min_requests: u32,
    /// Errors the current bucket needs before it is judged.
    pub min_errors: u32,
    /// Binomial z beyond which the rate is anomalous.
    pub threshold: f64,
    /// Absolute rise over the baseline rate needed as well (0.05 = five points).
    pub min_increase: f64,
    /// Baseline rate assumed at least this, so a clean history does not make one error an incident.
    pub baseline_floor: f64,
}

impl Default for ErrorRateConfig {
    fn default() -> Self {
        ErrorRateConfig {
            enabled: true,
            bucket_ms: 60_000,
            baseline_buckets: 30,
            min_requests: 20,
            min_errors: 5,
            threshold: 4.0,
            min_increase: 0.05,
            baseline_floor: 0.005,
        }
    }
}

/// Request-rate detection: the count of a closed event-time bucket against the counts of
/// the buckets before it (robust z with a Poisson floor on the spread).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestRateConfig {
    /// Whether request-rate detection runs.
    pub enabled: bool,
    /// Bucket width in event-time ms.
    pub bucket_ms: i64,
    /// Closed buckets kept as the baseline.
    pub baseline_buckets: usize,
    /// Buckets the baseline needs before a bucket is judged.
    pub min_buckets: usize,
    /// Robust z of a bucket's count (a surge on a log scale, a drop in calls) beyond which it is anomalous.
    pub threshold: f64,
    /// Median bucket count needed before drops are judged (tiny rates are all noise).
    pub min_median: f64,
}

impl Default for RequestRateConfig {
    fn default() -> Self {
        RequestRateConfig {
            enabled: true,
            bucket_ms: 60_000,
            baseline_buckets: 60,
            min_buckets: 10,
            threshold: 5.0,
            min_median: 20.0,
        }
    }
}

/// Per-user usage detection: one user's requests in the current bucket against the
/// typical per-user bucket counts of the key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserUsageConfig {
    /// Whether per-user detection runs.
    pub enabled: bool,
    /// Bucket width in event-time ms.
    pub bucket_ms: i64,
    /// Per-user bucket counts kept as the baseline.
    pub baseline_samples: usize,
    /// A user is flagged above `multiplier ×` the baseline's p99 ...
    pub multiplier: f64,
    /// ... and above this many requests in one bucket.
    pub min_requests: u32,
    /// Distinct users tracked per key and bucket; further users in that bucket are not tracked.
    pub max_users: usize,
}

impl Default for UserUsageConfig {
    fn default() -> Self {
        UserUsageConfig {
            enabled: true,
            bucket_ms: 60_000,
            baseline_samples: 200,
            multiplier: 5.0,
            min_requests: 30,
            max_users: 10_000,
        }
    }
}

/// Incidents: one per key while evidence says it misbehaves, notified when it opens,
/// escalates and resolves (see docs/detection.md, "Incidents").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentConfig {
    /// Tail of a baseline a call must land in to count as a hit (0.01: beyond the p99).
    pub tail: f64,
    /// A share of hits this many times `tail` is what the evidence tests for.
    pub share_factor: f64,
    /// Smallest distance from the median a hit needs, on the metric's log scale (0.1 ≈ 10 %).
    pub min_deviation: f64,
    /// Evidence, in nats, that opens an incident (16 nats: odds of about 9 million to one).
    pub threshold: f64,
    /// Consecutive request-rate (or per-user) buckets out of line that open an incident.
    pub rate_buckets: u32,
    /// Metrics whose drift alarm opens an incident on its own; drift of the others is
    /// recorded as anomalies only (slow changes of usage are trends, not outages).
    pub drift_metrics: Vec<Metric>,
    /// Whether latency and cost are judged given the call's tokens (fits per key).
    pub conditional: bool,
    /// Event time without evidence after which an incident resolves, ms.
    pub resolve_after_ms: i64,
    /// Calls on the key that must pass without evidence before it resolves.
    pub resolve_min_calls: u64,
    /// Event time for which an open incident's key keeps its pre-incident baselines;
    /// evidence that outlasts it is the new normal: the baselines learn it and the
    /// incident resolves as adapted, ms.
    pub hold_ms: i64,
    /// An escalation is notified at most this often per incident (a rise to `critical`
    /// always is), ms of event time.
    pub escalation_interval_ms: i64,
    /// A call slower than this opens an incident on its own, ms.
    pub latency_cap_ms: Option<f64>,
    /// A call dearer than this opens an incident on its own, USD.
    pub cost_cap_usd: Option<f64>,
    /// Latency objective: an incident whose calls' median exceeds it is at least `high`, ms.
    pub latency_slo_ms: Option<f64>,
    /// How impact maps to severity.
    pub severity: ImpactSeverityConfig,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        IncidentConfig {
            tail: 0.01,
            share_factor: 10.0,
            min_deviation: 0.1,
            threshold: 16.0,
            rate_buckets: 2,
            drift_metrics: vec![Metric::LatencyMs],
            conditional: true,
            resolve_after_ms: 300_000,
            resolve_min_calls: 10,
            hold_ms: 900_000,
            escalation_interval_ms: 300_000,
            latency_cap_ms: None,
            cost_cap_usd: None,
            latency_slo_ms: None,
            severity: ImpactSeverityConfig::default(),
        }
    }
}

impl IncidentConfig {
    fn check(&self, problems: &mut Vec<String>) {
        if !(self.tail > 0.0 && self.tail < 0.5) {
            problems.push(format!("incidents.tail: {} is outside (0, 0.5)", self.tail));
        }
        if !(self.share_factor > 1.0 && self.share_factor * self.tail < 1.0) {
            problems.push(format!(
                "incidents.share_factor: {} must be above 1 and keep share_factor × tail below 1",
                self.share_factor
            ));
        }
        for (name, v) in [
            ("incidents.min_deviation", self.min_deviation),
            ("incidents.threshold", self.threshold),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                problems.push(format!("{name}: {v} must be a non-negative number"));
            }
        }
        if self.rate_buckets == 0 {
            problems.push("incidents.rate_buckets: must be at least 1".to_string());
        }
        for (name, v) in [
            ("incidents.resolve_after_ms", self.resolve_after_ms),
            ("incidents.hold_ms", self.hold_ms),
            (
                "incidents.escalation_interval_ms",
                self.escalation_interval_ms,
            ),
        ] {
            if v < 0 {
                problems.push(format!("{name}: must not be negative"));
            }
        }
        for (name, v) in [
            ("incidents.latency_cap_ms", self.latency_cap_ms),
            ("incidents.cost_cap_usd", self.cost_cap_usd),
            ("incidents.latency_slo_ms", self.latency_slo_ms),
        ] {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                problems.push(format!("{name}: must be a positive number when set"));
            }
        }
        let s = &self.severity;
        if !(0.0 <= s.medium_share
            && s.medium_share <= s.high_share
            && s.high_share <= s.critical_share
            && s.critical_share <= 1.0)
        {
            problems.push(format!(
                "incidents.severity: shares must satisfy 0 <= medium_share ({}) <= high_share ({}) <= critical_share ({}) <= 1",
                s.medium_share, s.high_share, s.critical_share
            ));
        }
        if !(0.0 <= s.high_usd_per_hour && s.high_usd_per_hour <= s.critical_usd_per_hour) {
            problems.push(format!(
                "incidents.severity: high_usd_per_hour ({}) must be non-negative and at most critical_usd_per_hour ({})",
                s.high_usd_per_hour, s.critical_usd_per_hour
            ));
        }
    }
}

/// An incident's severity from its impact: the share of the key's calls it affects and
/// the money it burns, whichever is worse; a breached latency objective makes it at least `high`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImpactSeverityConfig {
    /// Share of calls affected from which an incident is `medium`.
    pub medium_share: f64,
    /// ... `high`.
    pub high_share: f64,
    /// ... `critical`.
    pub critical_share: f64,
    /// Extra spend per hour from which an incident is at least `high`, USD.
    pub high_usd_per_hour: f64,
    /// ... `critical`.
    pub critical_usd_per_hour: f64,
}

impl Default for ImpactSeverityConfig {
    fn default() -> Self {
        ImpactSeverityConfig {
            medium_share: 0.05,
            high_share: 0.25,
            critical_share: 0.5,
            high_usd_per_hour: 10.0,
            critical_usd_per_hour: 100.0,
        }
    }
}

impl ImpactSeverityConfig {
    /// Severity of an incident affecting `share` of calls and costing `usd_per_hour` extra.
    pub fn severity(&self, share: f64, usd_per_hour: f64) -> Severity {
        let by_share = if share >= self.critical_share {
            Severity::Critical
        } else if share >= self.high_share {
            Severity::High
        } else if share >= self.medium_share {
            Severity::Medium
        } else {
            Severity::Low
        };
        let by_cost = if usd_per_hour >= self.critical_usd_per_hour {
            Severity::Critical
        } else if usd_per_hour >= self.high_usd_per_hour {
            Severity::High
        } else {
            Severity::Low
        };
        by_share.max(by_cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detector_given_in_part_keeps_its_other_shipped_keys() {
        let cfg: DetectionConfig =
            serde_json::from_str(r#"{"z_score": {"threshold": 4.0}, "mad": {"enabled": false}}"#)
                .unwrap();
        assert_eq!(cfg.z_score, ThresholdDetector::on(4.0));
        assert_eq!(
            cfg.mad,
            ThresholdDetector {
                enabled: false,
                threshold: 3.5
            }
        );
        assert_eq!(cfg.iqr, IQR);
        let err =
            serde_json::from_str::<DetectionConfig>(r#"{"iqr": {"treshold": 2.0}}"#).unwrap_err();
        assert!(err.to_string().contains("treshold"), "{err}");

        let cfg: DetectionConfig =
            serde_json::from_str(r#"{"onset": {"detector": {"window": 500}}}"#).unwrap();
        let shipped = OnsetSection::default().detector;
        assert_eq!(
            cfg.onset.detector,
            OnsetConfig {
                window: 500,
                ..shipped
            }
        );
        assert_ne!(
            shipped,
            OnsetConfig::default(),
            "the shipped section is its own"
        );

        // The Raft log encodes structs compactly, as sequences of their fields.
        let bytes = rmp_serde::to_vec(&cfg).unwrap();
        assert_eq!(
            rmp_serde::from_slice::<DetectionConfig>(&bytes).unwrap(),
            cfg
        );
    }
}
