//! Kafka ingestion: the router consumes the configured topics (default `llm.telemetry`
//! and `llm-telemetry`) in a consumer group and forwards every event to its shard with
//! its source position, exactly once.
//!
//! * Each message holds one event in any accepted shape (see [`message`]); it goes
//!   through the same [`sentinel_core::Intake`] as HTTP ingestion (parse, redact,
//!   validate) and is submitted to a [`Forwarder`] of its own with its partition and
//!   offset. Submitting waits while the forwarder's byte budget is used up, so reading
//!   slows down when the cluster is slower than the input; `kafka.max_pending_messages`
//!   bounds the messages in flight. Nothing is dropped.
//! * Offsets: a partition's offset is committed only when every message up to it has
//!   settled: its event is committed by its shard (applied, or a duplicate of one
//!   applied before) or the message went to the dead-letter topic (see [`tracker`]).
//!   Commits happen every `kafka.commit_interval_ms`, when partitions are revoked and
//!   on shutdown; each is one synchronous round trip, so a failed one is retried.
//! * Exactly once: each shard skips offsets at or below the highest it applied for the
//!   partition, and the forwarder never gives up a sourced batch while the router runs,
//!   so a replay (after a crash, a rebalance, or with two routers briefly owning one
//!   partition) applies nothing twice and skips nothing.
//! * Poison (empty or not JSON, wrong shape, failing validation, or refused by the shard)
//!   goes to `<topic>.dlq` with the error and source position in headers (see
//!   [`dead_letter`]); the partition goes on.
//! * Rebalances: on revoke the settled offsets are committed and the partition's pending
//!   state is dropped (settlements of its messages in flight then count for nothing); on
//!   assign reading starts at the committed offset.
//! * Shutdown: reading stops, messages in flight get up to `kafka.shutdown_timeout_ms` to
//!   settle, settled offsets are committed and the router leaves the group.

pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod message;
pub mod tracker;

use std::sync::Arc;

use sentinel_core::Intake;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::KafkaSection;
pub use self::consumer::KafkaConsumer;
/// The Kafka client library, for tools and tests that talk to the same brokers.
pub use rdkafka;

use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::forward::Forwarder;
use crate::metrics::RouterMetrics;
use crate::routing::RoutingTable;

/// The librdkafka settings every client of the router shares: the brokers and the
/// extra `kafka.properties`.
pub fn client_config(section: &KafkaSection) -> rdkafka::ClientConfig {
    let mut client = rdkafka::ClientConfig::new();
    client
        .set("bootstrap.servers", section.brokers.join(","))
        .set("client.id", "sentinel-router");
    for (key, value) in &section.properties {
        client.set(key, value);
    }
    client
}

/// Starts consuming Kafka when `kafka.brokers` is configured; the task ends after `stop`
/// turns true (or its sender is dropped) and the consumer has left its group.
pub fn start(
    config: &RouterConfig,
    table: Arc<RoutingTable>,
    intake: Arc<Intake>,
    metrics: RouterMetrics,
    stop: watch::Receiver<bool>,
) -> Result<Option<JoinHandle<()>>, RouterError> {
    let section = &config.kafka;
    if !section.enabled() {
        return Ok(None);
    }
    let problems = section.problems();
    if !problems.is_empty() {
        return Err(RouterError::Kafka(problems.join("; ")));
    }
    // A forwarder of its own: sourced batches are retried until answered, and their
    // byte budget is separate from HTTP ingestion's.
    let forwarder = Forwarder::new(table.clone(), config.ingest.batch.clone(), metrics.clone());
    let consumer = KafkaConsumer::new(
        section,
        &client_config(section),
        forwarder,
        intake,
        table,
        metrics.kafka.clone(),
    )
    .map_err(|e| RouterError::Kafka(format!("creating the Kafka client: {e}")))?;
    Ok(Some(tokio::spawn(consumer.run(stop))))
}
