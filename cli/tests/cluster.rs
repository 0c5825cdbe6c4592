//! A cluster of real `sentinel node` processes on loopback: formation, ingestion and
//! queries, a leader killed under load, restarts, scale-out and decommission, bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use lapin::types::AMQPValue;
use sentinel_node::alerting::{ALERT_ID_HEADER, EVENT_HEADER, INCIDENT_ID_HEADER};
use sentinel_proto::v1::{
    AnomaliesRequest, BaselinesRequest, ClusterStatusReply, Consistency, DecommissionRequest,
    IngestRequest, InputEvent, LocalStatusRequest, Outcome, RaftMessage, ShardInfo,
    SourcePartition, TelemetryRequest,
};
use sentinel_testkit::process::{event, shard, Cluster};
use sentinel_testkit::{process, services};
use sentinel_testkit::{t0, wait_for};
use tonic::Code;

const CONVERGE: Duration = Duration::from_secs(90);

/// The keys the load writes to, spread over shards.
fn keys() -> Vec<(String, String)> {
    ["checkout", "search", "support", "summarize"]
        .iter()
        .zip(["gpt-4o", "claude-3-5-sonnet", "gpt-4o-mini", "llama-3-70b"])
        .map(|(s, m)| (s.to_string(), m.to_string()))
        .collect()
}

/// Batch `n` of the load: one steady event per key, `n` seconds after `start`.
fn batch(start: i64, n: usize) -> Vec<(u32, InputEvent, String)> {
    keys()
        .into_iter()
        .map(|(service, model)| {
            let id = format!("{service}-{n}");
            let latency = 800.0 + ((n * 37) % 23) as f64 * 10.0;
            (
                shard(&service, &model, 8),
                event(&service, &model, start + n as i64 * 1000, latency, &id),
                id,
            )
        })
        .collect()
}

/// Writes batches `range` of the load, retrying each until acknowledged; returns the ids.
async fn write(cluster: &Cluster, range: std::ops::Range<usize>) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    let start = cluster.t0;
    for n in range {
        let mut per_shard: BTreeMap<u32, Vec<(InputEvent, String)>> = BTreeMap::new();
        for (shard, event, id) in batch(start, n) {
            per_shard.entry(shard).or_default().push((event, id));
        }
        for (shard, events) in per_shard {
            let inputs: Vec<InputEvent> = events.iter().map(|(e, _)| e.clone()).collect();
            let reply = wait_for(CONVERGE, async || {
                cluster.ingest(shard, inputs.clone()).await.ok()
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "batch {n} of shard {shard} never acknowledged\n{}",
                    cluster.logs()
                )
            });
            for (result, (_, id)) in reply.results.iter().zip(&events) {
                assert!(
                    result.outcome == Outcome::Applied as i32
                        || result.outcome == Outcome::DuplicateEventId as i32,
                    "event {id}: {result:?}"
                );
                acked.insert(id.clone());
            }
        }
    }
    acked
}

/// Every stored event id of every load key, read from the shard leaders; panics on a duplicate.
async fn stored_ids(cluster: &Cluster, status: &ClusterStatusReply) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for (service, model) in keys() {
        let shard = shard(&service, &model, 8);
        let leader = status.shards[shard as usize].leader.expect("a leader");
        let mut client = cluster.client(leader).await;
        let mut cursor = String::new();
        loop {
            let page = client
                .telemetry(TelemetryRequest {
                    shard,
                    service: service.clone(),
                    model: model.clone(),
                    cursor: cursor.clone(),
                    limit: 500,
                    ..Default::default()
                })
                .await
                .expect("telemetry query")
                .into_inner();
            for record in &page.records {
                let record: serde_json::Value = serde_json::from_str(record).expect("record JSON");
                let id = record["event"]["event_id"]
                    .as_str()
                    .expect("event id")
                    .to_owned();
                assert!(ids.insert(id.clone()), "event {id} applied twice");
            }
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
    }
    ids
}

/// Waits until every replica of every shard reports the same digest.
async fn assert_replicas_agree(cluster: &Cluster) -> BTreeMap<u32, String> {
    process::assert_replicas_agree(cluster, CONVERGE).await
}

/// The cap a call's latency must exceed to open an incident on its own, in the tests
/// whose keys have too few calls for the tail-share evidence (it needs 200).
const LATENCY_CAP: (&str, &str) = ("SENTINEL_DETECTION__INCIDENTS__LATENCY_CAP_MS", "30000");

/// `(name, value)` pairs as the environment of a cluster.
fn variables(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_detect_anomalies_and_agree() {
    let cluster = Cluster::start_with(3, 8, 3, variables(&[LATENCY_CAP]));
    let status = cluster.wait_converged(CONVERGE).await;
    let leaders: BTreeSet<Option<u64>> = status.shards.iter().map(|s| s.leader).collect();
    assert_eq!(
        leaders.len(),
        3,
        "leaders spread over every node: {status:#?}"
    );

    let acked = write(&cluster, 0..60).await;
    let (service, model) = ("checkout", "gpt-4o");
    let spike_shard = shard(service, model, 8);
    let spike = cluster
        .ingest(
            spike_shard,
            vec![event(
                service,
                model,
                cluster.t0 + 61_000,
                40_000.0,
                "checkout-spike",
            )],
        )
        .await
        .expect("spike ingested");
    assert_eq!(spike.results[0].outcome, Outcome::Applied as i32);
    assert_eq!(
        spike.alerts_raised, 1,
        "a call over the latency cap opens an incident: one notification queued"
    );

    let status = cluster.status(false).await.expect("status");
    let leader = status.shards[spike_shard as usize]
        .leader
        .expect("a leader");
    let mut client = cluster.client(leader).await;
    let anomalies = client
        .anomalies(AnomaliesRequest {
            shard: spike_shard,
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("anomalies")
        .into_inner();
    let alert: serde_json::Value = anomalies
        .alerts
        .iter()
        .map(|a| serde_json::from_str::<serde_json::Value>(a).expect("alert JSON"))
        .find(|a| a["anomaly_type"] == "latency_spike")
        .unwrap_or_else(|| panic!("a latency spike among {:?}", anomalies.alerts));
    assert_eq!(alert["service_name"], service);
    assert_eq!(alert["details"]["metric"], "latency_ms");
    assert!(
        alert["incident_id"].is_string(),
        "the point anomaly links the incident it opened: {alert}"
    );

    let follower = status.shards[spike_shard as usize]
        .replicas
        .iter()
        .map(|r| r.node)
        .find(|&n| n != leader)
        .expect("a follower");
    let baselines = wait_for(CONVERGE, async || {
        let reply = cluster
            .client(follower)
            .await
            .baselines(BaselinesRequest {
                shard: spike_shard,
                service: service.into(),
                model: model.into(),
                consistency: Consistency::StaleOk as i32,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        let baseline: serde_json::Value = serde_json::from_str(reply.baselines.first()?).ok()?;
        (baseline["events"] == 61).then_some(baseline)
    })
    .await;
    assert!(
        baselines.is_some(),
        "a follower serves the baseline of 61 events"
    );

    assert_eq!(stored_ids(&cluster, &status).await.len(), acked.len() + 1);
    assert_replicas_agree(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_leader_loses_nothing_and_applies_nothing_twice() {
    // A hold long enough to see the cluster with the victim back, before it takes its
    // leaderships back.
    let hold = variables(&[("SENTINEL_RAFT__LEADER_HOLD_MS", "3000")]);
    let mut cluster = Cluster::start_with(3, 8, 3, hold);
    let status = cluster.wait_converged(CONVERGE).await;
    let mut acked = write(&cluster, 0..20).await;
    let (service, model) = &keys()[0];
    let victim = status.shards[shard(service, model, 8) as usize]
        .leader
        .expect("a leader");

    let pid = cluster.pid(victim);
    let (more, ()) = tokio::join!(write(&cluster, 20..80), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        process::sigkill(pid);
    });
    acked.extend(more);
    cluster.kill(victim);
    acked.extend(write(&cluster, 80..120).await);

    let status = leaders_without(&cluster, victim).await;
    let stored = stored_ids(&cluster, &status).await;
    assert_eq!(
        stored, acked,
        "exactly the acknowledged events are stored, once each"
    );

    cluster.spawn(victim);
    let back = wait_for(CONVERGE, async || {
        let status = cluster.status(false).await?;
        let caught_up =
            |s: &ShardInfo| s.replicas.len() == 3 && s.replicas.iter().all(|r| r.lag == 0);
        status.shards.iter().all(caught_up).then_some(status)
    })
    .await
    .expect("the victim's replicas catch up");
    let settled = cluster.wait_converged(CONVERGE).await;
    for (before, after) in back.shards.iter().zip(&settled.shards) {
        assert_eq!(
            after.term - before.term,
            u64::from(after.leader != before.leader),
            "shard {}: leadership {:?} -> {:?} took terms {} -> {}: one election per hand-over",
            after.shard,
            before.leader,
            after.leader,
            before.term,
            after.term
        );
    }
    assert_replicas_agree(&cluster).await;
}

/// The cluster status once every shard has a leader other than the killed `victim`.
async fn leaders_without(cluster: &Cluster, victim: u64) -> ClusterStatusReply {
    wait_for(CONVERGE, async || {
        let status = cluster.status(false).await?;
        status
            .shards
            .iter()
            .all(|s| s.leader.is_some_and(|l| l != victim))
            .then_some(status)
    })
    .await
    .expect("every shard has a live leader")
}

/// One notification as a webhook or RabbitMQ received it.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    /// The body.
    body: serde_json::Value,
    /// `X-Sentinel-Alert-Id`, or the AMQP `message_id`.
    alert_id: String,
    /// `X-Sentinel-Incident-Id`, or the AMQP header `incident_id`.
    incident_id: String,
    /// `X-Sentinel-Event`, or the AMQP header `event`.
    event: String,
}

impl Received {
    /// Checks that the headers say what the body says.
    fn assert_headers_match_the_body(&self) {
        let body = &self.body;
        assert_eq!(body["schema_version"], 2, "{body}");
        assert_eq!(body["alert_id"], self.alert_id.as_str(), "{body}");
        assert_eq!(body["incident_id"], self.incident_id.as_str(), "{body}");
        assert_eq!(
            body["incident"]["incident_id"],
            self.incident_id.as_str(),
            "{body}"
        );
        assert_eq!(body["event"], self.event.as_str(), "{body}");
    }

    /// The (service, model) key the notification is about.
    fn key(&self) -> (String, String) {
        let text = |field: &str| self.body[field].as_str().unwrap_or_default().to_owned();
        (text("service_name"), text("model"))
    }
}

/// The requests `hook` accepted (2xx) with a valid signature, as notifications.
fn accepted_notifications(hook: &services::WebhookReceiver) -> Vec<Received> {
    hook.requests()
        .iter()
        .filter(|r| r.status.is_success() && r.signature_valid)
        .map(|r| {
            let header = |name: &str| r.header(name).unwrap_or_default().to_owned();
            Received {
                body: serde_json::from_slice(&r.body).expect("notification JSON"),
                alert_id: header(ALERT_ID_HEADER),
                incident_id: header(INCIDENT_ID_HEADER),
                event: header(EVENT_HEADER),
            }
        })
        .collect()
}

/// The next message on `queue`, as a notification; checks the message's properties.
async fn next_published(queue: &mut services::AlertQueue) -> Received {
    let message = queue.next().await;
    let properties = &message.properties;
    assert_eq!(properties.delivery_mode(), &Some(2), "persistent");
    let header = |name: &str| {
        properties
            .headers()
            .as_ref()
            .and_then(|headers| match headers.inner().get(name) {
                Some(AMQPValue::LongString(value)) => Some(value.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let body: serde_json::Value = serde_json::from_slice(&message.data).expect("notification JSON");
    assert_eq!(
        message.routing_key.as_str(),
        format!(
            "alert.{}.{}",
            body["severity"].as_str().unwrap_or_default(),
            body["anomaly_type"].as_str().unwrap_or_default()
        ),
        "routed by severity and type"
    );
    Received {
        alert_id: properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .unwrap_or_default(),
        incident_id: header("incident_id"),
        event: header("event"),
        body,
    }
}

/// The distinct notifications (by `alert_id`) among `received` that are about `keys`.
fn distinct_of<'a>(
    received: impl IntoIterator<Item = &'a Received>,
    keys: &[(String, String)],
) -> BTreeMap<String, Received> {
    received
        .into_iter()
        .filter(|r| keys.contains(&r.key()))
        .map(|r| (r.alert_id.clone(), r.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_left_undelivered_by_a_killed_leader_are_delivered_by_the_next() {
    services::ensure_rabbitmq();
    let mut queue = services::AlertQueue::bind(services::RABBITMQ_URL).await;
    let hook = services::WebhookReceiver::start(
        b"hook-secret",
        services::Replies::AlwaysFail(axum::http::StatusCode::SERVICE_UNAVAILABLE),
    )
    .await;
    let mut env = variables(&[
        LATENCY_CAP,
        ("SENTINEL_ALERTING__RETRY__INITIAL_BACKOFF_MS", "20"),
        ("SENTINEL_ALERTING__BREAKER__OPEN_MS", "200"),
    ]);
    env.extend(hook.node_env());
    env.push(services::rabbitmq_env());
    let mut cluster = Cluster::start_with(3, 8, 3, env);
    let status = cluster.wait_converged(CONVERGE).await;
    write(&cluster, 0..40).await;
    for (service, model) in keys() {
        let spike = event(
            &service,
            &model,
            cluster.t0 + 41_000,
            60_000.0,
            &format!("{service}-spike"),
        );
        let reply = cluster
            .ingest(shard(&service, &model, 8), vec![spike])
            .await
            .expect("spike ingested");
        assert_eq!(
            reply.alerts_raised, 1,
            "a 60 s call opens an incident on {service}/{model}"
        );
    }
    let (service, model) = &keys()[0];
    let victim = status.shards[shard(service, model, 8) as usize]
        .leader
        .expect("a leader");
    cluster.kill(victim);
    hook.set_replies(services::Replies::Accept);
    write(&cluster, 41..60).await;

    // One `opened` notification per key reaches the webhook, the killed leader's included.
    let keys = keys();
    let delivered = wait_for(CONVERGE, async || {
        let accepted = accepted_notifications(&hook);
        let distinct = distinct_of(&accepted, &keys);
        let per_key: BTreeSet<(String, String)> = distinct.values().map(Received::key).collect();
        (per_key.len() == keys.len()).then_some(distinct)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "webhook got {:?}\n{}",
            accepted_notifications(&hook),
            cluster.logs()
        )
    });
    assert!(
        hook.requests().iter().all(|r| r.signature_valid),
        "every request signed"
    );
    assert_eq!(
        delivered.len(),
        keys.len(),
        "one notification per key: {delivered:?}"
    );
    for notification in delivered.values() {
        notification.assert_headers_match_the_body();
        assert_eq!(notification.event, "opened");
        assert_eq!(notification.body["anomaly_type"], "latency_spike");
        assert_eq!(notification.body["detection_method"], "latency_cap");
    }

    // RabbitMQ gets the same notifications (repeats of a redelivery carry the same id).
    let mut published = BTreeMap::new();
    while published.len() < delivered.len() {
        let message = next_published(&mut queue).await;
        if keys.contains(&message.key()) {
            message.assert_headers_match_the_body();
            published.insert(message.alert_id.clone(), message);
        }
    }
    assert_eq!(
        published.keys().collect::<Vec<_>>(),
        delivered.keys().collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_opens_and_resolves_with_one_notification_each_on_every_sink() {
    services::ensure_rabbitmq();
    let mut queue = services::AlertQueue::bind(services::RABBITMQ_URL).await;
    let hook = services::WebhookReceiver::start(b"hook-secret", services::Replies::Accept).await;
    let mut env = variables(&[
        LATENCY_CAP,
        ("SENTINEL_DETECTION__INCIDENTS__RESOLVE_AFTER_MS", "2000"),
        ("SENTINEL_DETECTION__INCIDENTS__RESOLVE_MIN_CALLS", "3"),
    ]);
    env.extend(hook.node_env());
    env.push(services::rabbitmq_env());
    let cluster = Cluster::start_with(3, 4, 3, env);
    cluster.wait_converged(CONVERGE).await;
    let key = ("billing".to_owned(), "gpt-4o-mini".to_owned());
    let home = shard(&key.0, &key.1, 4);
    let calls = |from: i64, latencies: &[f64]| -> Vec<InputEvent> {
        latencies
            .iter()
            .enumerate()
            .map(|(i, &latency)| {
                let n = from + i as i64;
                event(
                    &key.0,
                    &key.1,
                    cluster.t0 + n * 1000,
                    latency,
                    &format!("billing-{n}"),
                )
            })
            .collect()
    };
    let ingest = async |events: Vec<InputEvent>| {
        let reply = wait_for(CONVERGE, async || {
            cluster.ingest(home, events.clone()).await.ok()
        })
        .await
        .expect("calls ingested");
        assert!(
            reply
                .results
                .iter()
                .all(|r| r.outcome == Outcome::Applied as i32),
            "{reply:?}"
        );
        reply.alerts_raised
    };

    assert_eq!(ingest(calls(0, &[800.0; 20])).await, 0, "steady calls");
    assert_eq!(
        ingest(calls(20, &[60_000.0])).await,
        1,
        "a call over the cap opens an incident"
    );
    let wanted = std::slice::from_ref(&key);
    let opened = wait_for(CONVERGE, async || {
        distinct_of(&accepted_notifications(&hook), wanted)
            .into_values()
            .next()
    })
    .await
    .unwrap_or_else(|| panic!("no opened notification\n{}", cluster.logs()));
    opened.assert_headers_match_the_body();
    assert_eq!(opened.event, "opened");
    assert_eq!(opened.body["incident"]["status"], "open");
    let incident_id = opened.incident_id.clone();

    let open_gauge = wait_for(CONVERGE, async || {
        (incidents_open(&cluster, home).await == 1.0).then_some(())
    })
    .await;
    assert!(
        open_gauge.is_some(),
        "sentinel_incidents_open shows the incident at the leader"
    );

    // Quiet calls, event time moving on past resolve_after_ms: the incident resolves.
    assert_eq!(
        ingest(calls(21, &[800.0; 4])).await,
        1,
        "quiet calls 2 s after the spike resolve it"
    );
    let notifications = wait_for(CONVERGE, async || {
        let distinct = distinct_of(&accepted_notifications(&hook), wanted);
        (distinct.len() == 2).then_some(distinct)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "webhook got {:?}\n{}",
            accepted_notifications(&hook),
            cluster.logs()
        )
    });
    let resolved = notifications
        .values()
        .find(|n| n.event == "resolved")
        .unwrap_or_else(|| panic!("a resolved notification among {notifications:?}"));
    resolved.assert_headers_match_the_body();
    assert_eq!(resolved.incident_id, incident_id, "the same incident");
    assert_eq!(resolved.body["incident"]["status"], "resolved");
    assert_eq!(resolved.body["incident"]["resolution"], "recovered");
    assert!(hook.requests().iter().all(|r| r.signature_valid));

    let mut published = BTreeMap::new();
    while published.len() < 2 {
        let message = next_published(&mut queue).await;
        if message.key() == key {
            message.assert_headers_match_the_body();
            published.insert(message.alert_id.clone(), message);
        }
    }
    let events: BTreeMap<String, String> = published
        .values()
        .map(|m| (m.alert_id.clone(), m.event.clone()))
        .collect();
    let expected: BTreeMap<String, String> = notifications
        .values()
        .map(|n| (n.alert_id.clone(), n.event.clone()))
        .collect();
    assert_eq!(events, expected, "RabbitMQ got what the webhook got");
    assert!(published.values().all(|m| m.incident_id == incident_id));

    let closed = wait_for(CONVERGE, async || {
        (incidents_open(&cluster, home).await == 0.0).then_some(())
    })
    .await;
    assert!(closed.is_some(), "sentinel_incidents_open drops back to 0");
    assert!(notifications_delivered(&cluster, "opened").await >= 1.0);
    assert!(notifications_delivered(&cluster, "resolved").await >= 1.0);
}

/// `sentinel_notifications_delivered_total` of `event` summed over the running nodes.
async fn notifications_delivered(cluster: &Cluster, event: &str) -> f64 {
    let label = format!("event=\"{event}\"");
    node_metrics(cluster)
        .await
        .iter()
        .filter_map(|text| metric_value(text, "sentinel_notifications_delivered_total", &label))
        .sum()
}

/// The `/metrics` text of every running node.
async fn node_metrics(cluster: &Cluster) -> Vec<String> {
    let mut texts = Vec::new();
    for id in cluster.live() {
        let url = format!("http://{}/metrics", cluster.nodes[&id].http);
        if let Ok(response) = reqwest::get(url).await {
            texts.push(response.text().await.unwrap_or_default());
        }
    }
    texts
}

/// The value of the series of `name` whose labels include `label` in a `/metrics` text.
fn metric_value(text: &str, name: &str, label: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// `sentinel_incidents_open` of `shard` summed over the running nodes (only its leader has it).
async fn incidents_open(cluster: &Cluster, shard: u32) -> f64 {
    node_metrics(cluster)
        .await
        .iter()
        .filter_map(|text| {
            metric_value(
                text,
                "sentinel_incidents_open",
                &format!("shard=\"{shard}\""),
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_export_resumes_after_a_leader_kill_and_loses_nothing() {
    let influx = services::VictoriaMetrics::start().await;
    let env = vec![
        ("INFLUX_TOKEN".to_owned(), "test-token".to_owned()),
        (
            "SENTINEL_EXPORT".to_owned(),
            format!(
                "{{url: '{}', org: sentinel, bucket: llm, token_env: INFLUX_TOKEN}}",
                influx.url
            ),
        ),
    ];
    let mut cluster = Cluster::start_with(3, 8, 3, env);
    let status = cluster.wait_converged(CONVERGE).await;
    let mut acked = write(&cluster, 0..30).await;
    let (service, model) = &keys()[0];
    let victim = status.shards[shard(service, model, 8) as usize]
        .leader
        .expect("a leader");
    cluster.kill(victim);
    acked.extend(write(&cluster, 30..60).await);

    let expected: BTreeSet<(String, i64)> = keys()
        .into_iter()
        .flat_map(|(service, _)| (0..60).map(move |n| (service.clone(), cluster.t0 + n * 1000)))
        .collect();
    assert_eq!(expected.len(), acked.len());
    let mut seen = BTreeSet::new();
    let exported = wait_for(CONVERGE, async || {
        seen = influx
            .series("llm_telemetry_latency_ms")
            .await
            .into_iter()
            .flat_map(|series| {
                let service = series.metric.get("service").cloned().unwrap_or_default();
                series
                    .timestamps
                    .into_iter()
                    .map(move |t| (service.clone(), t))
            })
            .collect();
        (seen == expected).then_some(())
    })
    .await;
    assert!(
        exported.is_some(),
        "exported {} of {} points; missing {:?}\n{}",
        seen.len(),
        expected.len(),
        expected.difference(&seen).take(5).collect::<Vec<_>>(),
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_node_keeps_the_same_state() {
    let mut cluster = Cluster::start(3, 8, 3);
    cluster.wait_converged(CONVERGE).await;
    write(&cluster, 0..30).await;
    let before = assert_replicas_agree(&cluster).await;
    for id in [0, 1, 2] {
        assert!(
            cluster.terminate(id).success(),
            "node {id} exits cleanly on SIGTERM\n{}",
            cluster.log(id)
        );
    }
    for id in [0, 1, 2] {
        cluster.spawn(id);
    }
    cluster.wait_converged(CONVERGE).await;
    assert_eq!(assert_replicas_agree(&cluster).await, before);
    let acked = write(&cluster, 30..40).await;
    assert_eq!(acked.len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_then_decommission_under_load() {
    let mut cluster = Cluster::start(3, 8, 3);
    let before = cluster.wait_converged(CONVERGE).await;
    let mut acked = write(&cluster, 0..10).await;
    cluster.add(3);
    acked.extend(write(&cluster, 10..60).await);
    let status = cluster.wait_converged(CONVERGE).await;
    assert!(
        status.shards.iter().any(|s| s.desired.contains(&3)),
        "the new node holds shards"
    );
    let (shard, node) = status
        .shards
        .iter()
        .find_map(|s| {
            let gone = before.shards[s.shard as usize]
                .desired
                .iter()
                .find(|n| !s.desired.contains(n))?;
            Some((s.shard, *gone))
        })
        .expect("a replica moved to the new node");
    a_dropped_replica_opened_again_votes_as_if_it_kept_its_log(&cluster, shard, node).await;

    let mut client = cluster.client(0).await;
    client
        .decommission(DecommissionRequest { node_id: 1 })
        .await
        .expect("decommission starts");
    acked.extend(write(&cluster, 60..100).await);
    let drained = wait_for(CONVERGE, async || {
        let reply = client
            .decommission(DecommissionRequest { node_id: 1 })
            .await;
        match reply {
            Err(status) if status.code() == Code::NotFound => Some(()),
            _ => None,
        }
    })
    .await;
    if drained.is_none() {
        let status = cluster.status(false).await.map(|s| process::summary(&s));
        panic!(
            "node 1 not drained: {}\n{}",
            status.unwrap_or_default(),
            cluster.logs()
        );
    }
    cluster.terminate(1);
    let status = cluster.wait_converged(CONVERGE).await;
    assert!(status.shards.iter().all(|s| !s.desired.contains(&1)));
    assert_eq!(stored_ids(&cluster, &status).await, acked);
    assert_replicas_agree(&cluster).await;

    // Started again on its data directory, the decommissioned node is refused and stops
    // instead of registering as an active node again.
    cluster.spawn(1);
    let exited = wait_for(CONVERGE, async || cluster.exited(1)).await;
    let log = cluster.log(1);
    let exit = exited.unwrap_or_else(|| panic!("node 1 still runs\n{log}"));
    assert!(!exit.success(), "{exit:?}\n{log}");
    assert!(log.contains("was decommissioned"), "{log}");
    let status = cluster.wait_converged(CONVERGE).await;
    assert!(
        status.nodes.iter().all(|n| n.id != 1),
        "{}",
        process::summary(&status)
    );
    assert!(status.shards.iter().all(|s| !s.desired.contains(&1)));
}

/// Node `node` held a replica of `shard` that moved away: once it is dropped, a vote
/// request does not open it again; opened again (by an append, here a stale one), it
/// refuses a candidate whose log is behind the log it dropped and passes any other to
/// Raft. Every message is of term 0 or 1, older than any vote the replica kept, so
/// nothing it sends changes the replica's state.
async fn a_dropped_replica_opened_again_votes_as_if_it_kept_its_log(
    cluster: &Cluster,
    shard: u32,
    node: u64,
) {
    let dropped = async || {
        let mut client = cluster.client(node).await;
        let reply = client.local_status(LocalStatusRequest { digests: false });
        let replicas = reply.await.ok()?.into_inner().replicas;
        replicas.iter().all(|r| r.group != shard).then_some(())
    };
    wait_for(CONVERGE, dropped)
        .await
        .unwrap_or_else(|| panic!("node {node} keeps its replica of shard {shard}"));
    let mut raft = cluster.raft_client(node);
    let message = |from: u64, payload: serde_json::Value| RaftMessage {
        group: shard,
        from,
        payload: rmp_vote(&payload),
        to: None,
    };
    let vote = |candidate: u64, last_log_id: serde_json::Value| {
        let vote =
            serde_json::json!({"leader_id": {"term": 1, "node_id": candidate}, "committed": false});
        message(
            candidate,
            serde_json::json!({"vote": vote, "last_log_id": last_log_id}),
        )
    };
    let unopened = raft
        .vote(vote(8, serde_json::Value::Null))
        .await
        .unwrap_err();
    assert_eq!(unopened.code(), Code::FailedPrecondition, "{unopened:?}");
    assert!(unopened.message().contains("no replica"), "{unopened:?}");
    let stale = serde_json::json!({"leader_id": {"term": 0, "node_id": 7}, "committed": true});
    let append = serde_json::json!({"vote": stale, "prev_log_id": null, "entries": [], "leader_commit": null});
    raft.append_entries(message(7, append))
        .await
        .expect("an append opens the replica");
    let behind = raft
        .vote(vote(8, serde_json::Value::Null))
        .await
        .unwrap_err();
    assert_eq!(behind.code(), Code::FailedPrecondition, "{behind:?}");
    assert!(behind.message().contains("behind the log"), "{behind:?}");
    let longer =
        serde_json::json!({"leader_id": {"term": 1_000, "node_id": 9}, "index": 1_000_000});
    raft.vote(vote(9, longer))
        .await
        .expect("a candidate with a log as long is answered by Raft");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_directory_rejoins_as_a_new_member() {
    let mut cluster = Cluster::start(3, 8, 3);
    cluster.wait_converged(CONVERGE).await;
    let mut acked = write(&cluster, 0..20).await;
    cluster.kill(2);
    std::fs::remove_dir_all(cluster.data_dir(2)).expect("data directory removed");
    cluster.spawn(2);
    acked.extend(write(&cluster, 20..40).await);
    let status = cluster.wait_converged(CONVERGE).await;
    let members: Vec<(u64, u64)> = status.nodes.iter().map(|n| (n.id, n.ordinal)).collect();
    assert_eq!(
        members,
        vec![(0, 0), (1, 1), (1002, 2)],
        "{}",
        process::summary(&status)
    );
    assert!(
        status.shards.iter().any(|s| s.desired.contains(&1002)),
        "the new member holds shards"
    );
    assert_eq!(stored_ids(&cluster, &status).await, acked);
    assert_replicas_agree(&cluster).await;
    let identity: serde_json::Value = serde_json::from_slice(
        &std::fs::read(cluster.data_dir(2).join("identity.json")).expect("identity recorded"),
    )
    .expect("identity JSON");
    assert_eq!(identity["member"], 1002);
    assert_eq!(identity["ordinal"], 2);
    // Raft messages for the lost member (or any other, member 0 included) are refused
    // where they land.
    for (node, to) in [(2, 2), (1, 0)] {
        let refused = cluster
            .raft_client(node)
            .vote(RaftMessage {
                group: 0,
                from: 7,
                payload: Vec::new(),
                to: Some(to),
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_unreachable_past_the_down_time_is_replaced_and_takes_shards_again_when_back() {
    let mut cluster = Cluster::start_with(
        4,
        8,
        3,
        variables(&[("SENTINEL_CLUSTER__NODE_DOWN_AFTER_S", "2")]),
    );
    cluster.wait_converged(CONVERGE).await;
    let mut acked = write(&cluster, 0..10).await;
    cluster.kill(3);
    // The metadata leader marks it down; every shard regains three voters on the others.
    let mut last = String::new();
    let replaced = wait_for(CONVERGE, async || {
        let status = cluster.status(false).await?;
        last = process::summary(&status);
        let down = status.nodes.iter().any(|n| n.id == 3 && n.state == "down");
        let moved = status.shards.iter().all(|s| {
            s.leader.is_some()
                && !s.desired.contains(&3)
                && s.replicas.len() == 3
                && s.replicas.iter().all(|r| r.node != 3 && r.role == "voter")
        });
        (down && moved).then_some(status)
    })
    .await;
    assert!(
        replaced.is_some(),
        "node 3 not replaced: {last}\n{}",
        cluster.logs()
    );
    acked.extend(write(&cluster, 10..20).await);
    cluster.spawn(3);
    let status = cluster.wait_converged(CONVERGE).await;
    assert!(
        status.shards.iter().any(|s| s.desired.contains(&3)),
        "node 3 takes shards again: {}",
        process::summary(&status)
    );
    assert_eq!(stored_ids(&cluster, &status).await, acked);
    assert_replicas_agree(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let cluster = Cluster::start_with(
        1,
        4,
        1,
        vec![("SENTINEL_INGEST__MAX_MODELS_PER_SERVICE".into(), "2".into())],
    );
    cluster.wait_converged(CONVERGE).await;
    let mut client = cluster.client(0).await;

    let unknown = client
        .ingest(IngestRequest {
            shard: 99,
            source: None,
            events: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("shard"), "{unknown:?}");

    let oversize = client
        .ingest(IngestRequest {
            shard: 0,
            source: None,
            events: vec![
                InputEvent {
                    offset: None,
                    event: b"{}".to_vec()
                };
                10_001
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(oversize.code(), Code::InvalidArgument);
    assert!(oversize.message().contains("10001"), "{oversize:?}");

    let no_offsets = client
        .ingest(IngestRequest {
            shard: 0,
            source: Some(SourcePartition {
                topic: String::new(),
                partition: -1,
            }),
            events: vec![InputEvent {
                offset: None,
                event: b"{}".to_vec(),
            }],
        })
        .await
        .unwrap_err();
    for field in ["source.topic", "source.partition", "events[0].offset"] {
        assert!(
            no_offsets.message().contains(field),
            "{field} named: {no_offsets:?}"
        );
    }

    let (service, model) = ("chat", "gpt-4o");
    let home = shard(service, model, 4);
    let t0 = t0();
    let mut out_of_bounds = event(service, model, t0, 100.0, "negative");
    let mut negative: sentinel_core::Event =
        sentinel_core::codec::decode(&out_of_bounds.event).expect("an event");
    negative.latency_ms = -5.0;
    out_of_bounds.event = sentinel_core::codec::encode(&negative);
    let reply = client
        .ingest(IngestRequest {
            shard: home,
            source: None,
            events: vec![
                InputEvent {
                    offset: None,
                    event: b"not json".to_vec(),
                },
                out_of_bounds,
                event(service, model, t0, 100.0, "good-1"),
                event(service, model, t0, 100.0, "good-1"),
                event("other", "model", t0, 100.0, "elsewhere"),
            ],
        })
        .await
        .expect("per-event answers")
        .into_inner();
    let outcomes: Vec<i32> = reply.results.iter().map(|r| r.outcome).collect();
    let wrong_shard = if shard("other", "model", 4) == home {
        Outcome::Applied
    } else {
        Outcome::Rejected
    };
    assert_eq!(
        outcomes,
        vec![
            Outcome::Rejected as i32,
            Outcome::Rejected as i32,
            Outcome::Applied as i32,
            Outcome::DuplicateEventId as i32,
            wrong_shard as i32,
        ]
    );
    assert!(
        reply.results[1]
            .errors
            .iter()
            .any(|e| e.field == "latency_ms"),
        "{:?}",
        reply.results[1]
    );

    let bad_severity = client
        .anomalies(AnomaliesRequest {
            shard: home,
            severity: "urgent".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_severity.code(), Code::InvalidArgument);
    let bad_cursor = client
        .telemetry(TelemetryRequest {
            shard: home,
            cursor: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_cursor.code(), Code::InvalidArgument);

    let mut raft = cluster.raft_client(0);
    let garbage = raft
        .append_entries(RaftMessage {
            group: 0,
            from: 7,
            payload: b"\xc1garbage".to_vec(),
            to: None,
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    // A message for another member (one whose data directory this address once held)
    // is refused before it reaches a Raft group.
    let elsewhere = raft
        .vote(RaftMessage {
            group: 0,
            from: 7,
            payload: Vec::new(),
            to: Some(1000),
        })
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::FailedPrecondition, "{elsewhere:?}");
    let stale_vote = serde_json::json!({"vote": {"leader_id": {"term": 0, "node_id": 7}, "committed": false}, "last_log_id": null});
    let stale = raft
        .vote(RaftMessage {
            group: 0,
            from: 7,
            payload: rmp_vote(&stale_vote),
            to: None,
        })
        .await;
    assert!(stale.is_ok() || stale.unwrap_err().code() == Code::InvalidArgument);

    let again = cluster
        .ingest(
            home,
            vec![event(service, model, t0 + 1000, 100.0, "good-2")],
        )
        .await
        .expect("still serving");
    assert_eq!(again.results[0].outcome, Outcome::Applied as i32);

    // A third model of one service in one shard is beyond ingest.max_models_per_service.
    let models: Vec<String> = (0..)
        .map(|i| format!("model-{i}"))
        .filter(|m| shard("limited", m, 4) == home)
        .take(3)
        .collect();
    let limited: Vec<InputEvent> = models
        .iter()
        .chain(&models[..1])
        .enumerate()
        .map(|(i, m)| event("limited", m, t0, 100.0, &format!("limited-{i}")))
        .collect();
    let reply = cluster
        .ingest(home, limited)
        .await
        .expect("per-event answers");
    let outcomes: Vec<i32> = reply.results.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied as i32,
            Outcome::Applied as i32,
            Outcome::Rejected as i32,
            Outcome::Applied as i32,
        ]
    );
    let refusal = &reply.results[2].errors[0];
    assert_eq!(refusal.field, "model");
    assert!(
        refusal.problem.contains("ingest.max_models_per_service"),
        "{refusal:?}"
    );

    let metrics = reqwest::get(format!("http://{}/metrics", cluster.nodes[&0].http))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let count = |method: &str, code: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("sentinel_grpc_requests_total{")
                    && l.contains(&format!("method=\"{method}\""))
                    && l.contains(&format!("code=\"{code}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(count("Ingest", "InvalidArgument"), Some(3), "{metrics}");
    assert_eq!(count("Anomalies", "InvalidArgument"), Some(1));
    assert_eq!(count("Telemetry", "InvalidArgument"), Some(1));
    assert_eq!(count("AppendEntries", "InvalidArgument"), Some(1));
    assert!(count("Ingest", "Ok").is_some_and(|n| n >= 2));
    assert!(
        metrics.contains("sentinel_key_limit_refusals_total{limit=\"models_per_service\"} 1"),
        "{metrics}"
    );
    // The node's storage, data volume and process figures.
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse::<f64>().ok())
    };
    for name in [
        "sentinel_data_volume_size_bytes",
        "sentinel_data_volume_available_bytes",
        "sentinel_rocksdb_memtable_bytes",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
    ] {
        assert!(value(name).is_some_and(|v| v > 0.0), "{name} in {metrics}");
    }
    assert_eq!(value("sentinel_rocksdb_write_stopped"), Some(0.0));
    assert_eq!(
        value("sentinel_rocksdb_delayed_write_rate_bytes"),
        Some(0.0)
    );
    assert!(value("sentinel_snapshot_bytes_sent_total").is_some());
}

/// A stale vote request (term 0) as MessagePack.
fn rmp_vote(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encodes")
}

/// Prometheus, loaded with the chart's alert rules and scraping a real cluster, evaluates
/// every rule without error and fires `SentinelNodeDown` for a node killed with SIGKILL
/// (after the rule's minute), and for no other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_with_the_alert_rules_fires_node_down_for_a_killed_node() {
    let mut cluster = Cluster::start(3, 4, 3);
    cluster.wait_converged(CONVERGE).await;
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/sentinel/files/alerts.yaml");
    let nodes: Vec<String> = cluster.nodes.values().map(|n| n.http.clone()).collect();
    let prometheus =
        services::Prometheus::start(&[("sentinel-node", nodes.clone())], &[&rules]).await;

    let rules_healthy = wait_for(Duration::from_secs(30), async || {
        let groups = prometheus.api("/api/v1/rules", &[]).await["groups"].clone();
        let rules: Vec<_> = groups
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let up = prometheus
            .api(
                "/api/v1/query",
                &[("query", "sum(up{job=\"sentinel-node\"})")],
            )
            .await;
        let all_up = up["result"][0]["value"][1] == "3";
        (all_up && !rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    })
    .await
    .expect("every target up and every rule evaluated without error");
    assert!(rules_healthy.len() >= 15, "{rules_healthy:?}");

    let killed = cluster.nodes[&2].http.clone();
    cluster.kill(2);
    let firing = wait_for(Duration::from_secs(150), async || {
        let alerts = prometheus.api("/api/v1/alerts", &[]).await["alerts"].clone();
        let down: Vec<String> = alerts
            .as_array()?
            .iter()
            .filter(|a| a["labels"]["alertname"] == "SentinelNodeDown" && a["state"] == "firing")
            .map(|a| {
                a["labels"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        (!down.is_empty()).then_some(down)
    })
    .await
    .expect("SentinelNodeDown fires");
    assert_eq!(firing, vec![killed]);
}
