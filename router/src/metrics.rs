//! The router's Prometheus metrics (`sentinel_router_*`), in a registry of its own.

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The router's metric families.
#[derive(Clone)]
pub struct RouterMetrics {
    /// The registry holding them.
    pub registry: Registry,
    /// HTTP requests by route and status.
    pub requests: IntCounterVec,
    /// Events a shard leader acknowledged (applied or duplicate).
    pub events_forwarded: IntCounter,
    /// Events rejected by validation (here or on a node).
    pub events_rejected: IntCounter,
    /// Events that got no acknowledgement because their shard stayed unavailable.
    pub events_failed: IntCounter,
    /// Duration of one ingest call to a shard leader, retries included.
    pub forward_seconds: Histogram,
    /// Calls redirected by a NotLeader answer.
    pub not_leader_redirects: IntCounter,
    /// Calls retried after a failure.
    pub retries: IntCounter,
    /// Routing-table refreshes by result (`ok`, `failed`).
    pub table_refreshes: IntCounterVec,
    /// Calls refused for want of a valid API key, by reason (`missing`, `wrong`).
    pub auth_refusals: IntCounterVec,
    /// Query-cache lookups by result (`local_hit`, `hit`, `miss`, `error`, `store_error`).
    pub cache_lookups: IntCounterVec,
    /// Kafka ingestion.
    pub kafka: KafkaMetrics,
}

/// Kafka ingestion's families (`sentinel_router_kafka_*`).
#[derive(Clone)]
pub struct KafkaMetrics {
    /// Messages read, by topic.
    pub messages: IntCounterVec,
    /// Messages produced to a dead-letter topic, by source topic and reason (`not_json`,
    /// `wrong_shape`, `invalid`, `several_events`, `rejected`).
    pub dead_letters: IntCounterVec,
    /// Offset commits by result (`ok`, `failed`).
    pub commits: IntCounterVec,
    /// Rebalance events by kind (`assign`, `revoke`, `error`).
    pub rebalances: IntCounterVec,
    /// Messages behind the partition's high watermark, per assigned partition.
    pub lag: IntGaugeVec,
    /// Offsets the broker delivered nothing at, passed over while reading forward, by topic.
    pub offsets_skipped: IntCounterVec,
}

impl RouterMetrics {
    /// Registers every family in a new registry.
    pub fn new() -> Result<RouterMetrics, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| registered(&registry, IntCounter::new(name, help)?);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels)?,
            )
        };
        Ok(RouterMetrics {
            requests: counter_vec(
                "sentinel_router_requests_total",
                "HTTP requests by route and status",
                &["route", "status"],
            )?,
            events_forwarded: counter(
                "sentinel_router_events_forwarded_total",
                "Events a shard leader acknowledged (applied or duplicate)",
            )?,
            events_rejected: counter(
                "sentinel_router_events_rejected_total",
                "Events rejected by validation",
            )?,
            events_failed: counter(
                "sentinel_router_events_failed_total",
                "Events not acknowledged because their shard stayed unavailable",
            )?,
            forward_seconds: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "sentinel_router_forward_seconds",
                        "Duration of one ingest call to a shard leader, retries included",
                    )
                    .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
                )?,
            )?,
            not_leader_redirects: counter(
                "sentinel_router_not_leader_redirects_total",
                "Calls redirected by a NotLeader answer",
            )?,
            retries: counter(
                "sentinel_router_retries_total",
                "Calls retried after a failure",
            )?,
            table_refreshes: counter_vec(
                "sentinel_router_table_refreshes_total",
                "Routing-table refreshes by result",
                &["result"],
            )?,
            cache_lookups: counter_vec(
                "sentinel_router_cache_lookups_total",
                "Query-cache lookups by result",
                &["result"],
            )?,
            auth_refusals: counter_vec(
                "sentinel_router_auth_refusals_total",
                "Calls refused for want of a valid API key, by reason",
                &["reason"],
            )?,
            kafka: KafkaMetrics {
                messages: counter_vec(
                    "sentinel_router_kafka_messages_total",
                    "Kafka messages read, by topic",
                    &["topic"],
                )?,
                dead_letters: counter_vec(
                    "sentinel_router_kafka_dead_letters_total",
                    "Kafka messages produced to the dead-letter topic, by source topic and reason",
                    &["topic", "reason"],
                )?,
                commits: counter_vec(
                    "sentinel_router_kafka_commits_total",
                    "Kafka offset commits by result",
                    &["result"],
                )?,
                rebalances: counter_vec(
                    "sentinel_router_kafka_rebalances_total",
                    "Kafka consumer-group rebalance events by kind",
                    &["kind"],
                )?,
                lag: registered(
                    &registry,
                    IntGaugeVec::new(
                        Opts::new(
                            "sentinel_router_kafka_consumer_lag",
                            "Messages behind the high watermark, per assigned partition",
                        ),
                        &["topic", "partition"],
                    )?,
                )?,
                offsets_skipped: counter_vec(
                    "sentinel_router_kafka_offsets_skipped_total",
                    "Offsets passed over while reading a partition forward, by topic",
                    &["topic"],
                )?,
            },
            registry,
        })
    }

    /// The families in the Prometheus text format.
    pub fn render(&self) -> Result<Vec<u8>, prometheus::Error> {
        let mut body = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut body)?;
        Ok(body)
    }
}

/// Registers `metric` in `registry` and hands it back.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> Result<M, prometheus::Error> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
