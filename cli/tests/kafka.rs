//! Kafka ingestion through real processes: a Kafka-protocol broker (`tansu`, see
//! `support/kafka.rs`), `sentinel node` ×3 and `sentinel router` consuming the topics.
//! Events end up in baselines exactly once across a router kill -9 and restart and across
//! a consumer-group rebalance; poison messages land in the dead-letter topic.
//!
//! The events carry no `event_id`/`request_id`, so only the shards' per-partition offset
//! check stands between a replay and a double count.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use sentinel_router::kafka::rdkafka;
use sentinel_testkit::kafka::{produce, Broker, Reader};
use sentinel_testkit::process::{event_json, Cluster, RouterProcess};
use sentinel_testkit::wait_for;
use sentinel_testkit::{kafka, process};
use serde_json::{json, Value};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Generous bound for anything that waits on the cluster (2-core CI machines).
const PATIENCE: Duration = Duration::from_secs(90);
const SHARDS: u32 = 4;
const TOPIC: &str = "llm.telemetry";
const DLQ: &str = "llm.telemetry.dlq";
/// (service, model) pairs of the load, spread over shards.
const KEYS: [(&str, &str); 4] = [
    ("checkout", "gpt-4o"),
    ("search", "claude-3-5-sonnet"),
    ("support", "gpt-4o-mini"),
    ("summarize", "llama-3-70b"),
];

/// A flat-shape event without an id.
fn flat(service: &str, model: &str, t: i64, latency_ms: f64) -> Value {
    let mut event = event_json(service, model, t, latency_ms, "");
    event
        .as_object_mut()
        .expect("an object")
        .remove("request_id");
    event
}

/// Events produced round-robin over the keys and partitions, and how many per key.
struct Load {
    producer: FutureProducer,
    partitions: i32,
    t0: i64,
    next: usize,
    sent: BTreeMap<(String, String), u64>,
}

impl Load {
    fn new(broker: &Broker, partitions: i32, t0: i64) -> Load {
        Load {
            producer: broker.producer(),
            partitions,
            t0,
            next: 0,
            sent: BTreeMap::new(),
        }
    }

    /// Produces `n` more events.
    async fn send(&mut self, n: usize) {
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let (service, model) = KEYS[i % KEYS.len()];
            let event = flat(
                service,
                model,
                self.t0 + 50 * i as i64,
                200.0 + (i % 7) as f64,
            );
            let partition = (i / KEYS.len()) as i32 % self.partitions;
            produce(
                &self.producer,
                TOPIC,
                partition,
                service,
                event.to_string().as_bytes(),
                &[],
            )
            .await;
            *self
                .sent
                .entry((service.to_owned(), model.to_owned()))
                .or_default() += 1;
        }
    }
}

/// Events per (service, model) as the baselines count them.
async fn counts(router: &RouterProcess) -> Option<BTreeMap<(String, String), u64>> {
    let (status, answer) = router.get("/api/v1/baselines").await;
    if status != StatusCode::OK {
        return None;
    }
    Some(
        answer["baselines"]
            .as_array()?
            .iter()
            .map(|b| {
                let key = (
                    b["service_name"].as_str().unwrap_or_default().to_owned(),
                    b["model"].as_str().unwrap_or_default().to_owned(),
                );
                (key, b["events"].as_u64().unwrap_or_default())
            })
            .collect(),
    )
}

fn total(counts: &BTreeMap<(String, String), u64>) -> u64 {
    counts.values().sum()
}

/// Waits until the baselines count exactly what was sent, then checks that they stay
/// so (a late duplicate would show).
async fn assert_exactly_once(router: &RouterProcess, load: &Load) {
    let mut last = None;
    let reached = wait_for(PATIENCE, async || {
        let now = counts(router).await?;
        last = Some(now.clone());
        (now == load.sent).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "baselines never matched what was produced\nproduced {:?}\ncounted  {last:?}\n{}",
        load.sent,
        router.log()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        counts(router).await,
        Some(load.sent.clone()),
        "events were applied again later"
    );
}

/// One sample of a Prometheus text page whose name and labels start with `prefix`
/// (0 when absent).
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(prefix)?.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// A ready router in `group` consuming from `broker`, with `extra` settings.
async fn router(
    cluster: &Cluster,
    broker: &Broker,
    group: &str,
    extra: &[(&str, &str)],
) -> RouterProcess {
    let grpc = format!("127.0.0.1:{}", sentinel_testkit::free_port());
    let mut env = vec![
        ("SENTINEL_GRPC__LISTEN", grpc.as_str()),
        ("SENTINEL_KAFKA__BROKERS", broker.address.as_str()),
        ("SENTINEL_KAFKA__GROUP_ID", group),
        ("SENTINEL_KAFKA__SESSION_TIMEOUT_MS", "6000"),
        ("SENTINEL_KAFKA__STATISTICS_INTERVAL_MS", "1000"),
        ("SENTINEL_KAFKA__PROPERTIES__HEARTBEAT.INTERVAL.MS", "500"),
        ("SENTINEL_LOG__LEVEL", "info,openraft=warn,librdkafka=warn"),
    ];
    env.extend_from_slice(extra);
    cluster.router(&env).await
}

/// Waits until `router`'s metrics satisfy `check`.
async fn wait_metrics(router: &RouterProcess, what: &str, check: impl Fn(&str) -> bool) {
    let met = wait_for(PATIENCE, async || {
        let metrics = router.metrics().await;
        check(&metrics).then_some(())
    })
    .await;
    assert!(
        met.is_some(),
        "{what}\n{}\n{}",
        router.metrics().await,
        router.log()
    );
}

/// Sends SIGKILL to a router (support's `kill`, named for what the test does).
fn kill_9(router: &mut RouterProcess) {
    router.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_supports_what_the_router_needs() {
    let broker = Broker::start().await;

    // Topics: created through the admin API (the broker does not auto-create them).
    broker.create_topic("verify", 3).await.expect("created");
    assert_eq!(
        broker.create_topic("verify", 3).await,
        Err(RDKafkaErrorCode::TopicAlreadyExists)
    );

    // Produce with headers to every partition; offsets count from 0 per partition.
    let producer = broker.producer();
    for i in 0..30 {
        let offset = produce(
            &producer,
            "verify",
            i % 3,
            &format!("k{i}"),
            format!("m{i}").as_bytes(),
            &[("h", &format!("v{i}"))],
        )
        .await;
        assert_eq!(offset, i64::from(i / 3));
    }

    // Fetch in a group: everything, in offset order per partition, headers intact.
    let a = Reader::start(broker.consumer("g"), &["verify"]);
    let all = wait_for(PATIENCE, async || {
        let received = a.received();
        (received.len() >= 30).then_some(received)
    })
    .await
    .expect("consumer A read all 30 messages");
    assert_eq!(all.len(), 30);
    for partition in 0..3 {
        let offsets: Vec<i64> = all
            .iter()
            .filter(|m| m.partition == partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    }
    let m7 = all.iter().find(|m| m.payload == b"m7").expect("m7");
    assert_eq!(m7.headers["h"], "v7");
    assert_eq!(m7.key.as_deref(), Some("k7"));
    assert_eq!(a.assigned("verify"), [0, 1, 2]);

    // Offset commit and fetch.
    let mut commit = TopicPartitionList::new();
    for partition in 0..3 {
        commit
            .add_partition_offset("verify", partition, Offset::Offset(5))
            .unwrap();
    }
    a.consumer
        .commit(&commit, CommitMode::Sync)
        .expect("commit");
    let committed = a
        .consumer
        .committed_offsets(commit.clone(), Duration::from_secs(10))
        .expect("committed offsets");
    for elem in committed.elements() {
        assert_eq!(elem.offset(), Offset::Offset(5), "{elem:?}");
    }

    // A second member joins: the group rebalances and shares the partitions; the new
    // owner starts at the committed offset.
    let b = Reader::start(broker.consumer("g"), &["verify"]);
    let shared = wait_for(PATIENCE, async || {
        let (mine, theirs) = (a.assigned("verify"), b.assigned("verify"));
        let mut both = [mine.clone(), theirs.clone()].concat();
        both.sort_unstable();
        (!mine.is_empty() && !theirs.is_empty() && both == [0, 1, 2]).then_some(theirs)
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the group never shared the partitions: A {:?}, B {:?}\n{}",
            a.assigned("verify"),
            b.assigned("verify"),
            broker.log()
        )
    });
    let first = wait_for(PATIENCE, async || {
        let received = b.received();
        shared
            .iter()
            .all(|p| received.iter().any(|m| m.partition == *p))
            .then_some(received)
    })
    .await
    .expect("B read its partitions");
    for partition in &shared {
        let offsets: Vec<i64> = first
            .iter()
            .filter(|m| m.partition == *partition)
            .map(|m| m.offset)
            .collect();
        assert_eq!(
            offsets,
            (5..10).collect::<Vec<_>>(),
            "partition {partition}"
        );
    }

    // B leaves: A owns every partition again.
    b.close().await;
    let back = wait_for(PATIENCE, async || {
        (a.assigned("verify") == [0, 1, 2]).then_some(())
    })
    .await;
    assert!(back.is_some(), "A never got the partitions back");
    a.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_applied_exactly_once_across_a_router_kill_and_restart() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 3).await.expect("topic created");
    let cluster = Cluster::start(3, SHARDS, 3);
    cluster.wait_converged(PATIENCE).await;
    // Commits only on revoke and shutdown (never, with kill -9): whatever the first
    // incarnation applied is read again by the second. A tiny in-flight budget keeps
    // the consumer waiting on backpressure most of the time.
    let mut h = router(
        &cluster,
        &broker,
        "restart",
        &[
            ("SENTINEL_KAFKA__COMMIT_INTERVAL_MS", "600000"),
            ("SENTINEL_KAFKA__MAX_PENDING_MESSAGES", "16"),
            ("SENTINEL_INGEST__BATCH__MAX_IN_FLIGHT_BYTES", "2048"),
        ],
    )
    .await;
    let mut load = Load::new(&broker, 3, cluster.t0);

    load.send(150).await;
    let started = wait_for(PATIENCE, async || {
        counts(&h).await.filter(|c| total(c) >= 30).map(|_| ())
    })
    .await;
    assert!(started.is_some(), "nothing was applied\n{}", h.log());
    kill_9(&mut h);
    load.send(90).await;
    h.spawn();
    h.wait_ready().await;
    load.send(60).await;
    assert_exactly_once(&h, &load).await;

    // The second incarnation read everything again, from offset 0: the replayed part
    // was recognised as applied before.
    let metrics = h.metrics().await;
    let read = sample(
        &metrics,
        "sentinel_router_kafka_messages_total{topic=\"llm.telemetry\"}",
    );
    assert_eq!(read, 300.0, "{metrics}");
}

/// How the first of two routers goes away.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Exit {
    /// SIGTERM: it drains, commits and leaves the group.
    Terminate,
    /// SIGKILL: its partitions move once its session times out.
    Kill,
}

/// Two routers share the partitions of a 4-partition topic mid-stream, then the first
/// one (the group's leader) goes away mid-stream: every event is still applied once.
async fn two_routers_share_then_one_goes(broker: Broker, exit: Exit) {
    let cluster = Cluster::start(3, SHARDS, 3);
    cluster.wait_converged(PATIENCE).await;
    let settings = [
        ("SENTINEL_KAFKA__TOPICS", TOPIC),
        ("SENTINEL_KAFKA__COMMIT_INTERVAL_MS", "300"),
    ];
    let mut a = router(&cluster, &broker, "rebalance", &settings).await;
    let mut load = Load::new(&broker, 4, cluster.t0);
    load.send(120).await;
    let started = wait_for(PATIENCE, async || {
        counts(&a).await.filter(|c| total(c) >= 20).map(|_| ())
    })
    .await;
    assert!(started.is_some(), "nothing was applied\n{}", a.log());

    // A second router joins the group mid-stream and takes over some partitions.
    let b = router(&cluster, &broker, "rebalance", &settings).await;
    wait_metrics(&b, "the second router never got partitions", |m| {
        sample(m, "sentinel_router_kafka_rebalances_total{kind=\"assign\"}") >= 1.0
    })
    .await;
    load.send(120).await;
    wait_metrics(&b, "the second router never read a message", |m| {
        sample(
            m,
            "sentinel_router_kafka_messages_total{topic=\"llm.telemetry\"}",
        ) > 0.0
    })
    .await;
    let revoked = sample(
        &a.metrics().await,
        "sentinel_router_kafka_rebalances_total{kind=\"revoke\"}",
    );
    assert!(revoked >= 1.0, "the first router never gave partitions up");

    // The first router goes away mid-stream; the second takes every partition over and
    // reads what the first had not committed again.
    load.send(60).await;
    match exit {
        Exit::Terminate => {
            kafka::terminate(&mut a).await;
            let log = a.log();
            assert!(log.contains("Kafka consumer drained"), "{log}");
            assert!(log.contains("router stopped"), "{log}");
        }
        Exit::Kill => kill_9(&mut a),
    }
    load.send(60).await;
    assert_exactly_once(&b, &load).await;
    let metrics = b.metrics().await;
    assert!(
        sample(
            &metrics,
            "sentinel_router_kafka_commits_total{result=\"ok\"}"
        ) >= 1.0,
        "{metrics}"
    );
    for partition in 0..4 {
        let lag = format!("partition=\"{partition}\"");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("sentinel_router_kafka_consumer_lag{") && l.contains(&lag)),
            "no lag of partition {partition}\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_applied_exactly_once_across_a_rebalance_between_two_routers() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 4).await.expect("topic created");
    two_routers_share_then_one_goes(broker, Exit::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_applied_exactly_once_when_a_router_of_the_group_is_killed() {
    // tansu does not move a dead member's partitions (see support/kafka.rs).
    let broker = Broker::start_mock(&[(TOPIC, 4)]).await;
    two_routers_share_then_one_goes(broker, Exit::Kill).await;
}

/// Not a test: the mock Kafka cluster process of `Broker::start_mock`.
#[test]
#[ignore = "runs as the mock Kafka cluster process of the tests that start one"]
fn mock_kafka_cluster() {
    kafka::mock_cluster_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_go_to_the_dead_letter_topic_and_the_partition_goes_on() {
    let broker = Broker::start().await;
    broker.create_topic(TOPIC, 1).await.expect("topic created");
    // The nodes accept less latency than the router, and one model per service in a
    // shard: such events pass the router's checks and are refused by their shard.
    let cluster = Cluster::start_with(
        3,
        SHARDS,
        3,
        vec![
            (
                "SENTINEL_INGEST__VALIDATION__MAX_LATENCY_MS".into(),
                "60000".into(),
            ),
            ("SENTINEL_INGEST__MAX_MODELS_PER_SERVICE".into(), "1".into()),
        ],
    );
    cluster.wait_converged(PATIENCE).await;
    let h = router(
        &cluster,
        &broker,
        "poison",
        &[
            ("SENTINEL_KAFKA__TOPICS", TOPIC),
            ("SENTINEL_KAFKA__COMMIT_INTERVAL_MS", "200"),
        ],
    )
    .await;
    let producer = broker.producer();
    let t0 = cluster.t0;
    let good = |n: i64| flat("checkout", "gpt-4o", t0 + 1000 * n, 210.0).to_string();
    let two_spans = {
        let span = |model: &str| {
            json!({
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "name": "chat",
                "startTimeUnixNano": format!("{}", t0 as i128 * 1_000_000),
                "endTimeUnixNano": format!("{}", (t0 as i128 + 250) * 1_000_000),
                "attributes": [
                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                    {"key": "gen_ai.request.model", "value": {"stringValue": model}},
                ],
            })
        };
        json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "checkout"}}
            ]},
            "scopeSpans": [{"spans": [span("gpt-4o"), span("gpt-4o-mini")]}],
        }]})
        .to_string()
    };
    let home = process::shard("checkout", "gpt-4o", SHARDS);
    let second_model = (0..)
        .map(|i| format!("gpt-4o-{i}"))
        .find(|m| process::shard("checkout", m, SHARDS) == home)
        .expect("a model of the same shard");
    // Two calls of a burst sharing the id the original producer examples build (the
    // millisecond and four random digits): neither is poison, both are applied.
    let colliding = |latency: f64| {
        let mut event = flat("checkout", "gpt-4o", t0 + 500, latency);
        event["request_id"] = json!(format!("{t0}-4821"));
        event.to_string()
    };
    let messages: Vec<(String, Option<&str>)> = vec![
        (good(0), None),
        (colliding(230.0), None),
        (colliding(260.0), None),
        ("this is not JSON".into(), Some("not_json")),
        ("[1, 2, 3]".into(), Some("wrong_shape")),
        (r#"{"hello": "world"}"#.into(), Some("wrong_shape")),
        (
            flat("checkout", "gpt-4o", t0, -5.0).to_string(),
            Some("invalid"),
        ),
        (two_spans, Some("several_events")),
        (
            flat("checkout", "gpt-4o", t0, 120_000.0).to_string(),
            Some("rejected"),
        ),
        (good(1), None),
        (
            flat("checkout", &second_model, t0, 210.0).to_string(),
            Some("rejected"),
        ),
        (good(2), None),
        (good(3), None),
    ];
    let mut offsets = Vec::new();
    for (payload, _) in &messages {
        offsets.push(
            produce(
                &producer,
                TOPIC,
                0,
                "k",
                payload.as_bytes(),
                &[("origin", "test")],
            )
            .await,
        );
    }

    // Every poison message is in the dead-letter topic (created by the router), as it
    // was, with why and where from.
    let dlq = Reader::start(broker.consumer("dlq-reader"), &[DLQ]);
    let poison: Vec<(&String, &str, i64)> = messages
        .iter()
        .zip(&offsets)
        .filter_map(|((payload, reason), offset)| Some((payload, (*reason)?, *offset)))
        .collect();
    let letters = wait_for(PATIENCE, async || {
        let received = dlq.received();
        (received.len() >= poison.len()).then_some(received)
    })
    .await
    .unwrap_or_else(|| panic!("dead letters missing: {:?}\n{}", dlq.received(), h.log()));
    assert_eq!(letters.len(), poison.len(), "{letters:?}");
    for (payload, reason, offset) in &poison {
        let letter = letters
            .iter()
            .find(|l| l.headers["sentinel.source.offset"] == offset.to_string())
            .unwrap_or_else(|| panic!("no dead letter of offset {offset}: {letters:?}"));
        assert_eq!(letter.payload, payload.as_bytes());
        assert_eq!(letter.key.as_deref(), Some("k"));
        assert_eq!(letter.headers["sentinel.error.reason"], *reason);
        assert_eq!(letter.headers["sentinel.source.topic"], TOPIC);
        assert_eq!(letter.headers["sentinel.source.partition"], "0");
        let error: Value =
            serde_json::from_str(&letter.headers["sentinel.error"]).expect("error is JSON");
        assert_eq!(error["reason"], *reason);
        assert!(
            !error["errors"].as_array().expect("errors").is_empty(),
            "{error}"
        );
        if *reason == "invalid" || *reason == "rejected" {
            let field = if payload.contains(&second_model) {
                "model"
            } else {
                "latency_ms"
            };
            assert_eq!(error["errors"][0]["field"], field, "{error}");
        }
    }

    // The good messages around them were applied, once, the colliding ones both.
    let applied = wait_for(PATIENCE, async || {
        let counts = counts(&h).await?;
        (total(&counts) == 6).then_some(counts)
    })
    .await;
    assert!(applied.is_some(), "good messages missing\n{}", h.log());

    // Counted by reason; the partition's offset is committed past the last message.
    let metrics = h.metrics().await;
    for (reason, n) in [
        ("not_json", 1.0),
        ("wrong_shape", 2.0),
        ("invalid", 1.0),
        ("several_events", 1.0),
        ("rejected", 2.0),
    ] {
        let name = format!(
            "sentinel_router_kafka_dead_letters_total{{reason=\"{reason}\",topic=\"llm.telemetry\"}}"
        );
        assert_eq!(sample(&metrics, &name), n, "{name}\n{metrics}");
    }
    let group = broker.consumer("poison");
    let mut partition = TopicPartitionList::new();
    partition.add_partition(TOPIC, 0);
    let end = offsets.last().expect("offsets") + 1;
    let committed = wait_for(PATIENCE, async || {
        let committed = tokio::task::block_in_place(|| {
            group.committed_offsets(partition.clone(), Duration::from_secs(5))
        })
        .ok()?;
        let offset = committed.elements().first()?.offset();
        (offset == Offset::Offset(end)).then_some(())
    })
    .await;
    assert!(
        committed.is_some(),
        "offset {end} never committed\n{}",
        h.log()
    );
    dlq.close().await;
}
