//! Export of a shard's telemetry and anomalies to InfluxDB v2.
//!
//! Only a shard's leader exports. It reads the replicated export queue
//! ([`sentinel_storage_engine::ShardReader::export_queue`]), hands the entries to
//! [`Exporter::export`] and, once that returned `Ok`, proposes
//! `Command::Exported(last seq)`, so a new leader resumes where the old one stopped.
//! Delivery is at least once; a point written again has the same series and timestamp,
//! so InfluxDB keeps one.
//!
//! Telemetry becomes measurement `llm_telemetry` (tags `service`, `model`, `status`; one
//! field per metric the event carries), anomalies become `llm_anomalies` (tags `service`,
//! `model`, `severity`, `anomaly_type`, `detection_method`, `metric`; fields `value`,
//! `baseline`, `threshold`, `deviation_sigma`, `confidence` and the string `alert_id`).
//! Timestamps are the event time in milliseconds.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use influxdb2::api::write::TimestampPrecision;
use influxdb2::models::data_point::DataPointBuilder;
use influxdb2::models::{DataPoint, WriteDataPoint};
use influxdb2::RequestError;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use sentinel_core::{Anomaly, Metric};
use sentinel_storage_engine::{ExportEntry, ExportItem, TelemetryRecord};
use serde::{Deserialize, Serialize};

use crate::alerting::RetryConfig;

/// Measurement of exported telemetry.
pub const TELEMETRY_MEASUREMENT: &str = "llm_telemetry";
/// Measurement of exported anomalies.
pub const ANOMALY_MEASUREMENT: &str = "llm_anomalies";

/// Where and how to export (the `export` section of the node configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Base URL of the InfluxDB v2 API.
    pub url: String,
    /// Organization written to.
    pub org: String,
    /// Bucket written to.
    pub bucket: String,
    /// Environment variable holding the API token.
    pub token_env: Option<String>,
    /// File holding the API token (surrounding whitespace is ignored).
    pub token_file: Option<PathBuf>,
    /// Points per write request.
    pub batch_size: usize,
    /// Retries of a failed write request.
    pub retry: RetryConfig,
    /// Bound on one write request, in milliseconds.
    pub timeout_ms: u64,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            url: "http://127.0.0.1:8086".to_owned(),
            org: "sentinel".to_owned(),
            bucket: "sentinel".to_owned(),
            token_env: None,
            token_file: None,
            batch_size: 100,
            retry: RetryConfig::default(),
            timeout_ms: 10_000,
        }
    }
}

impl ExportConfig {
    /// Checks every value the defaults do not guarantee, naming the offending field.
    pub fn validate(&self) -> Result<(), ExportError> {
        let invalid = |field, reason: &str| {
            Err(ExportError::Config {
                field,
                reason: reason.to_owned(),
            })
        };
        if let Err(e) = reqwest::Url::parse(&self.url) {
            return invalid("url", &e.to_string());
        }
        if self.org.is_empty() {
            return invalid("org", "must not be empty");
        }
        if self.bucket.is_empty() {
            return invalid("bucket", "must not be empty");
        }
        if self.token_env.is_some() && self.token_file.is_some() {
            return invalid("token_env", "set either token_env or token_file, not both");
        }
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1");
        }
        if let Some((field, reason)) = self.retry.problem() {
            return invalid(field, reason);
        }
        if self.timeout_ms == 0 {
            return invalid("timeout_ms", "must be at least 1");
        }
        Ok(())
    }

    /// The API token from `token_env` or `token_file`; empty (no authentication) when neither is set.
    fn token(&self) -> Result<String, ExportError> {
        if let Some(var) = &self.token_env {
            return std::env::var(var).map_err(|_| ExportError::TokenEnv { var: var.clone() });
        }
        if let Some(path) = &self.token_file {
            return std::fs::read_to_string(path)
                .map(|token| token.trim().to_owned())
                .map_err(|source| ExportError::TokenFile {
                    path: path.clone(),
                    source,
                });
        }
        Ok(String::new())
    }
}

/// What can go wrong setting up or running an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A configuration value is unusable.
    #[error("export configuration: {field}: {reason}")]
    Config {
        /// The offending field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// The token's environment variable is not set (or not Unicode).
    #[error("export token: environment variable {var} is not set")]
    TokenEnv {
        /// The variable's name.
        var: String,
    },
    /// The token file could not be read.
    #[error("export token: cannot read {}: {source}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("export client: {0}")]
    Client(#[from] influxdb2::BuildError),
    /// The metrics could not be registered.
    #[error("export metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// InfluxDB refused a batch for a reason a retry cannot fix.
    #[error("InfluxDB refused a batch of {points} points: {source}")]
    Refused {
        /// Points in the batch.
        points: usize,
        /// The refusal.
        source: RequestError,
    },
    /// InfluxDB could not be reached, or kept failing, through every try.
    #[error("InfluxDB write of {points} points failed {attempts} times, last: {source}")]
    Unavailable {
        /// Points in the batch.
        points: usize,
        /// Tries made.
        attempts: u32,
        /// The last failure.
        source: RequestError,
    },
}

/// The exporter's Prometheus metrics.
#[derive(Debug, Clone)]
pub struct ExportMetrics {
    points: IntCounterVec,
    failures: IntCounter,
    batch_seconds: Histogram,
}

impl ExportMetrics {
    /// Creates the metrics and registers them with `registry`.
    pub fn new(registry: &Registry) -> Result<ExportMetrics, ExportError> {
        let metrics = ExportMetrics {
            points: IntCounterVec::new(
                Opts::new(
                    "sentinel_export_points_total",
                    "Points accepted by InfluxDB, by measurement.",
                ),
                &["measurement"],
            )?,
            failures: IntCounter::new(
                "sentinel_export_failures_total",
                "Export write requests that failed (every try counts).",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "sentinel_export_batch_seconds",
                    "Duration of one export write request.",
                )
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 15)?),
            )?,
        };
        registry.register(Box::new(metrics.points.clone()))?;
        registry.register(Box::new(metrics.failures.clone()))?;
        registry.register(Box::new(metrics.batch_seconds.clone()))?;
        Ok(metrics)
    }
}

/// Writes export-queue entries to InfluxDB v2.
pub struct Exporter {
    client: influxdb2::Client,
    bucket: String,
    batch_size: usize,
    retry: RetryConfig,
    metrics: ExportMetrics,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("url", &self.client.base.as_str())
            .field("org", &self.client.org)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// A point and its measurement.
type Point = (&'static str, DataPoint);

impl Exporter {
    /// Checks `config`, reads the token and builds the client (nothing is sent yet).
    pub fn new(config: &ExportConfig, metrics: ExportMetrics) -> Result<Exporter, ExportError> {
        config.validate()?;
        let http = reqwest::ClientBuilder::new().timeout(Duration::from_millis(config.timeout_ms));
        let client =
            influxdb2::ClientBuilder::with_builder(http, &config.url, &config.org, config.token()?)
                .build()?;
        Ok(Exporter {
            client,
            bucket: config.bucket.clone(),
            batch_size: config.batch_size,
            retry: config.retry.clone(),
            metrics,
        })
    }

    /// Writes the entries in batches of `batch_size` points, in order; `Ok` once every batch
    /// was accepted. Entries with nothing representable (no finite value) are skipped.
    pub async fn export(&self, entries: &[ExportEntry]) -> Result<(), ExportError> {
        let points: Vec<Point> = entries
            .iter()
            .filter_map(|entry| {
                let point = point(&entry.item);
                if point.is_none() {
                    tracing::warn!(seq = entry.seq, "export entry has no finite value, skipped");
                }
                point
            })
            .collect();
        for batch in points.chunks(self.batch_size) {
            self.write(batch).await?;
        }
        Ok(())
    }

    /// Writes one batch, retrying transient failures with backoff.
    async fn write(&self, batch: &[Point]) -> Result<(), ExportError> {
        let mut lines = Vec::new();
        for (_, point) in batch {
            point
                .write_data_point_to(&mut lines)
                .expect("writing to a Vec cannot fail");
        }
        let mut failed = 0;
        loop {
            let started = Instant::now();
            let result = self
                .client
                .write_line_protocol_with_precision(
                    &self.client.org,
                    &self.bucket,
                    lines.clone(),
                    TimestampPrecision::Milliseconds,
                )
                .await;
            self.metrics
                .batch_seconds
                .observe(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(()) => {
                    for (measurement, _) in batch {
                        self.metrics.points.with_label_values(&[measurement]).inc();
                    }
                    return Ok(());
                }
                Err(error) => error,
            };
            self.metrics.failures.inc();
            failed += 1;
            if !transient(&error) {
                return Err(ExportError::Refused {
                    points: batch.len(),
                    source: error,
                });
            }
            if failed >= self.retry.attempts {
                return Err(ExportError::Unavailable {
                    points: batch.len(),
                    attempts: failed,
                    source: error,
                });
            }
            let delay = self.retry.delay_after(failed);
            tracing::warn!(%error, attempt = failed, ?delay, "export write failed, retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

/// Whether a retry may succeed: transport failures, timeouts, throttling and server errors.
fn transient(error: &RequestError) -> bool {
    match error {
        RequestError::ReqwestProcessing { .. } => true,
        RequestError::Http { status, .. } => {
            status.is_server_error()
                || *status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || *status == reqwest::StatusCode::REQUEST_TIMEOUT
        }
        RequestError::Serializing { .. } | RequestError::Deserializing { .. } => false,
    }
}

/// An export-queue entry's point; `None` when it has no finite value.
fn point(item: &ExportItem) -> Option<Point> {
    match item {
        ExportItem::Telemetry(record) => Some((TELEMETRY_MEASUREMENT, telemetry_point(record)?)),
        ExportItem::Anomaly(anomaly) => Some((ANOMALY_MEASUREMENT, anomaly_point(anomaly)?)),
    }
}

/// The `llm_telemetry` point of an applied event; `None` when it has no finite metric.
fn telemetry_point(record: &TelemetryRecord) -> Option<DataPoint> {
    let event = &record.event;
    let status = if event.is_error() { "error" } else { "ok" };
    let mut point = DataPoint::builder(TELEMETRY_MEASUREMENT);
    point = tag(point, "service", &event.service);
    point = tag(point, "model", &event.model);
    point = tag(point, "status", status);
    for metric in Metric::ALL {
        point = field(point, metric.name(), record.values.get(metric));
    }
    point.timestamp(event.timestamp_ms).build().ok()
}

/// The `llm_anomalies` point of a raised anomaly.
fn anomaly_point(anomaly: &Anomaly) -> Option<DataPoint> {
    let details = &anomaly.details;
    let mut point = DataPoint::builder(ANOMALY_MEASUREMENT);
    point = tag(point, "service", &anomaly.service_name);
    point = tag(point, "model", &anomaly.model);
    point = tag(point, "severity", anomaly.severity.name());
    point = tag(point, "anomaly_type", anomaly.anomaly_type.name());
    point = tag(point, "detection_method", &anomaly.detection_method);
    point = tag(point, "metric", &details.metric);
    point = field(point, "value", Some(details.value));
    point = field(point, "baseline", Some(details.baseline));
    point = field(point, "threshold", Some(details.threshold));
    point = field(point, "deviation_sigma", Some(details.deviation_sigma));
    point = field(point, "confidence", Some(anomaly.confidence));
    point = point.field("alert_id", line_safe(&anomaly.alert_id).into_owned());
    point.timestamp(anomaly.timestamp_ms).build().ok()
}

/// Adds a tag unless its value is empty (line protocol has no empty tag values).
fn tag(point: DataPointBuilder, key: &str, value: &str) -> DataPointBuilder {
    if value.is_empty() {
        point
    } else {
        point.tag(key, line_safe(value).into_owned())
    }
}

/// Adds a float field if the value is present and finite (line protocol has no NaN or ∞).
fn field(point: DataPointBuilder, key: &str, value: Option<f64>) -> DataPointBuilder {
    match value.filter(|v| v.is_finite()) {
        Some(v) => point.field(key, v),
        None => point,
    }
}

/// Prepares a tag value or string field for the `influxdb2` crate, which escapes commas,
/// equals signs, spaces and double quotes but not backslashes: backslashes are doubled,
/// and line breaks and other control characters, which line protocol cannot carry,
/// become spaces.
fn line_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || c.is_control()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::anomaly::{AnomalyContext, AnomalyDetails};
    use sentinel_core::{AnomalyType, Event, MetricValues, Severity};

    fn line(point: &DataPoint) -> String {
        let mut out = Vec::new();
        point.write_data_point_to(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn record(service: &str, model: &str, values: MetricValues) -> TelemetryRecord {
        TelemetryRecord {
            event: Event {
                timestamp_ms: 1_767_225_600_123,
                service: service.to_owned(),
                model: model.to_owned(),
                ..Event::default()
            },
            values,
        }
    }

    fn anomaly() -> Anomaly {
        Anomaly {
            alert_id: "6f1c2a4e-0d1b-4e7a-9b1f-2c3d4e5f6a7b".to_owned(),
            timestamp: "2026-01-01T00:00:00.123Z".to_owned(),
            timestamp_ms: 1_767_225_600_123,
            severity: Severity::High,
            anomaly_type: AnomalyType::LatencySpike,
            service_name: "support bot".to_owned(),
            model: "gpt-4o".to_owned(),
            detection_method: "z_score".to_owned(),
            confidence: 0.875,
            details: AnomalyDetails {
                metric: "latency_ms".to_owned(),
                value: 32_000.0,
                baseline: 850.0,
                threshold: 2_400.5,
                deviation_sigma: 41.25,
                additional: Default::default(),
            },
            context: AnomalyContext {
                trace_id: None,
                user_id: None,
                region: None,
                time_window: "last 1000 samples".to_owned(),
                sample_count: 60,
                additional: Default::default(),
            },
            root_cause: None,
            remediation: Vec::new(),
            related_alerts: Vec::new(),
            runbook_url: None,
            incident_id: None,
        }
    }

    #[test]
    fn telemetry_has_its_tags_present_metrics_and_time_in_ms() {
        let values = MetricValues([Some(850.5), Some(400.0), Some(120.0), None, None, None]);
        let point = telemetry_point(&record("chat", "gpt-4o", values)).unwrap();
        assert_eq!(
            line(&point),
            "llm_telemetry,model=gpt-4o,service=chat,status=ok \
             completion_tokens=120,latency_ms=850.5,prompt_tokens=400 1767225600123\n"
        );
        let mut failed = record("chat", "gpt-4o", MetricValues([Some(1.0); 6]));
        failed.event.errors.push("rate limited".to_owned());
        let line = line(&telemetry_point(&failed).unwrap());
        assert!(line.contains(",status=error "), "{line}");
        for metric in Metric::ALL {
            assert!(line.contains(&format!("{}=1", metric.name())), "{line}");
        }
    }

    #[test]
    fn non_finite_values_are_left_out_and_a_point_needs_one_value() {
        let values = MetricValues([
            Some(f64::NAN),
            Some(3.0),
            None,
            None,
            Some(f64::INFINITY),
            None,
        ]);
        let point = telemetry_point(&record("chat", "m", values)).unwrap();
        assert_eq!(
            line(&point),
            "llm_telemetry,model=m,service=chat,status=ok prompt_tokens=3 1767225600123\n"
        );
        let nothing = MetricValues([Some(f64::NAN), None, None, None, None, None]);
        assert!(telemetry_point(&record("chat", "m", nothing)).is_none());
    }

    #[test]
    fn anomalies_carry_their_classification_as_tags_and_numbers_as_fields() {
        let point = anomaly_point(&anomaly()).unwrap();
        assert_eq!(
            line(&point),
            "llm_anomalies,anomaly_type=latency_spike,detection_method=z_score,\
             metric=latency_ms,model=gpt-4o,service=support\\ bot,severity=high \
             alert_id=\"6f1c2a4e-0d1b-4e7a-9b1f-2c3d4e5f6a7b\",baseline=850,confidence=0.875,\
             deviation_sigma=41.25,threshold=2400.5,value=32000 1767225600123\n"
        );
    }

    #[test]
    fn tag_values_with_spaces_commas_equals_and_backslashes_are_escaped() {
        let values = MetricValues([Some(1.0), None, None, None, None, None]);
        let point =
            telemetry_point(&record("support bot, eu=west", "dir\\model\n2", values)).unwrap();
        assert_eq!(
            line(&point),
            "llm_telemetry,model=dir\\\\model\\ 2,service=support\\ bot\\,\\ eu\\=west,\
             status=ok latency_ms=1 1767225600123\n"
        );
        let trailing = telemetry_point(&record("ends with\\", "", values)).unwrap();
        assert_eq!(
            line(&trailing),
            "llm_telemetry,service=ends\\ with\\\\,status=ok latency_ms=1 1767225600123\n",
            "a trailing backslash does not escape the comma; an empty tag is left out"
        );
    }

    #[test]
    fn string_fields_escape_quotes_and_backslashes() {
        let mut odd = anomaly();
        odd.alert_id = "a\"b\\".to_owned();
        let line = line(&anomaly_point(&odd).unwrap());
        assert!(line.contains(r#"alert_id="a\"b\\","#), "{line}");
        assert!(matches!(line_safe("plain"), Cow::Borrowed("plain")));
        assert_eq!(line_safe("tab\there\r\n"), "tab here  ");
    }

    #[test]
    fn configuration_has_defaults_and_refuses_unknown_or_bad_values() {
        let config: ExportConfig = serde_yaml::from_str(
            "url: http://influx:8086\nbucket: llm\ntoken_env: INFLUX_TOKEN\nretry:\n  attempts: 2\n",
        )
        .unwrap();
        assert_eq!(config.url, "http://influx:8086");
        assert_eq!(config.org, "sentinel");
        assert_eq!(config.bucket, "llm");
        assert_eq!(config.token_env.as_deref(), Some("INFLUX_TOKEN"));
        assert_eq!(config.batch_size, 100);
        assert_eq!(
            config.retry,
            RetryConfig {
                attempts: 2,
                ..RetryConfig::default()
            }
        );
        config.validate().unwrap();
        assert!(serde_yaml::from_str::<ExportConfig>("token: secret\n").is_err());
        assert!(serde_yaml::from_str::<ExportConfig>("retry:\n  tries: 3\n").is_err());

        let bad = |edit: fn(&mut ExportConfig)| {
            let mut config = ExportConfig::default();
            edit(&mut config);
            match config.validate() {
                Err(ExportError::Config { field, .. }) => field,
                other => panic!("expected a configuration error, got {other:?}"),
            }
        };
        assert_eq!(bad(|c| c.url = "not a url".into()), "url");
        assert_eq!(bad(|c| c.batch_size = 0), "batch_size");
        assert_eq!(bad(|c| c.retry.attempts = 0), "retry.attempts");
        assert_eq!(bad(|c| c.retry.multiplier = f64::NAN), "retry.multiplier");
        assert_eq!(
            bad(|c| {
                c.token_env = Some("A".into());
                c.token_file = Some("/b".into());
            }),
            "token_env"
        );
    }

    #[test]
    fn the_token_comes_from_a_file_or_the_environment_and_is_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t-token\n").unwrap();
        let config = ExportConfig {
            token_file: Some(path),
            ..ExportConfig::default()
        };
        assert_eq!(config.token().unwrap(), "s3cr3t-token");
        let metrics = ExportMetrics::new(&Registry::new()).unwrap();
        let exporter = Exporter::new(&config, metrics).unwrap();
        let shown = format!("{exporter:?} {config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let missing = ExportConfig {
            token_env: Some("SENTINEL_EXPORT_TEST_UNSET_TOKEN".into()),
            ..ExportConfig::default()
        };
        let metrics = ExportMetrics::new(&Registry::new()).unwrap();
        assert!(matches!(
            Exporter::new(&missing, metrics),
            Err(ExportError::TokenEnv { var }) if var == "SENTINEL_EXPORT_TEST_UNSET_TOKEN"
        ));
    }

    #[test]
    fn metrics_register_once_per_registry() {
        let registry = Registry::new();
        ExportMetrics::new(&registry).unwrap();
        assert!(matches!(
            ExportMetrics::new(&registry),
            Err(ExportError::Metrics(_))
        ));
    }
}
