//! The InfluxDB exporter against a real server speaking the InfluxDB v2 write API:
//! VictoriaMetrics (Debian package `victoria-metrics`, installed by `scripts/setup`), started
//! on an ephemeral port with its own data directory and read back through its export API.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sentinel_core::anomaly::{AnomalyContext, AnomalyDetails};
use sentinel_core::{Anomaly, AnomalyType, Event, MetricValues, Severity};
use sentinel_node::alerting::RetryConfig;
use sentinel_node::export::{ExportConfig, ExportError, ExportMetrics, Exporter};
use sentinel_storage_engine::{ExportEntry, ExportItem, TelemetryRecord};
use sentinel_testkit::closed_port_addr;
use sentinel_testkit::services::{Series, VictoriaMetrics};
use tempfile::TempDir;

/// 2025-01-01T00:00:00Z; the server keeps 100 years, so these points are in its retention.
const T0: i64 = 1_735_689_600_000;
const SERVICES: [&str; 2] = ["chat", "support bot, eu=west"];
const MODELS: [&str; 2] = ["gpt-4o", "claude 3"];
const EVENTS: usize = 300;
/// One anomaly after every this many events.
const ANOMALY_EVERY: usize = 15;

/// The `i`-th event's metrics; cost only on events not divisible by 3.
fn values(i: usize) -> MetricValues {
    let cost = (i % 3 != 0).then_some(0.001 * i as f64);
    MetricValues([
        Some(100.0 + i as f64),
        Some(10.0 + i as f64),
        Some(5.0),
        Some(15.0 + i as f64),
        cost,
        Some(2.5),
    ])
}

fn telemetry(i: usize) -> ExportItem {
    ExportItem::Telemetry(TelemetryRecord {
        event: Event {
            event_id: Some(format!("evt-{i}")),
            timestamp_ms: T0 + i as i64 * 1000,
            service: SERVICES[i % 2].to_owned(),
            model: MODELS[(i / 2) % 2].to_owned(),
            latency_ms: 100.0 + i as f64,
            errors: if i % 10 == 0 {
                vec!["rate limited".to_owned()]
            } else {
                Vec::new()
            },
            ..Event::default()
        },
        values: values(i),
    })
}

fn anomaly(i: usize) -> ExportItem {
    ExportItem::Anomaly(Anomaly {
        alert_id: format!("00000000-0000-4000-8000-{i:012}"),
        timestamp: String::new(),
        timestamp_ms: T0 + i as i64 * 1000 + 500,
        severity: [Severity::Medium, Severity::Critical][i % 2],
        anomaly_type: AnomalyType::LatencySpike,
        service_name: SERVICES[1].to_owned(),
        model: MODELS[1].to_owned(),
        detection_method: "z_score".to_owned(),
        confidence: 0.9,
        details: AnomalyDetails {
            metric: "latency_ms".to_owned(),
            value: 1000.0 + i as f64,
            baseline: 120.0,
            threshold: 400.0,
            deviation_sigma: 7.5,
            additional: BTreeMap::new(),
        },
        context: AnomalyContext {
            trace_id: None,
            user_id: None,
            region: None,
            time_window: "last 1000 samples".to_owned(),
            sample_count: 100,
            additional: BTreeMap::new(),
        },
        root_cause: None,
        remediation: Vec::new(),
        related_alerts: Vec::new(),
        runbook_url: None,
        incident_id: None,
    })
}

/// 300 events with an anomaly after every 15th, in queue order.
fn entries() -> Vec<ExportEntry> {
    let mut items = Vec::new();
    for i in 0..EVENTS {
        items.push(telemetry(i));
        if i % ANOMALY_EVERY == ANOMALY_EVERY - 1 {
            items.push(anomaly(i));
        }
    }
    items
        .into_iter()
        .enumerate()
        .map(|(seq, item)| ExportEntry {
            seq: seq as u64,
            item,
        })
        .collect()
}

fn config(url: &str, token_dir: &TempDir) -> ExportConfig {
    let token_file = token_dir.path().join("influx-token");
    std::fs::write(&token_file, "test-token\n").unwrap();
    ExportConfig {
        url: url.to_owned(),
        org: "sentinel".to_owned(),
        bucket: "telemetry".to_owned(),
        token_file: Some(token_file),
        batch_size: 64,
        ..ExportConfig::default()
    }
}

/// The value of one sample line of the Prometheus text format.
fn metric(registry: &prometheus::Registry, sample: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_written_through_the_v2_api_read_back_with_their_tags_and_values() {
    let server = VictoriaMetrics::start().await;
    let token_dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let exporter = Exporter::new(
        &config(&server.url, &token_dir),
        ExportMetrics::new(&registry).unwrap(),
    )
    .unwrap();
    let entries = entries();
    let anomalies = EVENTS / ANOMALY_EVERY;
    assert_eq!(entries.len(), EVENTS + anomalies);
    exporter.export(&entries).await.unwrap();

    let latency = server.series("llm_telemetry_latency_ms").await;
    let mut per_series = BTreeMap::new();
    for series in &latency {
        let key = (
            series.metric["service"].clone(),
            series.metric["model"].clone(),
            series.metric["status"].clone(),
        );
        for (&t, &v) in series.timestamps.iter().zip(&series.values) {
            let i = ((t - T0) / 1000) as usize;
            assert_eq!((t - T0) % 1000, 0, "event time in ms");
            assert_eq!(v, 100.0 + i as f64, "latency of event {i}");
            *per_series.entry(key.clone()).or_insert(0) += 1;
        }
    }
    let mut expected = BTreeMap::new();
    for i in 0..EVENTS {
        let status = if i % 10 == 0 { "error" } else { "ok" };
        let key = (
            SERVICES[i % 2].to_owned(),
            MODELS[(i / 2) % 2].to_owned(),
            status.to_owned(),
        );
        *expected.entry(key).or_insert(0) += 1;
    }
    assert_eq!(per_series, expected, "every event, under its tags");
    assert!(per_series
        .keys()
        .any(|(s, m, _)| s == "support bot, eu=west" && m == "claude 3"));

    let samples = |series: &[Series]| series.iter().map(|s| s.values.len()).sum::<usize>();
    let cost = server.series("llm_telemetry_cost_usd").await;
    assert_eq!(samples(&cost), (0..EVENTS).filter(|i| i % 3 != 0).count());
    let all = server.series("llm_telemetry_.*").await;
    let mut fields: Vec<&str> = all.iter().map(|s| s.metric["__name__"].as_str()).collect();
    fields.sort_unstable();
    fields.dedup();
    assert_eq!(
        fields,
        [
            "llm_telemetry_completion_tokens",
            "llm_telemetry_cost_usd",
            "llm_telemetry_latency_ms",
            "llm_telemetry_prompt_tokens",
            "llm_telemetry_tokens_per_second",
            "llm_telemetry_total_tokens",
        ]
    );

    let values = server.series("llm_anomalies_value").await;
    assert_eq!(samples(&values), anomalies);
    for series in &values {
        let tags = &series.metric;
        assert_eq!(tags["service"], "support bot, eu=west");
        assert_eq!(tags["model"], "claude 3");
        assert_eq!(tags["anomaly_type"], "latency_spike");
        assert_eq!(tags["detection_method"], "z_score");
        assert_eq!(tags["metric"], "latency_ms");
        for (&t, &v) in series.timestamps.iter().zip(&series.values) {
            let i = ((t - 500 - T0) / 1000) as usize;
            assert_eq!(v, 1000.0 + i as f64);
            let severity = if i % 2 == 0 { "medium" } else { "critical" };
            assert_eq!(tags["severity"], severity, "anomaly {i}");
        }
    }
    for field in ["baseline", "threshold", "deviation_sigma", "confidence"] {
        let series = server.series(&format!("llm_anomalies_{field}")).await;
        assert_eq!(samples(&series), anomalies, "{field}");
    }
    // VictoriaMetrics keeps no strings: the alert_id field arrives, its text is dropped.
    let alert_ids = server.series("llm_anomalies_alert_id").await;
    assert_eq!(samples(&alert_ids), anomalies);

    let points = "sentinel_export_points_total{measurement=";
    assert_eq!(
        metric(&registry, &format!("{points}\"llm_telemetry\"}}")),
        EVENTS as f64
    );
    assert_eq!(
        metric(&registry, &format!("{points}\"llm_anomalies\"}}")),
        anomalies as f64
    );
    let batches = entries.len().div_ceil(64);
    assert_eq!(
        metric(&registry, "sentinel_export_batch_seconds_count"),
        batches as f64
    );
    assert_eq!(metric(&registry, "sentinel_export_failures_total"), 0.0);
}

/// A TCP server that accepts connections and never answers.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// A TCP server that answers every request `400 Bad Request`.
async fn refusing_server() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 << 10];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\nConnection: close\r\n\r\nbad request",
                )
                .await;
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_down_hangs_or_refuses_gives_an_error_without_hanging() {
    let token_dir = tempfile::tempdir().unwrap();
    let entries = entries();
    let (silent, silent_task) = silent_server().await;
    let (refusing, refusing_task) = refusing_server().await;
    let down = format!("http://{}", closed_port_addr());
    for (url, tries) in [(&down, 3), (&silent, 3), (&refusing, 1)] {
        let registry = prometheus::Registry::new();
        let config = ExportConfig {
            retry: RetryConfig {
                attempts: 3,
                initial_backoff_ms: 20,
                multiplier: 2.0,
                max_backoff_ms: 50,
            },
            timeout_ms: 300,
            ..config(url, &token_dir)
        };
        let exporter = Exporter::new(&config, ExportMetrics::new(&registry).unwrap()).unwrap();
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(20), exporter.export(&entries))
            .await
            .expect("export gives up instead of hanging");
        match (result, tries) {
            (
                Err(ExportError::Unavailable {
                    attempts, points, ..
                }),
                3,
            ) => {
                assert_eq!((attempts, points), (3, 64), "{url}");
            }
            (Err(ExportError::Refused { points, .. }), 1) => assert_eq!(points, 64),
            (other, _) => panic!("{url}: unexpected {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{url}");
        assert_eq!(
            metric(&registry, "sentinel_export_failures_total"),
            tries as f64,
            "{url}"
        );
    }
    silent_task.abort();
    refusing_task.abort();
}
