//! The clients: unique events sent through the routers' REST and gRPC APIs and through
//! Kafka, each with an id the client chose, and reads of what was acknowledged. Every
//! attempt and its outcome goes to the history and to the ledger the checker reads.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use sentinel_local::rng::Rng;
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::IngestEventsRequest;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::history::History;

/// The models of each service; keys are (service, model) pairs.
const MODELS: [&str; 4] = ["gpt-4o", "claude-3", "llama-3", "mistral-large"];
/// How many times a client sends an event whose fate it did not learn.
const ATTEMPTS: u32 = 8;
/// Every this many requests, a client sends an earlier request again, whole (ids and
/// content), as a client that timed out on an answer the cluster did send would: each
/// event must come back `duplicate` and stay applied once.
const RESEND_EVERY: u64 = 10;
/// How old a request is when it is sent again, at least.
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Requests kept for sending again.
const RESENT_KEPT: usize = 64;
/// How old a request may be when it is sent again, at most: well within the nodes'
/// event-id horizon (15 minutes), past which a repeated id is, by contract, a new call.
const RESEND_WITHIN: Duration = Duration::from_secs(600);
/// Every this many events of a client, one is a latency spike.
const SPIKE_EVERY: u64 = 600;
/// The latency cap the nodes are given (`detection.incidents.latency_cap_ms`).
pub const LATENCY_CAP_MS: u64 = 30_000;
/// How long an incident's key must be calm before it resolves, ms of event time.
pub const RESOLVE_AFTER_MS: u64 = 20_000;
/// How long a client waits for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// (service, model) of key `k`.
pub fn key_name(k: usize) -> (String, String) {
    (
        format!("svc-{}", k / MODELS.len()),
        MODELS[k % MODELS.len()].to_owned(),
    )
}

/// What a client learned of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, no answer yet.
    Pending,
    /// Applied or recognised as applied before (`applied`, `duplicate`, a Kafka ack).
    Acknowledged,
    /// Every attempt failed without saying whether it was applied.
    Unknown,
    /// Refused as invalid on its first attempt: never applied.
    Rejected,
}

/// Every event sent, its key and what became of it.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<LedgerInner>,
}

#[derive(Default)]
pub struct LedgerInner {
    pub events: HashMap<String, (usize, Outcome)>,
    /// Ids the cluster acknowledged so far (REST and gRPC; a Kafka ack is the broker's),
    /// per key: what a read must see.
    pub acknowledged: HashMap<usize, BTreeSet<String>>,
}

impl Ledger {
    pub fn lock(&self) -> MutexGuard<'_, LedgerInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self, id: &str, key: usize) {
        self.lock()
            .events
            .entry(id.to_owned())
            .or_insert((key, Outcome::Pending));
    }

    /// Records what an attempt learned; `by_cluster`: the answer came from Sentinel.
    fn settle(&self, id: &str, outcome: Outcome, by_cluster: bool) {
        let mut inner = self.lock();
        let Some(entry) = inner.events.get_mut(id) else {
            return;
        };
        let settled = match (entry.1, outcome) {
            (Outcome::Acknowledged, _) => Outcome::Acknowledged,
            (Outcome::Unknown, Outcome::Rejected) => Outcome::Unknown,
            (_, new) => new,
        };
        entry.1 = settled;
        let key = entry.0;
        if outcome == Outcome::Acknowledged && by_cluster {
            inner
                .acknowledged
                .entry(key)
                .or_default()
                .insert(id.to_owned());
        }
    }
}

/// One generated event.
#[derive(Clone)]
struct Event {
    id: String,
    key: usize,
    body: Value,
    attempts: u32,
}

/// What the clients share: where to send, the ledger, the history and the stop flag.
pub struct Clients {
    /// Each router's REST base URL, and its gRPC one at the same index.
    pub routers: Vec<String>,
    pub grpc_routers: Vec<String>,
    pub broker: String,
    /// The one producer every Kafka client sends through (see [`producer`]).
    pub producer: FutureProducer,
    pub keys: usize,
    pub seed: u64,
    pub ledger: Arc<Ledger>,
    pub history: Arc<History>,
    pub stop: Arc<AtomicBool>,
}

/// Which API a sending client uses.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    Http,
    Grpc,
    Kafka,
}

/// Events per request.
const BATCH: usize = 25;

impl Clients {
    /// Creates the Kafka topic (partitions for every router to consume some).
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.broker)
            .create()
            .context("Kafka admin client")?;
        let topics = [NewTopic::new(topic, partitions, TopicReplication::Fixed(1))];
        let results = admin.create_topics(&topics, &AdminOptions::new()).await?;
        for result in results {
            result.map_err(|(topic, code)| anyhow::anyhow!("creating topic {topic}: {code}"))?;
        }
        Ok(())
    }

    /// Sends events through `api` as client `index` at `rate` events per second until stopped.
    pub async fn send(
        self: Arc<Self>,
        api: Api,
        index: usize,
        rate: f64,
        topic: String,
    ) -> Result<()> {
        let process = format!("{}-{index}", format!("{api:?}").to_lowercase());
        let mut rng = Rng::from_stream(self.seed, 0x636c_0000 + (api as u64) * 64 + index as u64);
        let mut sender = Sender::new(&self, api, index, &topic)?;
        let mut retries: Vec<Event> = Vec::new();
        let mut recent: VecDeque<(Instant, Vec<Event>)> = VecDeque::new();
        let mut sequence = 0u64;
        let start = Instant::now();
        let mut sent = 0usize;
        let mut round = 0u64;
        while !self.stop.load(Ordering::Relaxed) {
            round += 1;
            while recent
                .front()
                .is_some_and(|(at, _)| at.elapsed() > RESEND_WITHIN)
            {
                recent.pop_front();
            }
            let resend = round % RESEND_EVERY == 0
                && recent
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() >= RESEND_AFTER);
            let mut batch: Vec<Event> = if resend {
                recent
                    .pop_front()
                    .map(|(_, batch)| batch)
                    .unwrap_or_default()
            } else {
                retries.drain(..retries.len().min(BATCH)).collect()
            };
            while batch.len() < BATCH {
                let key = rng.below(self.keys as u64) as usize;
                let id = format!("{process}-{sequence}");
                let spike = sequence % SPIKE_EVERY == SPIKE_EVERY - 1;
                sequence += 1;
                batch.push(Event {
                    body: event_body(&id, key, spike, &mut rng),
                    id,
                    key,
                    attempts: 0,
                });
            }
            for event in &mut batch {
                event.attempts += 1;
                self.ledger.sent(&event.id, event.key);
            }
            let ids: Vec<&str> = batch.iter().map(|e| e.id.as_str()).collect();
            let op =
                json!({"type": "invoke", "f": "ingest", "api": api, "resend": resend, "ids": ids});
            self.history.record(&process, op);
            let outcomes = sender.send(&batch).await;
            if !resend {
                recent.push_back((Instant::now(), batch.clone()));
                if recent.len() > RESENT_KEPT {
                    recent.pop_front();
                }
            }
            let mut completion = Completion::default();
            let by_cluster = !matches!(api, Api::Kafka);
            for (event, outcome) in batch.into_iter().zip(outcomes) {
                completion.add(&event.id, &outcome);
                let settle = |outcome| self.ledger.settle(&event.id, outcome, by_cluster);
                match outcome {
                    Sent::Acknowledged => settle(Outcome::Acknowledged),
                    Sent::Rejected(_) if event.attempts == 1 => settle(Outcome::Rejected),
                    Sent::Rejected(_) => settle(Outcome::Unknown),
                    Sent::Failed(_) => {
                        settle(Outcome::Unknown);
                        if event.attempts < ATTEMPTS && !matches!(api, Api::Kafka) {
                            retries.push(event);
                        }
                    }
                }
            }
            self.history.record(&process, completion.into_op());
            sent += BATCH;
            let due = start + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        Ok(())
    }

    /// Reads one key's telemetry through a router every `period`, checking it holds every
    /// event acknowledged before the read began and none that was never sent.
    pub async fn read(self: Arc<Self>, period: Duration) -> Result<()> {
        let client = reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?;
        let mut rng = Rng::from_stream(self.seed, 0x7265_6164);
        let mut n = 0usize;
        while !self.stop.load(Ordering::Relaxed) {
            let key = rng.below(self.keys as u64) as usize;
            let (service, model) = key_name(key);
            let router = &self.routers[n % self.routers.len()];
            n += 1;
            let before: BTreeSet<String> = self
                .ledger
                .lock()
                .acknowledged
                .get(&key)
                .cloned()
                .unwrap_or_default();
            self.history.record(
                "read",
                json!({"type": "invoke", "f": "read", "key": [service, model], "router": router}),
            );
            let path =
                format!("/api/v1/telemetry?service={service}&model={model}&hours=6&limit=10000");
            let op = match pages(&client, router, &path, "records").await {
                Ok(records) => {
                    let found: BTreeSet<String> = records.iter().filter_map(record_id).collect();
                    let missing: Vec<&String> = before.difference(&found).take(20).collect();
                    let inner = self.ledger.lock();
                    let invented: Vec<&String> = found
                        .iter()
                        .filter(|id| !inner.events.contains_key(base_id(id)))
                        .take(20)
                        .collect();
                    json!({"type": "ok", "f": "read", "acknowledged_before": before.len(), "found": found.len(),
                           "missing": missing, "invented": invented})
                }
                Err(e) => {
                    json!({"type": "fail", "f": "read", "error": e.to_string(), "retryable": e.retryable()})
                }
            };
            self.history.record("read", op);
            tokio::time::sleep(period).await;
        }
        Ok(())
    }
}

/// The API event `id` was sent through (ids are `<api>-<client>-<sequence>`).
pub fn api_of(id: &str) -> &str {
    id.split('-').next().unwrap_or_default()
}

/// The Kafka producer of the workload. It works around two faults of the test broker
/// (tansu 0.6; see testkit/src/kafka.rs), either of which makes a consumer skip records
/// that are in the topic, which would count as Sentinel's loss:
/// * one record per record batch: a fetch from an offset inside a batch is answered
///   from the next batch on, so a router resuming mid-batch would skip the rest of it;
/// * one produce request in flight, from one producer shared by every Kafka client: the
///   broker raises a partition's high watermark before it stores the record, so while
///   two produces to a partition overlap, a fetch can return the later record without
///   the earlier one, and the consumer moves past it.
pub fn producer(broker: &str) -> Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("message.timeout.ms", "30000")
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .set("max.in.flight.requests.per.connection", "1")
        .create()
        .context("Kafka producer")
}

/// Whether event `id` was sent through Kafka.
pub fn through_kafka(id: &str) -> bool {
    api_of(id) == "kafka"
}

/// The event id of every message in `topic` (partitions `0..partitions`), read from the
/// beginning by a consumer of its own, with its partition and offset: what the broker
/// kept of what it acknowledged.
pub async fn broker_ids(
    broker: &str,
    topic: &str,
    partitions: i32,
) -> Result<HashMap<String, Option<(i32, i64)>>> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", "sentinel-jepsen-audit")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("Kafka audit consumer")?;
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let (mut ids, mut ended) = (HashMap::new(), HashSet::new());
    while ended.len() < partitions as usize {
        let message = tokio::time::timeout(Duration::from_secs(15), consumer.recv()).await;
        match message.context("reading the topic back stalled")? {
            Err(KafkaError::PartitionEOF(partition)) => {
                ended.insert(partition);
            }
            Err(e) => return Err(e.into()),
            Ok(message) => {
                let body = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<Value>(p).ok());
                if let Some(id) = body.as_ref().and_then(|b| b["request_id"].as_str()) {
                    ids.insert(id.to_owned(), Some((message.partition(), message.offset())));
                }
            }
        }
    }
    Ok(ids)
}

/// An event id as stored, without the suffix of a derived id (`<id>~<digest>`).
pub fn base_id(id: &str) -> &str {
    id.split_once('~').map_or(id, |(base, _)| base)
}

/// The event id of a telemetry record.
pub fn record_id(record: &Value) -> Option<String> {
    record["event"]["event_id"].as_str().map(str::to_owned)
}

/// (service, model, event time in ms) of a telemetry record.
pub fn call_of(record: &Value) -> Option<(String, String, i64)> {
    let event = &record["event"];
    let (service, model) = (event["service"].as_str()?, event["model"].as_str()?);
    Some((
        service.to_owned(),
        model.to_owned(),
        event["timestamp_ms"].as_i64()?,
    ))
}

/// A flat-shape event with plausible values for key `key`; a `spike` takes longer than
/// the latency cap the run configures, so it opens an incident on its own.
fn event_body(id: &str, key: usize, spike: bool, rng: &mut Rng) -> Value {
    let (service, model) = key_name(key);
    let prompt = 200 + rng.below(1800);
    let completion = 50 + rng.below(600);
    let latency = if spike {
        LATENCY_CAP_MS as f64 * rng.uniform_range(1.5, 3.0)
    } else {
        300.0 + completion as f64 * 12.0 * rng.uniform_range(0.8, 1.25)
    };
    json!({
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "service_name": service,
        "model_name": model,
        "latency_ms": latency.round(),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "user_id": format!("user-{}", rng.below(50)),
        "request_id": id,
    })
}

/// What one attempt learned of one event.
enum Sent {
    Acknowledged,
    Rejected(String),
    Failed(String),
}

/// The completion of one ingest operation, grouped by outcome.
#[derive(Default)]
struct Completion {
    acknowledged: Vec<String>,
    rejected: Vec<(String, String)>,
    failed: Vec<(String, String)>,
}

impl Completion {
    fn add(&mut self, id: &str, outcome: &Sent) {
        match outcome {
            Sent::Acknowledged => self.acknowledged.push(id.to_owned()),
            Sent::Rejected(why) => self.rejected.push((id.to_owned(), why.clone())),
            Sent::Failed(why) => self.failed.push((id.to_owned(), why.clone())),
        }
    }

    fn into_op(self) -> Value {
        let kind = if self.failed.is_empty() && self.rejected.is_empty() {
            "ok"
        } else if self.acknowledged.is_empty() && self.rejected.is_empty() {
            "info"
        } else {
            "partial"
        };
        // One reason per distinct failure keeps the history readable.
        let reasons: BTreeSet<&String> = self
            .failed
            .iter()
            .chain(&self.rejected)
            .map(|(_, why)| why)
            .collect();
        json!({"type": kind, "f": "ingest", "acknowledged": self.acknowledged,
               "rejected": self.rejected.iter().map(|(id, _)| id).collect::<Vec<_>>(),
               "failed": self.failed.iter().map(|(id, _)| id).collect::<Vec<_>>(),
               "reasons": reasons})
    }
}

/// A connection to one API.
enum Sender {
    Http {
        client: reqwest::Client,
        routers: Vec<String>,
        next: usize,
    },
    Grpc {
        clients: Vec<SentinelClient<Channel>>,
        next: usize,
    },
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

impl Sender {
    fn new(clients: &Clients, api: Api, index: usize, topic: &str) -> Result<Sender> {
        Ok(match api {
            Api::Http => Sender::Http {
                client: reqwest::Client::builder().timeout(CALL_TIMEOUT).build()?,
                routers: clients.routers.clone(),
                next: index,
            },
            Api::Grpc => Sender::Grpc {
                clients: clients
                    .grpc_routers
                    .iter()
                    .map(|url| {
                        let channel = Channel::from_shared(url.clone())?
                            .timeout(CALL_TIMEOUT)
                            .connect_lazy();
                        Ok(SentinelClient::new(channel))
                    })
                    .collect::<Result<_>>()?,
                next: index,
            },
            Api::Kafka => Sender::Kafka {
                producer: clients.producer.clone(),
                topic: topic.to_owned(),
            },
        })
    }

    /// Sends `batch`, one outcome per event in order; the next call goes to the next router.
    async fn send(&mut self, batch: &[Event]) -> Vec<Sent> {
        let failed_all = |why: String| batch.iter().map(|_| Sent::Failed(why.clone())).collect();
        match self {
            Sender::Http {
                client,
                routers,
                next,
            } => {
                let router = &routers[*next % routers.len()];
                *next += 1;
                let body: Vec<&Value> = batch.iter().map(|e| &e.body).collect();
                let body = serde_json::to_vec(&body).expect("JSON of JSON values");
                let answer = client
                    .post(format!("{router}/api/v1/events"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let answer = match answer {
                    Ok(answer) => answer,
                    Err(e) => return failed_all(format!("http: {}", error_kind(&e))),
                };
                let status = answer.status();
                match json_body(answer).await {
                    Ok(body) if body["results"].is_array() => {
                        let results = body["results"].as_array().expect("checked");
                        batch
                            .iter()
                            .enumerate()
                            .map(|(i, _)| result_outcome(results.get(i), status.as_u16()))
                            .collect()
                    }
                    Ok(body) => failed_all(format!("http {status}: {}", body["code"])),
                    Err(e) => failed_all(format!("http {status}: {e}")),
                }
            }
            Sender::Grpc { clients, next } => {
                let count = clients.len();
                let client = &mut clients[*next % count];
                *next += 1;
                let events = batch.iter().map(|e| e.body.to_string()).collect();
                match client.ingest_events(IngestEventsRequest { events }).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        let by_index: HashMap<u32, &sentinel_proto::v1::IngestedEvent> =
                            reply.results.iter().map(|r| (r.index, r)).collect();
                        (0..batch.len() as u32)
                            .map(|i| match by_index.get(&i).map(|r| r.status.as_str()) {
                                Some("applied") | Some("duplicate") => Sent::Acknowledged,
                                Some("rejected") => Sent::Rejected(format!(
                                    "grpc rejected: {:?}",
                                    by_index[&i].errors
                                )),
                                other => Sent::Failed(format!("grpc status {other:?}")),
                            })
                            .collect()
                    }
                    Err(status) => failed_all(format!("grpc {:?}", status.code())),
                }
            }
            Sender::Kafka { producer, topic } => {
                let sends = batch.iter().map(|event| {
                    let payload = event.body.to_string();
                    let key = event.body["service_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    let producer = producer.clone();
                    let topic = topic.clone();
                    async move {
                        let record = FutureRecord::to(&topic).payload(&payload).key(&key);
                        match producer.send(record, Duration::from_secs(30)).await {
                            Ok(_) => Sent::Acknowledged,
                            Err((e, _)) => Sent::Failed(format!("kafka: {e}")),
                        }
                    }
                });
                futures::future::join_all(sends).await
            }
        }
    }
}

/// The outcome of one event from its entry in a REST answer's `results`.
fn result_outcome(result: Option<&Value>, status: u16) -> Sent {
    let Some(result) = result else {
        return Sent::Failed(format!("http {status}: no result"));
    };
    match result["status"].as_str() {
        Some("applied") | Some("duplicate") => Sent::Acknowledged,
        Some("rejected") => Sent::Rejected(format!("http rejected: {}", result["errors"])),
        other => Sent::Failed(format!("http {status}: {}", other.unwrap_or("?"))),
    }
}

/// The JSON body of an answer; a body cut off may be asked for again, one that is not
/// JSON may not.
async fn json_body(answer: reqwest::Response) -> Result<Value, ReadError> {
    let bytes = answer.bytes().await.map_err(|e| ReadError {
        what: format!("body: {}", error_kind(&e)),
        retryable: true,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ReadError {
        what: format!("body is not JSON: {e}"),
        retryable: false,
    })
}

/// A short name for a client error: timeouts and refused connections are what faults cause.
fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    }
}

/// Why a read failed, and whether a client may simply try again.
#[derive(Debug)]
pub struct ReadError {
    what: String,
    retryable: bool,
}

impl ReadError {
    fn retryable(&self) -> bool {
        self.retryable
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.what)
    }
}

/// Every element of list `list` of a paged REST query (`path` has its own query string), following
/// `next_cursor`. No answer (a refused or broken connection, a timeout) and 503/504 are
/// retryable; any other failure is not.
pub async fn pages(
    client: &reqwest::Client,
    router: &str,
    path: &str,
    list: &str,
) -> Result<Vec<Value>, ReadError> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{router}{path}&cursor={c}"),
            None => format!("{router}{path}"),
        };
        let answer = client.get(&url).send().await.map_err(|e| ReadError {
            what: format!("GET {path}: {}", error_kind(&e)),
            // No answer at all (refused, reset, timed out): the read may simply be retried.
            retryable: true,
        })?;
        let status = answer.status().as_u16();
        let body = json_body(answer).await.map_err(|e| ReadError {
            what: format!("GET {path}: {status}, {}", e.what),
            ..e
        })?;
        if status != 200 {
            return Err(ReadError {
                what: format!("GET {path}: {status} {}", body["code"]),
                retryable: matches!(status, 503 | 504),
            });
        }
        records.extend(body[list].as_array().into_iter().flatten().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(form_urlencoded::byte_serialize(next.as_bytes()).collect()),
            None => return Ok(records),
        }
    }
}
