//! Alert delivery against a real RabbitMQ and real HTTP receivers.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use prometheus::{Registry, TextEncoder};
use sentinel_core::anomaly::{AnomalyContext, AnomalyDetails};
use sentinel_core::{
    Anomaly, AnomalyType, DetectionConfig, Event, Metric, MetricValues, Notification,
    NotificationKind, Severity, ShardDetector,
};
use sentinel_node::alerting::{
    sign, AlertMetrics, AlertingConfig, AlertingError, Dispatcher, Message, SinkError,
    ALERT_ID_HEADER, EVENT_HEADER, INCIDENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER,
};
use sentinel_testkit::services;
use sentinel_testkit::services::{AlertQueue, Replies, TcpProxy, WebhookReceiver};
use tempfile::NamedTempFile;

const SECRET: &[u8] = b"whsec_test_0123456789";

/// Upper bound on one delivery to an absent broker: guards against a hang, not a target.
const NO_HANG: Duration = Duration::from_secs(60);

/// An alert with an id no other test (or earlier run) uses, and its JSON.
fn alert(severity: Severity, anomaly_type: AnomalyType) -> (Anomaly, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let alert = Anomaly {
        alert_id: format!(
            "{:08x}-{:04x}-4000-8000-{:012x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            nanos & 0xffff_ffff_ffff
        ),
        timestamp: "2025-03-01T12:00:00Z".to_owned(),
        timestamp_ms: 1_740_830_400_000,
        severity,
        anomaly_type,
        service_name: "checkout".to_owned(),
        model: "gpt-4o".to_owned(),
        detection_method: "z_score".to_owned(),
        confidence: 0.93,
        details: AnomalyDetails {
            metric: "latency_ms".to_owned(),
            value: 4200.0,
            baseline: 850.0,
            threshold: 2100.0,
            deviation_sigma: 6.1,
            additional: BTreeMap::new(),
        },
        context: AnomalyContext {
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
            user_id: None,
            region: None,
            time_window: "last 1000 samples".to_owned(),
            sample_count: 1000,
            additional: BTreeMap::new(),
        },
        root_cause: None,
        remediation: vec!["Check the provider's status page".to_owned()],
        related_alerts: Vec::new(),
        runbook_url: None,
        incident_id: None,
    };
    let json = serde_json::to_string(&alert).unwrap();
    (alert, json)
}

/// A point alert as an earlier version queued it: no incident, no event.
fn point<'a>(alert: &'a Anomaly, json: &'a str) -> Message<'a> {
    Message {
        json,
        alert,
        event: None,
    }
}

/// The `opened` notification of an incident on a key no other test uses, as a shard
/// queues it (a call over the latency cap opens it), and its JSON.
fn opened() -> (Notification, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut config = DetectionConfig::default();
    config.incidents.latency_cap_ms = Some(10_000.0);
    let mut detector = ShardDetector::new(0, config).unwrap();
    let event = Event {
        timestamp_ms: 1_740_830_400_000 + (nanos % 1_000_000) as i64,
        service: format!("checkout-{nanos}"),
        model: "gpt-4o".to_owned(),
        latency_ms: 60_000.0,
        ..Event::default()
    };
    let mut values = MetricValues::default();
    values.set(Metric::LatencyMs, Some(event.latency_ms));
    let notification = detector
        .observe(&event, &values)
        .notifications
        .pop()
        .expect("a call over the cap opens an incident");
    let json = serde_json::to_string(&notification).unwrap();
    (notification, json)
}

/// The delivery of a notification.
fn notice<'a>(notification: &'a Notification, json: &'a str) -> Message<'a> {
    Message {
        json,
        alert: &notification.alert,
        event: Some(notification.event),
    }
}

fn secret_file() -> NamedTempFile {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(SECRET).unwrap();
    file.write_all(b"\n").unwrap();
    file
}

/// A webhook entry for the YAML config.
fn webhook(name: &str, receiver: &WebhookReceiver, secret: &NamedTempFile) -> String {
    format!(
        "{{name: {name}, url: '{}', secret_file: '{}'}}",
        receiver.url(),
        secret.path().display()
    )
}

fn config(yaml: &str) -> AlertingConfig {
    serde_yaml::from_str(yaml).unwrap()
}

/// Tries of one delivery with waits of 10 ms, 20 ms, ...
fn fast_retry(attempts: u32) -> String {
    format!("retry: {{attempts: {attempts}, initial_backoff_ms: 10, max_backoff_ms: 50}}\n")
}

async fn dispatcher(config: &AlertingConfig) -> (Dispatcher, Registry) {
    let registry = Registry::new();
    let metrics = AlertMetrics::new(&registry).unwrap();
    (
        Dispatcher::connect(config, metrics).await.unwrap(),
        registry,
    )
}

/// Value of the series `name{labels}` as a scrape of `registry` shows it.
fn scraped(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let wanted: BTreeMap<&str, &str> = labels.iter().copied().collect();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{')?;
            let found: BTreeMap<&str, &str> = label_text
                .trim_end_matches('}')
                .split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(key, value)| (key, value.trim_matches('"')))
                .collect();
            (metric == name && found == wanted).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no series {name}{labels:?} in\n{text}"))
}

fn deliveries(registry: &Registry, sink: &str, outcome: &str) -> f64 {
    scraped(
        registry,
        "sentinel_alert_deliveries_total",
        &[("sink", sink), ("outcome", outcome)],
    )
}

/// The per-sink errors of an undelivered alert, by sink.
fn failures(result: Result<(), AlertingError>) -> BTreeMap<String, SinkError> {
    match result {
        Err(AlertingError::Undelivered { failures, .. }) => failures
            .into_iter()
            .map(|failure| (failure.sink, failure.error))
            .collect(),
        other => panic!("expected an undelivered alert, got {other:?}"),
    }
}

#[tokio::test]
async fn no_sinks_means_every_alert_counts_as_delivered() {
    let (dispatcher, _registry) = dispatcher(&AlertingConfig::default()).await;
    assert!(dispatcher.is_empty());
    let (alert, json) = alert(Severity::Low, AnomalyType::InputDrift);
    dispatcher.deliver(point(&alert, &json)).await.unwrap();
}

#[tokio::test]
async fn rabbitmq_gets_a_persistent_message_routed_by_severity_and_type() {
    let url = services::ensure_rabbitmq();
    let mut queue = AlertQueue::bind(url).await;
    let (dispatcher, registry) = dispatcher(&config(&format!("rabbitmq: {{url: '{url}'}}"))).await;
    assert!(!dispatcher.is_empty());

    let (alert, json) = alert(Severity::Critical, AnomalyType::TokenUsageSpike);
    dispatcher.deliver(point(&alert, &json)).await.unwrap();

    let message = queue.next_with_message_id(&alert.alert_id).await;
    assert_eq!(message.exchange.as_str(), "sentinel.alerts");
    assert_eq!(
        message.routing_key.as_str(),
        "alert.critical.token_usage_spike"
    );
    assert_eq!(*message.properties.delivery_mode(), Some(2));
    assert_eq!(
        message
            .properties
            .content_type()
            .as_ref()
            .map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(message.data, json.as_bytes());
    assert_eq!(deliveries(&registry, "rabbitmq", "delivered"), 1.0);
    assert_eq!(deliveries(&registry, "rabbitmq", "failed"), 0.0);
}

#[tokio::test]
async fn rabbitmq_delivery_reconnects_after_the_connection_is_lost() {
    let url = services::ensure_rabbitmq();
    let mut queue = AlertQueue::bind(url).await;
    let proxy = TcpProxy::start(services::RABBITMQ_ADDR.parse().unwrap()).await;
    let proxied = format!("amqp://guest:guest@{}/%2f", proxy.addr());
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "rabbitmq: {{url: '{proxied}', timeout_ms: 5000}}\n{}",
        fast_retry(3)
    )))
    .await;

    let (first, first_json) = alert(Severity::High, AnomalyType::LatencySpike);
    dispatcher
        .deliver(point(&first, &first_json))
        .await
        .unwrap();
    queue.next_with_message_id(&first.alert_id).await;
    assert_eq!(proxy.connections_accepted(), 1);

    proxy.cut();
    let (second, second_json) = alert(Severity::Medium, AnomalyType::CostAnomaly);
    dispatcher
        .deliver(point(&second, &second_json))
        .await
        .unwrap();
    let message = queue.next_with_message_id(&second.alert_id).await;
    assert_eq!(message.routing_key.as_str(), "alert.medium.cost_anomaly");
    assert_eq!(proxy.connections_accepted(), 2, "one new connection");
    assert_eq!(deliveries(&registry, "rabbitmq", "delivered"), 2.0);
    assert_eq!(deliveries(&registry, "rabbitmq", "failed"), 0.0);
}

#[tokio::test]
async fn unreachable_rabbitmq_fails_deliveries_but_not_startup_and_is_counted() {
    let closed = sentinel_testkit::closed_port_addr();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "rabbitmq: {{url: 'amqp://guest:guest@{closed}/%2f', timeout_ms: 2000}}\n{}",
        fast_retry(2)
    )))
    .await;

    for round in 1..=2 {
        let (alert, json) = alert(Severity::High, AnomalyType::ErrorRateIncrease);
        let result = tokio::time::timeout(NO_HANG, dispatcher.deliver(point(&alert, &json)))
            .await
            .expect("delivery to an absent broker returns");
        let message = result.as_ref().map_err(ToString::to_string).unwrap_err();
        assert!(
            message.contains("rabbitmq: RabbitMQ: cannot connect"),
            "{message}"
        );
        let failures = failures(result);
        assert!(
            matches!(
                failures.get("rabbitmq"),
                Some(SinkError::Amqp {
                    during: "connect",
                    ..
                })
            ),
            "{failures:?}"
        );
        assert_eq!(
            deliveries(&registry, "rabbitmq", "failed"),
            f64::from(round)
        );
    }
    assert_eq!(deliveries(&registry, "rabbitmq", "delivered"), 0.0);
}

#[tokio::test]
async fn rabbitmq_that_never_answers_times_out() {
    // The kernel completes the TCP handshake, but nobody ever speaks AMQP.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "rabbitmq: {{url: 'amqp://guest:guest@{addr}/%2f', timeout_ms: 300}}\n{}",
        fast_retry(1)
    )))
    .await;

    let (alert, json) = alert(Severity::High, AnomalyType::LatencySpike);
    let result = tokio::time::timeout(NO_HANG, dispatcher.deliver(point(&alert, &json)))
        .await
        .expect("delivery to a silent broker returns");
    let failures = failures(result);
    assert!(
        matches!(failures.get("rabbitmq"), Some(SinkError::Timeout { after }) if *after == Duration::from_millis(300)),
        "{failures:?}"
    );
    assert_eq!(deliveries(&registry, "rabbitmq", "failed"), 1.0);
}

#[tokio::test]
async fn webhook_gets_the_exact_body_signed_with_id_and_timestamp_headers() {
    let receiver = WebhookReceiver::start(SECRET, Replies::Accept).await;
    let secret = secret_file();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "webhooks: [{}]",
        webhook("ops", &receiver, &secret)
    )))
    .await;

    // Leaders deliver from spawned tasks, so the delivery must be sendable between threads.
    let dispatcher = Arc::new(dispatcher);
    let (alert, json) = alert(Severity::High, AnomalyType::LatencySpike);
    let task = {
        let (dispatcher, alert, json) = (Arc::clone(&dispatcher), alert.clone(), json.clone());
        tokio::spawn(async move { dispatcher.deliver(point(&alert, &json)).await })
    };
    task.await.unwrap().unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.body, json.as_bytes());
    assert!(request.signature_valid);
    assert_eq!(
        request.header(SIGNATURE_HEADER),
        Some(sign(SECRET, json.as_bytes()).as_str())
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(
        request.header(ALERT_ID_HEADER),
        Some(alert.alert_id.as_str())
    );
    assert_eq!(
        request.header(INCIDENT_ID_HEADER),
        None,
        "not a notification"
    );
    assert_eq!(request.header(EVENT_HEADER), None);
    let sent_at: u64 = request.header(TIMESTAMP_HEADER).unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        now.abs_diff(sent_at) < 3600,
        "timestamp {sent_at}, now {now}"
    );
    assert_eq!(deliveries(&registry, "webhook:ops", "delivered"), 1.0);
}

#[tokio::test]
async fn a_notification_carries_its_incident_and_event_to_both_sinks() {
    let url = services::ensure_rabbitmq();
    let mut queue = AlertQueue::bind(url).await;
    let receiver = WebhookReceiver::start(SECRET, Replies::Accept).await;
    let secret = secret_file();
    let (dispatcher, _registry) = dispatcher(&config(&format!(
        "rabbitmq: {{url: '{url}'}}\nwebhooks: [{}]",
        webhook("ops", &receiver, &secret)
    )))
    .await;

    let (notification, json) = opened();
    assert_eq!(notification.event, NotificationKind::Opened);
    dispatcher
        .deliver(notice(&notification, &json))
        .await
        .unwrap();

    let incident_id = notification.incident.incident_id.as_str();
    let alert_id = notification.alert.alert_id.as_str();
    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(request.signature_valid);
    assert_eq!(request.body, json.as_bytes());
    assert_eq!(request.header(ALERT_ID_HEADER), Some(alert_id));
    assert_eq!(request.header(INCIDENT_ID_HEADER), Some(incident_id));
    assert_eq!(request.header(EVENT_HEADER), Some("opened"));

    let message = queue.next_with_message_id(alert_id).await;
    assert_eq!(message.data, json.as_bytes());
    assert_eq!(
        message.routing_key.as_str(),
        format!("alert.{}.latency_spike", notification.alert.severity.name())
    );
    let headers = message.properties.headers().clone().expect("AMQP headers");
    let header = |name: &str| match headers.inner().get(name) {
        Some(lapin::types::AMQPValue::LongString(value)) => Some(value.to_string()),
        _ => None,
    };
    assert_eq!(header("incident_id").as_deref(), Some(incident_id));
    assert_eq!(header("event").as_deref(), Some("opened"));
}

#[tokio::test]
async fn webhook_failing_twice_with_503_gets_the_alert_on_the_third_try() {
    let receiver = WebhookReceiver::start(
        SECRET,
        Replies::FailFirst(2, StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let secret = secret_file();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "webhooks: [{}]\n{}",
        webhook("ops", &receiver, &secret),
        fast_retry(3)
    )))
    .await;

    let (alert, json) = alert(Severity::Medium, AnomalyType::LatencyDrift);
    dispatcher.deliver(point(&alert, &json)).await.unwrap();

    let requests = receiver.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(requests
        .iter()
        .all(|r| r.signature_valid && r.body == json.as_bytes()));
    assert_eq!(receiver.accepted_alert_ids(), [alert.alert_id.as_str()]);
    assert_eq!(deliveries(&registry, "webhook:ops", "delivered"), 1.0);
    assert_eq!(deliveries(&registry, "webhook:ops", "failed"), 0.0);
}

#[tokio::test]
async fn webhook_rejecting_the_request_is_not_retried() {
    let receiver = WebhookReceiver::start(
        SECRET,
        Replies::AlwaysFail(StatusCode::UNPROCESSABLE_ENTITY),
    )
    .await;
    let secret = secret_file();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "webhooks: [{}]\n{}",
        webhook("ops", &receiver, &secret),
        fast_retry(3)
    )))
    .await;

    let (alert, json) = alert(Severity::Low, AnomalyType::OutputDrift);
    let failures = failures(dispatcher.deliver(point(&alert, &json)).await);
    assert!(
        matches!(
            failures.get("webhook:ops"),
            Some(SinkError::Status { status: 422 })
        ),
        "{failures:?}"
    );
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(deliveries(&registry, "webhook:ops", "failed"), 1.0);
}

#[tokio::test]
async fn always_failing_webhook_opens_the_breaker_and_later_alerts_fail_fast() {
    let receiver =
        WebhookReceiver::start(SECRET, Replies::AlwaysFail(StatusCode::BAD_GATEWAY)).await;
    let secret = secret_file();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "webhooks: [{}]\n{}breaker: {{failure_threshold: 2, open_ms: 600000}}\n",
        webhook("ops", &receiver, &secret),
        fast_retry(2)
    )))
    .await;

    for _ in 0..2 {
        let (alert, json) = alert(Severity::High, AnomalyType::SecurityThreat);
        let failures = failures(dispatcher.deliver(point(&alert, &json)).await);
        assert!(
            matches!(
                failures.get("webhook:ops"),
                Some(SinkError::Status { status: 502 })
            ),
            "{failures:?}"
        );
    }
    assert_eq!(receiver.requests().len(), 4);
    assert_eq!(
        scraped(
            &registry,
            "sentinel_alert_breaker_open",
            &[("sink", "webhook:ops")]
        ),
        1.0
    );

    let (alert, json) = alert(Severity::Critical, AnomalyType::SecurityThreat);
    let failures = failures(dispatcher.deliver(point(&alert, &json)).await);
    let error = &failures["webhook:ops"];
    assert!(matches!(error, SinkError::BreakerOpen { .. }), "{error}");
    assert!(
        error.to_string().contains("circuit breaker open"),
        "{error}"
    );
    assert_eq!(
        receiver.requests().len(),
        4,
        "an open breaker sends nothing"
    );
    assert_eq!(deliveries(&registry, "webhook:ops", "failed"), 2.0);
    assert_eq!(
        deliveries(&registry, "webhook:ops", "rejected_by_breaker"),
        1.0
    );
}

#[tokio::test]
async fn sink_that_accepted_an_alert_does_not_get_it_again_when_another_sink_failed() {
    let healthy = WebhookReceiver::start(SECRET, Replies::Accept).await;
    let flaky = WebhookReceiver::start(
        SECRET,
        Replies::FailFirst(1, StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let secret = secret_file();
    let (dispatcher, registry) = dispatcher(&config(&format!(
        "webhooks: [{}, {}]\n{}",
        webhook("healthy", &healthy, &secret),
        webhook("flaky", &flaky, &secret),
        fast_retry(1)
    )))
    .await;

    let (alert, json) = alert(Severity::High, AnomalyType::CostAnomaly);
    let failures = failures(dispatcher.deliver(point(&alert, &json)).await);
    assert_eq!(
        failures.keys().collect::<Vec<_>>(),
        ["webhook:flaky"],
        "only the failing sink is reported"
    );

    dispatcher.deliver(point(&alert, &json)).await.unwrap();
    assert_eq!(healthy.accepted_alert_ids(), [alert.alert_id.as_str()]);
    assert_eq!(healthy.requests().len(), 1);
    assert_eq!(flaky.accepted_alert_ids(), [alert.alert_id.as_str()]);
    assert_eq!(flaky.requests().len(), 2);
    assert_eq!(
        deliveries(&registry, "webhook:healthy", "already_delivered"),
        1.0
    );
}

#[tokio::test]
async fn webhook_whose_secret_variable_is_unset_fails_startup_naming_it() {
    let config = config(
        "webhooks: [{name: ops, url: 'http://127.0.0.1:9/hook', \
         secret_env: SENTINEL_TEST_SECRET_THAT_IS_NEVER_SET}]",
    );
    let metrics = AlertMetrics::new(&Registry::new()).unwrap();
    let error = Dispatcher::connect(&config, metrics).await.unwrap_err();
    assert!(
        matches!(&error, AlertingError::SecretEnvMissing { webhook, variable }
            if webhook == "ops" && variable == "SENTINEL_TEST_SECRET_THAT_IS_NEVER_SET"),
        "{error}"
    );
}
