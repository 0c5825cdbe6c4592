//! Sending events to Sentinel at a chosen pace: from a JSONL or CSV file or from the
//! realistic replay, to a router's REST API or to a Kafka topic, tallying what was
//! acknowledged and what was rejected and why.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sentinel_local::replay::{Incident, Replay, ReplayConfig};
use sentinel_router::kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use sentinel_router::kafka::rdkafka::util::Timeout;
use sentinel_router::kafka::rdkafka::ClientConfig;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Most events one request (HTTP) or one round of produce calls (Kafka) carries.
const MAX_BATCH: usize = 500;
/// Most batches awaiting their answer at once.
const MAX_IN_FLIGHT: usize = 4;
/// How long one batch may wait for its answer.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// One event to send: its JSON document and the key that keeps a key's events in order.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The event document.
    pub json: String,
    /// `service/model`, when known: the Kafka message key.
    pub key: Option<String>,
}

/// An event and when to send it, counted from the start of sending.
pub type Timed = (Duration, Result<Outgoing, String>);

/// Where events come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// One JSON event per line (blank lines skipped).
    Jsonl(PathBuf),
    /// A header row naming event fields (the flat producer shape), one event per row.
    Csv(PathBuf),
    /// The realistic replay, from the event time its configuration starts at.
    Replay(ReplayConfig),
}

/// How fast events are sent.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// This many events per second (0: as fast as they are acknowledged).
    Rate(f64),
    /// Event time divided by this factor (replay only; other sources fall back to
    /// 1,000 events per second).
    Speed(f64),
}

impl Source {
    /// Opens the source as a stream of timed events. For the replay, also its incidents.
    pub fn open(
        &self,
        pace: Pace,
    ) -> anyhow::Result<(Box<dyn Iterator<Item = Timed> + Send>, Vec<Incident>)> {
        let rate = match pace {
            Pace::Rate(rate) => rate,
            Pace::Speed(_) => 1_000.0,
        };
        let at = move |i: usize| match rate > 0.0 {
            true => Duration::from_secs_f64(i as f64 / rate),
            false => Duration::ZERO,
        };
        Ok(match self {
            Source::Jsonl(path) => {
                let lines = BufReader::new(open(path)?)
                    .lines()
                    .enumerate()
                    .filter(|(_, line)| line.as_ref().map_or(true, |l| !l.trim().is_empty()))
                    .enumerate()
                    .map(move |(i, (n, line))| {
                        let event = line
                            .map(|json| Outgoing { json, key: None })
                            .map_err(|e| format!("line {}: {e}", n + 1));
                        (at(i), event)
                    });
                (Box::new(lines), Vec::new())
            }
            Source::Csv(path) => {
                let mut reader = csv::Reader::from_reader(open(path)?);
                let headers = reader
                    .headers()
                    .with_context(|| format!("reading the header row of {}", path.display()))?
                    .clone();
                let rows = reader.into_records().enumerate().map(move |(i, row)| {
                    let event = row
                        .map(|row| Outgoing {
                            json: csv_event(&headers, &row).to_string(),
                            key: None,
                        })
                        .map_err(|e| format!("row {}: {e}", i + 2));
                    (at(i), event)
                });
                (Box::new(rows), Vec::new())
            }
            Source::Replay(config) => {
                let start = chrono::DateTime::parse_from_rfc3339(&config.start)
                    .context("the replay's start")?
                    .timestamp_millis();
                let replay = Replay::new(config.clone()).context("setting up the replay")?;
                let incidents = replay.incidents().to_vec();
                // Fresh event ids on every run: the same seed sent again is new traffic,
                // not a retry the shards would skip as duplicates.
                let run = format!("{:x}", chrono::Utc::now().timestamp_millis());
                let events = replay.enumerate().map(move |(i, labeled)| {
                    let mut event = labeled.event;
                    let when = match pace {
                        Pace::Speed(speed) => Duration::from_secs_f64(
                            (event.timestamp_ms - start).max(0) as f64 / 1000.0 / speed,
                        ),
                        Pace::Rate(_) => at(i),
                    };
                    event.event_id = event.event_id.map(|id| format!("{run}-{id}"));
                    let key = format!("{}/{}", event.service, event.model);
                    let json = event.to_nested_json().to_string();
                    (
                        when,
                        Ok(Outgoing {
                            json,
                            key: Some(key),
                        }),
                    )
                });
                (Box::new(events), incidents)
            }
        })
    }
}

/// The start, in ms since the Unix epoch, of `duration_s` of event time ending now.
pub fn start_ending_now(duration_s: f64) -> i64 {
    chrono::Utc::now().timestamp_millis() - (duration_s * 1e3) as i64
}

/// `config` placed so that its event time starts at `start_ms`.
pub fn replay_from(config: ReplayConfig, start_ms: i64) -> anyhow::Result<ReplayConfig> {
    let start = chrono::DateTime::from_timestamp_millis(start_ms)
        .context("the replay's start is out of range")?;
    Ok(ReplayConfig {
        start: start.to_rfc3339(),
        ..config
    })
}

fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

/// A CSV row as a flat event: numbers and booleans typed (except in identifier and time
/// columns, which stay text), empty cells left out.
fn csv_event(headers: &csv::StringRecord, row: &csv::StringRecord) -> Value {
    let mut event = Map::new();
    for (name, cell) in headers.iter().zip(row.iter()) {
        let (name, cell) = (name.trim(), cell.trim());
        if cell.is_empty() {
            continue;
        }
        let text = name.ends_with("_id") || name == "timestamp";
        let value = if text {
            Value::from(cell)
        } else if let Ok(n) = cell.parse::<i64>() {
            Value::from(n)
        } else if let Some(x) = cell.parse::<f64>().ok().filter(|x| x.is_finite()) {
            Value::from(x)
        } else if let Ok(b) = cell.parse::<bool>() {
            Value::from(b)
        } else {
            Value::from(cell)
        };
        event.insert(name.to_owned(), value);
    }
    Value::Object(event)
}

/// Where events go.
#[derive(Debug, Clone)]
pub enum Target {
    /// A router's REST API (`POST /api/v1/events`).
    Http {
        /// Base URL of the router, e.g. `http://127.0.0.1:8080`.
        url: String,
        /// API key, when the router requires one.
        api_key: Option<String>,
    },
    /// A Kafka topic the routers consume.
    Kafka {
        /// Bootstrap brokers, `host:port[,host:port]`.
        brokers: String,
        /// The topic.
        topic: String,
    },
}

/// What happened to the events sent so far.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Events sent (or, for unreadable input, given up on).
    pub sent: u64,
    /// Acknowledged: applied by their shard (HTTP) or stored by the broker (Kafka).
    pub acknowledged: u64,
    /// Of those, already applied before (a repeated event id).
    pub duplicates: u64,
    /// Refused: unreadable input, or refused by the router field by field.
    pub rejected: u64,
    /// Not acknowledged (unreachable, unavailable, timed out); may be sent again.
    pub failed: u64,
    /// Why events were rejected or failed: count and one example message, by field or cause.
    pub reasons: BTreeMap<String, (u64, String)>,
}

impl Tally {
    fn reason(&mut self, cause: &str, example: &str, count: u64) {
        let entry = self
            .reasons
            .entry(cause.to_owned())
            .or_insert_with(|| (0, example.to_owned()));
        entry.0 += count;
    }

    /// The reasons, most frequent first, one line each.
    pub fn reason_lines(&self) -> Vec<String> {
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        reasons
            .into_iter()
            .map(|(cause, (count, example))| format!("{count:>9}  {cause}: {example}"))
            .collect()
    }
}

/// Sends batches of events to a target.
#[derive(Clone)]
pub enum Sender {
    /// Over HTTP.
    Http {
        /// Client with the router's URL and key.
        client: reqwest::Client,
        /// `…/api/v1/events`.
        url: String,
        /// API key.
        api_key: Option<String>,
    },
    /// To Kafka.
    Kafka {
        /// The producer.
        producer: FutureProducer,
        /// The topic.
        topic: String,
    },
}

impl Sender {
    /// A sender to `target`.
    pub fn new(target: &Target) -> anyhow::Result<Sender> {
        Ok(match target {
            Target::Http { url, api_key } => Sender::Http {
                client: reqwest::Client::builder()
                    .timeout(BATCH_TIMEOUT)
                    .build()
                    .context("creating the HTTP client")?,
                url: format!("{}/api/v1/events", url.trim_end_matches('/')),
                api_key: api_key.clone(),
            },
            Target::Kafka { brokers, topic } => Sender::Kafka {
                producer: ClientConfig::new()
                    .set("bootstrap.servers", brokers)
                    .set("linger.ms", "5")
                    .set("message.timeout.ms", BATCH_TIMEOUT.as_millis().to_string())
                    .create()
                    .with_context(|| format!("creating a Kafka producer for {brokers}"))?,
                topic: topic.clone(),
            },
        })
    }

    /// Sends one batch and adds its outcome to `tally`.
    async fn send(&self, batch: Vec<Outgoing>, tally: &Mutex<Tally>) {
        let count = batch.len() as u64;
        match self {
            Sender::Http {
                client,
                url,
                api_key,
            } => {
                let body: String = batch.iter().map(|e| format!("{}\n", e.json)).collect();
                let mut request = client
                    .post(url)
                    .header("content-type", "application/x-ndjson")
                    .body(body);
                if let Some(key) = api_key {
                    request = request.bearer_auth(key);
                }
                let answer = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.bytes().await.unwrap_or_default();
                        serde_json::from_slice::<Value>(&body)
                            .map_err(|_| format!("{status}: {}", String::from_utf8_lossy(&body)))
                            .map(|answer| (status, answer))
                    }
                    Err(e) => Err(format!("router unreachable: {e}")),
                };
                let mut tally = tally.lock().expect("tally lock");
                tally.sent += count;
                match answer {
                    Ok((_, answer)) if answer.get("results").is_some() => {
                        tally_answer(&mut tally, &answer)
                    }
                    Ok((status, answer)) => {
                        tally.failed += count;
                        let message = answer["message"].as_str().unwrap_or("no message");
                        tally.reason(&format!("HTTP {}", status.as_u16()), message, count);
                    }
                    Err(message) => {
                        tally.failed += count;
                        tally.reason("request failed", &message, count);
                    }
                }
            }
            Sender::Kafka { producer, topic } => {
                let deliveries = batch.iter().map(|event| {
                    let mut record = FutureRecord::to(topic).payload(event.json.as_bytes());
                    if let Some(key) = &event.key {
                        record = record.key(key.as_bytes());
                    }
                    producer.send(record, Timeout::After(BATCH_TIMEOUT))
                });
                let results = futures::future::join_all(deliveries).await;
                let mut tally = tally.lock().expect("tally lock");
                tally.sent += count;
                for result in results {
                    match result {
                        Ok(_) => tally.acknowledged += 1,
                        Err((e, _)) => {
                            tally.failed += 1;
                            tally.reason("not stored by the broker", &e.to_string(), 1);
                        }
                    }
                }
            }
        }
    }
}

/// Adds a router's ingestion answer (`docs/api.md`) to `tally`.
fn tally_answer(tally: &mut Tally, answer: &Value) {
    let count = |field: &str| answer[field].as_u64().unwrap_or(0);
    tally.acknowledged += count("accepted");
    tally.duplicates += count("duplicates");
    tally.rejected += count("rejected");
    tally.failed += count("failed");
    for result in answer["results"].as_array().into_iter().flatten() {
        match result["status"].as_str() {
            Some("rejected") => {
                for error in result["errors"].as_array().into_iter().flatten() {
                    let field = error["field"].as_str().filter(|f| !f.is_empty());
                    let problem = error["problem"].as_str().unwrap_or("");
                    tally.reason(field.unwrap_or("document"), problem, 1);
                }
            }
            Some("failed") => {
                let message = result["message"].as_str().unwrap_or("no acknowledgement");
                tally.reason("unavailable", message, 1);
            }
            _ => {}
        }
    }
}

/// Sends every event of `events` at its time through `sender`, batching what is due,
/// until the events run out or `stop` turns true; then waits for the answers in flight.
pub async fn send_all(
    events: impl Iterator<Item = Timed>,
    sender: Sender,
    tally: Arc<Mutex<Tally>>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut in_flight = JoinSet::new();
    let mut events = events.peekable();
    while !*stop.borrow() {
        let Some((due, _)) = events.peek() else {
            break;
        };
        let due = started + *due;
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stop.changed() => continue,
            }
        }
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some((_, event)) = events.next_if(|(at, _)| started + *at <= Instant::now()) else {
                break;
            };
            match event {
                Ok(event) => batch.push(event),
                Err(problem) => {
                    let mut tally = tally.lock().expect("tally lock");
                    tally.sent += 1;
                    tally.rejected += 1;
                    tally.reason("unreadable input", &problem, 1);
                }
            }
        }
        if batch.is_empty() {
            continue;
        }
        while in_flight.len() >= MAX_IN_FLIGHT {
            in_flight.join_next().await;
        }
        let (sender, tally) = (sender.clone(), tally.clone());
        in_flight.spawn(async move { sender.send(batch, &tally).await });
    }
    while in_flight.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_become_typed_fields_but_ids_stay_text_and_empty_cells_are_left_out() {
        let headers = csv::StringRecord::from(vec![
            "service_name",
            "model_name",
            "latency_ms",
            "prompt_tokens",
            "error",
            "user_id",
            "request_id",
        ]);
        let row =
            csv::StringRecord::from(vec!["chat", "gpt-4o", "812.5", "400", "false", "", "1234"]);
        assert_eq!(
            csv_event(&headers, &row),
            json!({"service_name": "chat", "model_name": "gpt-4o", "latency_ms": 812.5,
                   "prompt_tokens": 400, "error": false, "request_id": "1234"})
        );
    }

    #[test]
    fn an_ingestion_answer_is_tallied_with_each_reason() {
        let mut tally = Tally::default();
        tally_answer(
            &mut tally,
            &json!({"accepted": 2, "applied": 1, "duplicates": 1, "rejected": 2, "failed": 1,
                    "results": [
                        {"index": 0, "status": "applied"},
                        {"index": 1, "status": "duplicate"},
                        {"index": 2, "status": "rejected",
                         "errors": [{"field": "latency_ms", "problem": "-3 is below the minimum 0.1"}]},
                        {"index": 3, "status": "rejected",
                         "errors": [{"field": "latency_ms", "problem": "-4 is below the minimum 0.1"}]},
                        {"index": 4, "status": "failed", "message": "shard 3 has no leader"}]}),
        );
        assert_eq!(
            (
                tally.acknowledged,
                tally.duplicates,
                tally.rejected,
                tally.failed
            ),
            (2, 1, 2, 1)
        );
        assert_eq!(
            tally.reason_lines(),
            [
                "        2  latency_ms: -3 is below the minimum 0.1",
                "        1  unavailable: shard 3 has no leader"
            ]
        );
    }

    #[tokio::test]
    async fn a_stopped_feed_sends_nothing_more() {
        let (stop, stopped) = watch::channel(true);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let events = (0..10).map(|i| {
            (
                Duration::from_millis(i),
                Ok(Outgoing {
                    json: "{}".into(),
                    key: None,
                }),
            )
        });
        let sender = Sender::new(&Target::Http {
            url: "http://127.0.0.1:9".into(),
            api_key: None,
        })
        .expect("sender");
        send_all(events, sender, tally.clone(), stopped).await;
        drop(stop);
        assert_eq!(tally.lock().unwrap().sent, 0);
    }
}
