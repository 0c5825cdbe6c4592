//! A router's configuration: one YAML file, every key overridable by environment variable
//! (`SENTINEL_<SECTION>__<KEY>`, loaded by `sentinel-config`), e.g.
//! `SENTINEL_ROUTER__SEEDS='[sentinel-0.sentinel:7400]'`, `SENTINEL_HTTP__LISTEN=0.0.0.0:8080`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sentinel_config::LogSection;
use sentinel_core::{RedactionConfig, ValidationBounds};
use sentinel_tls::{CertFiles, SecuritySection};
use serde::{Deserialize, Serialize};

pub use crate::cache::CacheSection;
use crate::error::RouterError;

/// Everything a router is configured with.
///
/// It serializes with every key (the check of `docs/configuration.md` relies on it).
/// Serialized and `Debug` output show `cache.redis_url` and `kafka.properties` as given,
/// credentials included: log neither.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// How the router finds the cluster and talks to its nodes.
    pub router: RouterSection,
    /// How calls to the nodes are protected: mutual TLS, or (development only) nothing.
    #[serde(default)]
    pub security: SecuritySection,
    /// What ingestion accepts and how events are batched toward shard leaders.
    #[serde(default)]
    pub ingest: IngestSection,
    /// The REST server.
    #[serde(default)]
    pub http: HttpSection,
    /// The public gRPC server.
    #[serde(default)]
    pub grpc: GrpcSection,
    /// Who may call the API.
    #[serde(default)]
    pub auth: AuthSection,
    /// The optional Redis cache of query answers.
    #[serde(default)]
    pub cache: CacheSection,
    /// Kafka ingestion (off unless `kafka.brokers` is set).
    #[serde(default)]
    pub kafka: crate::kafka::config::KafkaSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
}

impl RouterConfig {
    /// Reads `path` (when given) and applies `SENTINEL_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
    ) -> Result<RouterConfig, RouterError> {
        Ok(sentinel_config::load(path, env)?)
    }
}

/// How the router finds the cluster and talks to its nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterSection {
    /// Nodes (host:port of their gRPC listener) asked for the cluster layout; any one suffices.
    pub seeds: Vec<String>,
    /// How often the routing table is refreshed when nothing prompts it.
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// Longest wait for one call to a node.
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
    /// How long a call keeps retrying while its shard has no reachable leader.
    #[serde(default = "default_retry_for_ms")]
    pub retry_for_ms: u64,
    /// First pause between retries; it doubles after each.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Longest pause between retries.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Longest the router stays ready without a refresh of its routing table, or while
    /// calls to shard leaders fail, without an answer from one.
    #[serde(default = "default_ready_max_age_ms")]
    pub ready_max_age_ms: u64,
}

fn default_refresh_ms() -> u64 {
    5_000
}

fn default_rpc_timeout_ms() -> u64 {
    10_000
}

fn default_retry_for_ms() -> u64 {
    30_000
}

fn default_backoff_initial_ms() -> u64 {
    50
}

fn default_backoff_max_ms() -> u64 {
    2_000
}

fn default_ready_max_age_ms() -> u64 {
    20_000
}

impl RouterSection {
    /// [`RouterSection::refresh_ms`] as a duration.
    pub fn refresh(&self) -> Duration {
        Duration::from_millis(self.refresh_ms)
    }

    /// [`RouterSection::rpc_timeout_ms`] as a duration.
    pub fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }

    /// [`RouterSection::retry_for_ms`] as a duration.
    pub fn retry_for(&self) -> Duration {
        Duration::from_millis(self.retry_for_ms)
    }

    /// [`RouterSection::ready_max_age_ms`] as a duration, at least one refresh period
    /// and one call's timeout (a healthy router refreshes that often).
    pub fn ready_max_age(&self) -> Duration {
        Duration::from_millis(
            self.ready_max_age_ms
                .max(self.refresh_ms.saturating_add(self.rpc_timeout_ms)),
        )
    }
}

/// What ingestion accepts and how events are batched.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// Validation bounds (the same keys as a node's).
    pub validation: ValidationBounds,
    /// PII redaction (the same keys as a node's).
    pub redaction: RedactionConfig,
    /// Batching toward shard leaders.
    pub batch: BatchConfig,
    /// Most events in one REST or gRPC ingestion request; larger requests are refused whole.
    pub max_events_per_request: usize,
    /// Most problems of rejected events one ingestion answer lists; the rest are counted.
    pub max_listed_problems: usize,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            validation: ValidationBounds::default(),
            redaction: RedactionConfig::default(),
            batch: BatchConfig::default(),
            max_events_per_request: 10_000,
            max_listed_problems: 100,
        }
    }
}

/// Batching toward shard leaders and the memory it may hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one ingest call (at most the nodes' `ingest.max_batch_events`).
    pub max_events: usize,
    /// Most event bytes in one ingest call.
    pub max_bytes: usize,
    /// Longest an event waits for its batch to fill before it is sent.
    pub max_delay_ms: u64,
    /// Event bytes queued or in flight, all shards together; callers wait beyond it.
    pub max_in_flight_bytes: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: 1_000,
            max_bytes: 4 << 20,
            max_delay_ms: 5,
            max_in_flight_bytes: 64 << 20,
        }
    }
}

/// The REST server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address of the REST API, `/metrics` and `/health/*`.
    pub listen: SocketAddr,
    /// Largest request body, before and after gzip decoding; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Longest a REST or gRPC request may take; slower ones get 504 (DEADLINE_EXCEEDED).
    pub request_timeout_ms: u64,
    /// Origins browsers may call the API from (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Serve HTTPS with this certificate (absent: plain HTTP).
    pub tls: Option<CertFiles>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 10 << 20,
            request_timeout_ms: 60_000,
            cors_origins: Vec::new(),
            tls: None,
        }
    }
}

/// Who may call ingestion and queries (REST and gRPC); health, metrics and the OpenAPI
/// document stay open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// SHA-256 hashes of the accepted API keys, `sha256:<hex>`; empty: no key needed.
    pub api_keys: Vec<String>,
}

/// The public gRPC server (`sentinel.v1.Sentinel`, with server reflection).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSection {
    /// Listen address of the gRPC API.
    pub listen: SocketAddr,
    /// Serve gRPC over TLS with this certificate (absent: plaintext).
    pub tls: Option<CertFiles>,
}

impl Default for GrpcSection {
    fn default() -> Self {
        GrpcSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 7500)),
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_config::LogFormat;

    #[test]
    fn the_annotated_example_is_a_valid_configuration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sentinel-router.example.yaml");
        let config = RouterConfig::load(Some(&path), std::iter::empty::<(&str, &str)>()).unwrap();
        assert_eq!(config.router.seeds.len(), 3);
        assert_eq!(config.http.listen.port(), 8080);
        assert_eq!(config.grpc.listen.port(), 7500);
        assert_eq!(config.ingest.batch.max_events, 1_000);
        assert_eq!(config.ingest.validation.max_tokens, 100_000);
        assert_eq!(config.ingest.redaction.extra_patterns.len(), 1);
        assert_eq!(config.log.format, LogFormat::Text);
        assert_eq!(config.kafka, crate::kafka::config::KafkaSection::default());
        sentinel_core::Intake::new(config.ingest.validation, &config.ingest.redaction).unwrap();
    }

    #[test]
    fn seeds_are_required_and_the_environment_overrides() {
        let err = RouterConfig::load(None, std::iter::empty::<(&str, &str)>()).unwrap_err();
        assert!(err.to_string().contains("router"), "{err}");
        let config = RouterConfig::load(
            None,
            [
                ("SENTINEL_ROUTER__SEEDS", "[127.0.0.1:7400]"),
                ("SENTINEL_HTTP__MAX_BODY_BYTES", "1024"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .unwrap();
        assert_eq!(config.router.seeds, ["127.0.0.1:7400"]);
        assert_eq!(config.http.max_body_bytes, 1024);
        assert_eq!(config.router.retry_for(), Duration::from_secs(30));
    }

    #[test]
    fn kafka_is_off_unless_brokers_are_set_and_every_key_comes_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| {
            let mut all = vec![("SENTINEL_ROUTER__SEEDS", "[127.0.0.1:7400]")];
            all.extend_from_slice(pairs);
            RouterConfig::load(
                None,
                all.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())),
            )
        };
        let config = env(&[]).unwrap();
        assert!(!config.kafka.enabled());
        assert_eq!(config.kafka.topics, ["llm.telemetry", "llm-telemetry"]);
        let config = env(&[
            ("SENTINEL_KAFKA__BROKERS", "kafka-0:9092,kafka-1:9092"),
            ("SENTINEL_KAFKA__TOPICS", "[llm.telemetry]"),
            ("SENTINEL_KAFKA__GROUP_ID", "routers"),
            ("SENTINEL_KAFKA__COMMIT_INTERVAL_MS", "250"),
            ("SENTINEL_KAFKA__PROPERTIES__SASL.PASSWORD", "secret"),
            ("SENTINEL_KAFKA__PROPERTIES__FETCH.WAIT.MAX.MS", "20"),
        ])
        .unwrap();
        let kafka = &config.kafka;
        assert!(kafka.enabled());
        assert_eq!(kafka.brokers, ["kafka-0:9092", "kafka-1:9092"]);
        assert_eq!(kafka.topics, ["llm.telemetry"]);
        assert_eq!(kafka.group_id, "routers");
        assert_eq!(kafka.commit_interval(), Duration::from_millis(250));
        assert_eq!(kafka.properties["sasl.password"], "secret");
        assert_eq!(kafka.properties["fetch.wait.max.ms"], "20");
        let err = env(&[("SENTINEL_KAFKA__BROKER", "x:1")]).unwrap_err();
        assert!(err.to_string().contains("kafka"), "{err}");
    }
}
