//! The dead-letter producer: poison messages go to `<topic>.dlq`, unchanged (same key and
//! payload), with headers saying why and where they came from:
//!
//! | header | value |
//! | --- | --- |
//! | `sentinel.error` | JSON `{"reason", "message", "errors": [{"field", "problem"}]}` |
//! | `sentinel.error.reason` | `not_json`, `wrong_shape`, `invalid`, `several_events` or `rejected` |
//! | `sentinel.source.topic` | the topic it was read from |
//! | `sentinel.source.partition` | its partition (decimal) |
//! | `sentinel.source.offset` | its offset (decimal) |
//!
//! A message counts as settled (its offset may be committed) only once the broker
//! acknowledged its dead letter, so a produce is retried until it is; a crash before
//! that means the message is read and dead-lettered again (dead letters are
//! at-least-once).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use sentinel_core::FieldError;
use serde_json::json;

use super::config::KafkaSection;
use super::message::Reason;
use super::tracker::PartitionKey;
use crate::metrics::KafkaMetrics;

/// Header with the error as JSON.
pub const ERROR_HEADER: &str = "sentinel.error";
/// Header with the reason label.
pub const REASON_HEADER: &str = "sentinel.error.reason";
/// Header with the source topic.
pub const TOPIC_HEADER: &str = "sentinel.source.topic";
/// Header with the source partition.
pub const PARTITION_HEADER: &str = "sentinel.source.partition";
/// Header with the source offset.
pub const OFFSET_HEADER: &str = "sentinel.source.offset";

/// Longest a produce may wait for room in the producer's queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between two tries of a dead letter.
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// One poison message and why.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Where it was read.
    pub source: PartitionKey,
    /// Its offset.
    pub offset: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its payload.
    pub payload: Option<Vec<u8>>,
    /// Why it is poison.
    pub reason: Reason,
    /// Every problem found.
    pub errors: Vec<FieldError>,
}

impl Letter {
    /// The headers of its dead letter.
    pub fn headers(&self) -> OwnedHeaders {
        let message = match self.errors.as_slice() {
            [] => self.reason.label().to_owned(),
            errors => errors
                .iter()
                .map(|e| match e.field.as_str() {
                    "" => e.problem.clone(),
                    _ => e.to_string(),
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        let error = json!({
            "reason": self.reason.label(),
            "message": message,
            "errors": self.errors,
        })
        .to_string();
        let partition = self.source.1.to_string();
        let offset = self.offset.to_string();
        [
            (ERROR_HEADER, error.as_str()),
            (REASON_HEADER, self.reason.label()),
            (TOPIC_HEADER, self.source.0.as_str()),
            (PARTITION_HEADER, partition.as_str()),
            (OFFSET_HEADER, offset.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
    }
}

/// Produces dead letters.
pub struct DeadLetters {
    producer: FutureProducer,
    admin: Option<AdminClient<DefaultClientContext>>,
    partitions: i32,
    /// Dead-letter topics known to exist (or created by this router).
    ready: Mutex<HashSet<String>>,
    metrics: KafkaMetrics,
}

impl DeadLetters {
    /// A producer (and, when `create_dead_letter_topics`, an admin client) configured by `client`.
    pub fn new(
        section: &KafkaSection,
        client: &ClientConfig,
        metrics: KafkaMetrics,
    ) -> KafkaResult<DeadLetters> {
        let mut producer = client.clone();
        producer.set("message.timeout.ms", "30000");
        for (key, value) in &section.properties {
            producer.set(key, value);
        }
        let admin = match section.create_dead_letter_topics {
            true => Some(client.create()?),
            false => None,
        };
        Ok(DeadLetters {
            producer: producer.create()?,
            admin,
            partitions: section.dead_letter_partitions,
            ready: Mutex::new(HashSet::new()),
            metrics,
        })
    }

    /// Produces `letter` to the dead-letter topic of its source, trying again until the
    /// broker acknowledges it (the caller drops the future to give up).
    pub async fn send(&self, letter: &Letter) {
        let topic = KafkaSection::dead_letter_topic(&letter.source.0);
        let headers = letter.headers();
        let mut pause = RETRY_INITIAL;
        loop {
            self.ensure_topic(&topic).await;
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers.clone());
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_slice());
            }
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            match self.producer.send(record, QUEUE_TIMEOUT).await {
                Ok(_) => {
                    self.metrics
                        .dead_letters
                        .with_label_values(&[letter.source.0.as_str(), letter.reason.label()])
                        .inc();
                    tracing::info!(
                        topic = %letter.source.0,
                        partition = letter.source.1,
                        offset = letter.offset,
                        reason = letter.reason.label(),
                        errors = ?letter.errors,
                        "message dead-lettered"
                    );
                    return;
                }
                Err((error, _)) => {
                    tracing::warn!(
                        dead_letter_topic = %topic,
                        error = %error,
                        retry_in = ?pause,
                        "producing a dead letter failed; retrying"
                    );
                    self.ready.lock().expect("topic set").remove(&topic);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Creates `topic` unless it is known to exist or creating is off.
    async fn ensure_topic(&self, topic: &str) {
        let Some(admin) = &self.admin else {
            return;
        };
        if self.ready.lock().expect("topic set").contains(topic) {
            return;
        }
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(-1));
        let options =
            AdminOptions::new().request_timeout(Some(Timeout::After(Duration::from_secs(10))));
        let created = match admin.create_topics([&new], &options).await {
            Ok(mut results) => match results.pop() {
                Some(Ok(_)) => {
                    tracing::info!(topic, "dead-letter topic created");
                    true
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => true,
                Some(Err((_, code))) => {
                    tracing::warn!(topic, error = %code, "creating the dead-letter topic failed");
                    false
                }
                None => false,
            },
            Err(error) => {
                tracing::warn!(topic, error = %error, "creating the dead-letter topic failed");
                false
            }
        };
        if created {
            self.ready
                .lock()
                .expect("topic set")
                .insert(topic.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn a_dead_letter_says_why_and_where_from() {
        let letter = Letter {
            source: ("llm.telemetry".into(), 2),
            offset: 41,
            key: None,
            payload: Some(b"{}".to_vec()),
            reason: Reason::Invalid,
            errors: vec![
                FieldError::new("latency_ms", "below 0.1"),
                FieldError::new("", "whole"),
            ],
        };
        let headers = letter.headers();
        let value = |name: &str| {
            let header = headers.iter().find(|h| h.key == name).expect(name);
            String::from_utf8(header.value.unwrap().to_vec()).unwrap()
        };
        let error: serde_json::Value = serde_json::from_str(&value(ERROR_HEADER)).unwrap();
        assert_eq!(error["reason"], "invalid");
        assert_eq!(error["message"], "latency_ms: below 0.1; whole");
        assert_eq!(error["errors"][0]["field"], "latency_ms");
        assert_eq!(value(REASON_HEADER), "invalid");
        assert_eq!(value(TOPIC_HEADER), "llm.telemetry");
        assert_eq!(value(PARTITION_HEADER), "2");
        assert_eq!(value(OFFSET_HEADER), "41");
    }
}
