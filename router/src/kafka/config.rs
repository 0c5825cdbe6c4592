//! The `kafka` section of a router's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Kafka ingestion: off unless `brokers` is set.
///
/// Every key can be set from the environment like any other, e.g.
/// `SENTINEL_KAFKA__BROKERS=kafka-0:9092,kafka-1:9092`,
/// `SENTINEL_KAFKA__TOPICS='[llm.telemetry]'`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap brokers (`host:port`), as a list or one comma-separated string;
    /// empty: the router does not consume Kafka.
    #[serde(deserialize_with = "string_list")]
    pub brokers: Vec<String>,
    /// The consumer group every router joins; partitions are shared among its members.
    pub group_id: String,
    /// Topics consumed, as a list or one comma-separated string. A topic that does not
    /// exist yet is picked up once it is created.
    #[serde(deserialize_with = "string_list")]
    pub topics: Vec<String>,
    /// Most messages read but not settled yet (committed by their shard or dead-lettered);
    /// the router stops reading while this many are in flight.
    pub max_pending_messages: usize,
    /// How often settled offsets are committed (they are also committed when partitions
    /// are revoked and on shutdown).
    pub commit_interval_ms: u64,
    /// The group's `session.timeout.ms`: how long a silent router keeps its partitions.
    pub session_timeout_ms: u64,
    /// The most a router prefetches from the brokers (`queued.max.messages.kbytes`).
    pub max_prefetch_kbytes: u64,
    /// On shutdown, the longest wait for messages in flight to settle before the last
    /// commit; the ones still unsettled are read again by the next owner.
    pub shutdown_timeout_ms: u64,
    /// Create missing dead-letter topics (`<topic>.dlq`) at start, with
    /// `dead_letter_partitions` partitions and the broker's default replication.
    pub create_dead_letter_topics: bool,
    /// Partitions of a dead-letter topic the router creates.
    pub dead_letter_partitions: i32,
    /// How often consumer lag is sampled (`statistics.interval.ms`); 0: never.
    pub statistics_interval_ms: u64,
    /// Further librdkafka properties for the consumer and the dead-letter producer
    /// (e.g. `fetch.wait.max.ms`, `client.rack`), applied last; secrets belong in the
    /// environment (`SENTINEL_KAFKA__PROPERTIES__<NAME>=...`). librdkafka is built
    /// without TLS and SASL here (PLAINTEXT only).
    #[serde(deserialize_with = "scalar_map")]
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: Vec::new(),
            group_id: "sentinel-router".into(),
            topics: vec!["llm.telemetry".into(), "llm-telemetry".into()],
            max_pending_messages: 10_000,
            commit_interval_ms: 1_000,
            session_timeout_ms: 10_000,
            max_prefetch_kbytes: 16 * 1024,
            shutdown_timeout_ms: 10_000,
            create_dead_letter_topics: true,
            dead_letter_partitions: 1,
            statistics_interval_ms: 5_000,
            properties: BTreeMap::new(),
        }
    }
}

impl KafkaSection {
    /// Whether the router consumes Kafka.
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }

    /// The dead-letter topic of `topic`.
    pub fn dead_letter_topic(topic: &str) -> String {
        format!("{topic}.dlq")
    }

    /// Every problem of the section (checked only when Kafka is enabled).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.group_id.trim().is_empty() {
            problems.push("kafka.group_id: must not be empty".to_owned());
        }
        if self.topics.is_empty() {
            problems.push("kafka.topics: name at least one topic".to_owned());
        }
        if let Some(topic) = self.topics.iter().find(|t| t.ends_with(".dlq")) {
            problems.push(format!(
                "kafka.topics: `{topic}` is a dead-letter topic; consuming it would loop"
            ));
        }
        if self.max_pending_messages == 0 {
            problems.push("kafka.max_pending_messages: must be at least 1".to_owned());
        }
        if self.commit_interval_ms == 0 {
            problems.push("kafka.commit_interval_ms: must be at least 1".to_owned());
        }
        if self.dead_letter_partitions < 1 {
            problems.push("kafka.dead_letter_partitions: must be at least 1".to_owned());
        }
        problems
    }

    /// [`KafkaSection::commit_interval_ms`] as a duration.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms)
    }

    /// [`KafkaSection::shutdown_timeout_ms`] as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }
}

/// A list of strings, or one string of comma-separated items.
fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Items {
        One(String),
        Many(Vec<String>),
    }
    let items = match Items::deserialize(deserializer)? {
        Items::One(text) => text.split(',').map(str::to_owned).collect(),
        Items::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

/// A map whose values are strings, numbers or booleans, all kept as text.
fn scalar_map<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Int(i64),
        Float(f64),
        Text(String),
    }
    Ok(BTreeMap::<String, Scalar>::deserialize(deserializer)?
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                Scalar::Bool(b) => b.to_string(),
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Text(t) => t,
            };
            (key, value)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: serde_json::Value) -> Result<KafkaSection, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn kafka_is_off_by_default_with_both_usual_topic_names() {
        let section = KafkaSection::default();
        assert!(!section.enabled());
        assert_eq!(section.topics, ["llm.telemetry", "llm-telemetry"]);
        assert_eq!(section.group_id, "sentinel-router");
        assert!(section.problems().is_empty());
        assert_eq!(
            KafkaSection::dead_letter_topic("llm.telemetry"),
            "llm.telemetry.dlq"
        );
    }

    #[test]
    fn lists_are_lists_or_comma_separated_strings() {
        let section = parse(serde_json::json!({
            "brokers": "kafka-0:9092, kafka-1:9092,",
            "topics": ["a", " b "],
        }))
        .unwrap();
        assert!(section.enabled());
        assert_eq!(section.brokers, ["kafka-0:9092", "kafka-1:9092"]);
        assert_eq!(section.topics, ["a", "b"]);
        assert_eq!(section.max_pending_messages, 10_000);
        let section = parse(serde_json::json!({"brokers": ""})).unwrap();
        assert!(!section.enabled());
    }

    #[test]
    fn properties_keep_scalars_as_text_and_unknown_keys_are_refused() {
        let section = parse(serde_json::json!({
            "properties": {"fetch.wait.max.ms": 50, "check.crcs": true, "client.rack": "r1"},
        }))
        .unwrap();
        assert_eq!(section.properties["fetch.wait.max.ms"], "50");
        assert_eq!(section.properties["check.crcs"], "true");
        assert_eq!(section.properties["client.rack"], "r1");
        assert!(parse(serde_json::json!({"broker": "x:1"})).is_err());
        assert!(parse(serde_json::json!({"properties": {"a": [1]}})).is_err());
    }

    #[test]
    fn problems_are_listed() {
        let section = KafkaSection {
            group_id: " ".into(),
            topics: vec!["llm.telemetry.dlq".into()],
            max_pending_messages: 0,
            dead_letter_partitions: 0,
            ..KafkaSection::default()
        };
        let problems = section.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[1].contains("loop"));
    }
}
