//! A real Kafka-protocol broker process for tests, and Kafka clients of it.
//!
//! The broker is `tansu` (crates.io, Apache-2.0), a Kafka-compatible broker written in
//! Rust, run with in-memory storage on a free loopback port, one process per test.
//!
//! tansu 0.6 does not hand the partitions of a group member that died (kill -9, its
//! session timed out) to the members left: they rejoin and get their old partitions
//! back only, so the dead member's partitions are never read again. A graceful leave
//! works. Tests of a member dying therefore run against librdkafka's mock cluster
//! ([`Broker::start_mock`]), hosted in a process of its own: the test binary run as
//! `<binary> --exact mock_kafka_cluster --ignored` (see [`mock_cluster_main`]).
//!
//! tansu 0.6 also answers a fetch from an offset inside a record batch with the batches
//! after it: ten records produced in one batch and fetched from offset 5 come back from
//! offset 10 on. A consumer that resumes from a committed offset in the middle of a
//! producer's batch (after a kill or a rebalance) never sees the rest of that batch.
//! Apache Kafka returns the whole batch and the client skips the records before its
//! offset. Producers in tests that resume consumers mid-stream send one record per
//! batch (`produce` awaits each record; the fault-injection harness sets
//! `batch.num.messages=1`).
//!
//! And, by its source, tansu 0.6 raises a partition's high watermark when it gives a
//! produce its offset, before it stores the record, while a fetch lists the records
//! stored below the high watermark. While two produces to one partition overlap, a fetch
//! can find the later record and not the earlier one, and the consumer moves past the
//! earlier one for good (a router logs such gaps: `Kafka offsets skipped`). The window
//! is short: 150,000 records from 3 to 8 overlapping producers, tailed by a consumer,
//! came through whole. Tests whose consumer reads while produces to a partition may
//! overlap use one producer with one request in flight (the harness does), or consume
//! after producing has ended.
//!
//! `scripts/setup` installs it at [`DEFAULT_BROKER_BIN`]; `TEST_KAFKA_BROKER_BIN`
//! names another binary taking the same arguments, and `TEST_KAFKA_BROKER_LOG`
//! (a tracing filter such as `info`) makes the broker log what it does. A failing test
//! keeps the broker's log and prints where. (Not `SENTINEL_*`: the node and router
//! processes a test starts inherit its environment and would read those as settings.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sentinel_router::kafka::rdkafka;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use tempfile::TempDir;

use crate::free_port;

/// Where `scripts/setup` installs the broker.
pub const DEFAULT_BROKER_BIN: &str = "/var/cache/sentinel/tools/bin/tansu";
/// Environment variable naming another broker binary.
pub const BROKER_BIN_ENV: &str = "TEST_KAFKA_BROKER_BIN";
/// Environment variable with the broker's log filter (`RUST_LOG` of the broker).
pub const BROKER_LOG_ENV: &str = "TEST_KAFKA_BROKER_LOG";

/// The broker binary tests start.
pub fn broker_bin() -> PathBuf {
    std::env::var_os(BROKER_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BROKER_BIN))
}

/// Environment variable telling [`mock_cluster_main`] where to write its address.
const MOCK_READY_ENV: &str = "KAFKA_MOCK_CLUSTER_READY";
/// Environment variable with the mock cluster's topics, `name:partitions,...`.
const MOCK_TOPICS_ENV: &str = "KAFKA_MOCK_CLUSTER_TOPICS";

/// One broker process with in-memory storage; killed on drop.
pub struct Broker {
    /// `host:port` clients bootstrap from.
    pub address: String,
    /// Whether this is librdkafka's mock cluster (no CreateTopics).
    pub mock: bool,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    /// Starts a broker on a free port and waits until it answers metadata requests.
    pub async fn start() -> Broker {
        let bin = broker_bin();
        assert!(
            bin.exists(),
            "the Kafka broker {} is missing: run scripts/setup (or set {BROKER_BIN_ENV})",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let address = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log file");
        let url = format!("tcp://{address}");
        // In a directory of its own: the broker reads a `.env` file from its working
        // directory; and with none of its environment variables from the test's.
        let child = Command::new(&bin)
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .args(["--cluster-id", "sentinel-test"])
            .current_dir(dir.path())
            .env_remove("CLUSTER_ID")
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .env_remove("SCHEMA_REGISTRY")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env(
                "RUST_LOG",
                std::env::var(BROKER_LOG_ENV).unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let broker = Broker {
            address,
            mock: false,
            dir,
            child: Some(child),
        };
        broker.wait_ready().await;
        broker
    }

    /// Starts librdkafka's mock cluster (one broker) in a process of its own, with
    /// `topics` (name, partitions) created.
    pub async fn start_mock(topics: &[(&str, i32)]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let ready = dir.path().join("address");
        let log = std::fs::File::create(dir.path().join("broker.log")).expect("log file");
        let topics: Vec<String> = topics.iter().map(|(t, p)| format!("{t}:{p}")).collect();
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["--exact", "mock_kafka_cluster", "--ignored", "--nocapture"])
            .env(MOCK_READY_ENV, &ready)
            .env(MOCK_TOPICS_ENV, topics.join(","))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting the mock Kafka cluster");
        let mut broker = Broker {
            address: String::new(),
            mock: true,
            dir,
            child: Some(child),
        };
        for _ in 0..300 {
            if let Ok(address) = std::fs::read_to_string(&ready) {
                broker.address = address;
                broker.wait_ready().await;
                return broker;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the mock Kafka cluster never started\n{}", broker.log());
    }

    async fn wait_ready(&self) {
        let admin = self.admin();
        for _ in 0..100 {
            let fetched = tokio::task::block_in_place(|| {
                admin
                    .inner()
                    .fetch_metadata(None, Duration::from_millis(500))
            });
            if fetched.is_ok_and(|m| !m.brokers().is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the Kafka broker never answered\n{}", self.log());
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Settings every client of this broker starts from.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.address);
        config
    }

    /// An admin client.
    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().expect("admin client")
    }

    /// Creates `topic` with `partitions` partitions; `Err` with the broker's code when it
    /// refuses (e.g. the topic exists).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), RDKafkaErrorCode> {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let mut results = self
            .admin()
            .create_topics([&new], &options)
            .await
            .expect("CreateTopics answered");
        results
            .pop()
            .expect("one result")
            .map(|_| ())
            .map_err(|(_, code)| code)
    }

    /// A producer that waits for the broker's acknowledgement.
    pub fn producer(&self) -> FutureProducer {
        self.client_config()
            .set("acks", "all")
            .set("message.timeout.ms", "20000")
            .set("linger.ms", "0")
            .create()
            .expect("producer")
    }

    /// A consumer in `group` (manual commits, reading from the earliest offset).
    pub fn consumer(&self, group: &str) -> StreamConsumer {
        self.client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("consumer")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- Kafka broker ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("Kafka broker log kept in {}", dir.keep().display());
        }
    }
}

/// The body of the mock Kafka cluster process ([`Broker::start_mock`]): creates the
/// cluster and its topics, writes its address, and runs until killed or orphaned. Does
/// nothing when not started that way.
pub fn mock_cluster_main() {
    use rdkafka::mocking::MockCluster;
    let Some(ready) = std::env::var_os(MOCK_READY_ENV) else {
        return;
    };
    let cluster = MockCluster::new(1).expect("mock cluster");
    for spec in std::env::var(MOCK_TOPICS_ENV)
        .unwrap_or_default()
        .split(',')
    {
        if let Some((topic, partitions)) = spec.split_once(':') {
            let partitions = partitions.parse().expect("partition count");
            cluster
                .create_topic(topic, partitions, 1)
                .expect("mock topic");
        }
    }
    let ready = PathBuf::from(ready);
    let staged = ready.with_extension("new");
    std::fs::write(&staged, cluster.bootstrap_servers()).expect("address written");
    std::fs::rename(&staged, &ready).expect("address published");
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The process listening on TCP `address` (`host:port`), from `ss`.
pub fn pid_listening_on(address: &str) -> Option<u32> {
    let port = address.rsplit(':').next()?;
    let output = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Stops a router gracefully with SIGTERM and waits until its process has ended.
pub async fn terminate(router: &mut crate::process::RouterProcess) {
    let address = router.http.clone();
    let pid =
        pid_listening_on(&address).unwrap_or_else(|| panic!("no process listens on {address}"));
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIGTERM {pid}");
    let ended = crate::wait_for(Duration::from_secs(60), async || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next());
        matches!(state, None | Some("Z" | "X")).then_some(())
    })
    .await;
    assert!(
        ended.is_some(),
        "the router did not stop on SIGTERM\n{}",
        router.log()
    );
    // Reaps the process.
    router.kill();
}

/// Produces `payload` (with `headers`) to `partition` of `topic`; its offset.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) -> i64 {
    let headers = headers
        .iter()
        .fold(OwnedHeaders::new(), |all, (key, value)| {
            all.insert(Header {
                key,
                value: Some(*value),
            })
        });
    let record = FutureRecord::to(topic)
        .partition(partition)
        .key(key)
        .payload(payload)
        .headers(headers);
    match producer.send(record, Duration::from_secs(20)).await {
        Ok(delivery) => delivery.offset,
        Err((error, _)) => panic!("producing to {topic}/{partition}: {error}"),
    }
}

/// One message as a test reads it back.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads `consumer` in the background into a shared list, until dropped.
pub struct Reader {
    pub consumer: Arc<StreamConsumer>,
    pub received: Arc<Mutex<Vec<Received>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Reader {
    /// Subscribes `consumer` to `topics` and keeps reading.
    pub fn start(consumer: StreamConsumer, topics: &[&str]) -> Reader {
        consumer.subscribe(topics).expect("subscribe");
        let consumer = Arc::new(consumer);
        let received = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let consumer = consumer.clone();
            let received = received.clone();
            async move {
                loop {
                    let Ok(message) = consumer.recv().await else {
                        continue;
                    };
                    let headers = message
                        .headers()
                        .map(|headers| {
                            headers
                                .iter()
                                .map(|h| {
                                    let value = h.value.map(String::from_utf8_lossy);
                                    (h.key.to_owned(), value.unwrap_or_default().into_owned())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    received.lock().unwrap().push(Received {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: message.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
            }
        });
        Reader {
            consumer,
            received,
            task: Some(task),
        }
    }

    /// What was read so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The partitions of `topic` assigned to this consumer.
    pub fn assigned(&self, topic: &str) -> Vec<i32> {
        let mut partitions: Vec<i32> = self
            .consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .filter(|e| e.topic() == topic)
                    .map(|e| e.partition())
                    .collect()
            })
            .unwrap_or_default();
        partitions.sort_unstable();
        partitions
    }

    /// Stops reading and closes the consumer (it leaves its group).
    pub async fn close(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let consumer = self.consumer.clone();
        drop(self);
        tokio::task::spawn_blocking(move || drop(consumer))
            .await
            .expect("consumer closed");
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
