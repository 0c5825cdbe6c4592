//! A node's configuration: one YAML file, every key overridable by environment variable
//! (loaded by `sentinel-config`).
//!
//! `SENTINEL_<SECTION>__<KEY>` overrides `section.key` (a double underscore separates
//! levels, so keys keep their single underscores): `SENTINEL_NODE__DATA_DIR=/data`,
//! `SENTINEL_CLUSTER__SHARDS=64`. Values are read as YAML scalars. Secrets are never in
//! the file: sinks name the environment variable or file that holds them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use sentinel_config::{LogFormat, LogSection};
use sentinel_core::{DetectionConfig, RedactionConfig, ValidationBounds};
use sentinel_storage_engine::KeyLimits;
use sentinel_tls::SecuritySection;
use serde::{Deserialize, Serialize};

use crate::alerting::AlertingConfig;
use crate::error::NodeError;
use crate::export::ExportConfig;
use crate::registry::MEMBER_STRIDE;

/// Everything a node is configured with.
///
/// It serializes with every key (the check of `docs/configuration.md` relies on it); URLs
/// of alert sinks serialize without their credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity, addresses, data and seeds.
    pub node: NodeSection,
    /// How the gRPC port is protected: mutual TLS, or (development only) nothing.
    #[serde(default)]
    pub security: SecuritySection,
    /// Shard layout, used when this node creates the cluster.
    #[serde(default)]
    pub cluster: ClusterSection,
    /// Raft timing and snapshots.
    #[serde(default)]
    pub raft: RaftSection,
    /// What ingestion accepts.
    #[serde(default)]
    pub ingest: IngestSection,
    /// How long telemetry and anomalies are kept.
    #[serde(default)]
    pub retention: RetentionSection,
    /// Detection and incident settings, replicated to every shard by its leader.
    #[serde(default)]
    pub detection: DetectionConfig,
    /// Alert delivery from the shards this node leads.
    #[serde(default)]
    pub alerting: AlertingConfig,
    /// Telemetry and anomaly export to InfluxDB v2 (off when absent).
    #[serde(default)]
    pub export: Option<ExportConfig>,
    /// The HTTP server for metrics and health.
    #[serde(default)]
    pub http: HttpSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
}

/// Identity, addresses, data and seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node id (the StatefulSet ordinal), unique in the cluster, stable across
    /// restarts and below 1000; the Raft member id is derived from it.
    pub id: u64,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// host:port peers and routers reach this node at (default: the listen address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// The cluster's nodes (host:port), to create or join it through: a node with an
    /// empty data directory creates the cluster only when every other seed answers
    /// with an empty one too and it has the lowest id; otherwise it joins.
    #[serde(default)]
    pub seeds: Vec<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7400))
}

impl NodeSection {
    /// The address others reach this node at.
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The seeds other than this node.
    pub fn other_seeds(&self) -> Vec<String> {
        let own = self.advertised();
        self.seeds
            .iter()
            .filter(|seed| **seed != own)
            .cloned()
            .collect()
    }
}

/// Shard layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Number of shards, fixed at creation.
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
    /// How long a node may stay unreachable before placement stops counting it and its
    /// shards re-replicate on the others (when enough other nodes are active), seconds.
    pub node_down_after_s: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            shards: 32,
            replicas: 3,
            node_down_after_s: 1800,
        }
    }
}

/// Raft timing and snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSection {
    /// Leader heartbeat period.
    pub heartbeat_ms: u64,
    /// Election timeout range.
    pub election_timeout_min_ms: u64,
    /// Election timeout range.
    pub election_timeout_max_ms: u64,
    /// Log entries between snapshots of a shard.
    pub snapshot_every_entries: u64,
    /// Shard reconciliation period (membership, leadership, stale replicas).
    pub reconcile_ms: u64,
    /// How long a node must have been ready, without a pause, after it started or was
    /// paused, before it takes back the leaderships placement prefers it for.
    pub leader_hold_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_every_entries: 10_000,
            reconcile_ms: 1000,
            leader_hold_ms: 10_000,
        }
    }
}

/// What ingestion accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// Most events in one ingest call.
    pub max_batch_events: usize,
    /// Most (service, model) keys one shard keeps baselines for (0: no bound); events of
    /// further keys are refused.
    pub max_keys_per_shard: u64,
    /// Most models of one service in one shard (0: no bound); events of further models are
    /// refused.
    pub max_models_per_service: u64,
    /// Validation bounds.
    pub validation: ValidationBounds,
    /// PII redaction.
    pub redaction: RedactionConfig,
}

impl IngestSection {
    /// The key bounds every shard applies.
    pub fn key_limits(&self) -> KeyLimits {
        KeyLimits {
            max_per_shard: self.max_keys_per_shard,
            max_models_per_service: self.max_models_per_service,
        }
    }
}

impl Default for IngestSection {
    fn default() -> Self {
        let keys = KeyLimits::default();
        IngestSection {
            max_batch_events: 10_000,
            max_keys_per_shard: keys.max_per_shard,
            max_models_per_service: keys.max_models_per_service,
            validation: ValidationBounds::default(),
            redaction: RedactionConfig::default(),
        }
    }
}

/// Retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSection {
    /// Telemetry older than this is deleted.
    pub telemetry_hours: u64,
    /// Anomalies older than this are deleted.
    pub anomalies_days: u64,
    /// How often the shard leader proposes a purge.
    pub purge_every_s: u64,
}

impl Default for RetentionSection {
    fn default() -> Self {
        RetentionSection {
            telemetry_hours: 24,
            anomalies_days: 30,
            purge_every_s: 300,
        }
    }
}

/// The HTTP server for metrics and health.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Listen address of `/metrics`, `/health/live` and `/health/ready`.
    pub listen: SocketAddr,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([0, 0, 0, 0], 9400)),
        }
    }
}

impl NodeConfig {
    /// Reads `path` (when given) and applies `SENTINEL_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (impl AsRef<str>, impl AsRef<str>)>,
    ) -> Result<NodeConfig, NodeError> {
        Ok(sentinel_config::load(path, env)?)
    }

    /// Checks the values that load but cannot work, listing every problem.
    pub fn check(&self) -> Result<(), NodeError> {
        if self.node.id >= MEMBER_STRIDE {
            return Err(NodeError::Config {
                key: "node.id".into(),
                problem: format!("{} is not below {MEMBER_STRIDE}", self.node.id),
            });
        }
        self.detection.check().map_err(NodeError::Detection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_and_fills_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(
            &path,
            "node:\n  id: 1\n  data_dir: /tmp/a\ncluster:\n  shards: 16\n",
        )
        .unwrap();
        let config = NodeConfig::load(
            Some(&path),
            [
                ("SENTINEL_NODE__DATA_DIR", "/data"),
                ("SENTINEL_CLUSTER__REPLICAS", "5"),
                ("SENTINEL_INGEST__VALIDATION__MAX_TOKENS", "5000"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        assert_eq!(config.node.data_dir, PathBuf::from("/data"));
        assert_eq!((config.cluster.shards, config.cluster.replicas), (16, 5));
        assert_eq!(config.ingest.validation.max_tokens, 5000);
        assert_eq!(config.raft.heartbeat_ms, 500);
        assert!(config.node.other_seeds().is_empty());
        assert_eq!(config.cluster.node_down_after_s, 1800);
    }

    #[test]
    fn unknown_and_ill_typed_keys_are_named() {
        let err = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "1"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_NODE__COLOUR", "red"),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "one"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("node.id"), "{err}");
    }

    #[test]
    fn detection_keys_are_overridden_one_by_one_and_checked_together() {
        let config = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "1"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_DETECTION__INCIDENTS__LATENCY_CAP_MS", "30000"),
                ("SENTINEL_DETECTION__Z_SCORE__THRESHOLD", "4"),
            ],
        )
        .unwrap();
        let detection = &config.detection;
        assert_eq!(detection.incidents.latency_cap_ms, Some(30_000.0));
        assert_eq!(detection.z_score.threshold, 4.0);
        assert!(detection.z_score.enabled);
        assert_eq!(
            detection.incidents.resolve_after_ms,
            DetectionConfig::default().incidents.resolve_after_ms
        );
        config.check().unwrap();

        let config = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "1"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_DETECTION__INCIDENTS__TAIL", "0.7"),
                ("SENTINEL_DETECTION__INCIDENTS__LATENCY_CAP_MS", "-5"),
                ("SENTINEL_DETECTION__WINDOW_SIZE", "1"),
            ],
        )
        .unwrap();
        let err = config.check().unwrap_err().to_string();
        for key in [
            "detection.incidents.tail",
            "detection.incidents.latency_cap_ms",
            "detection.window_size",
        ] {
            assert!(err.contains(key), "{key} named: {err}");
        }

        let err = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "1"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_DETECTION__INCIDENTS__RESOLVE_AFTER", "10"),
            ],
        )
        .unwrap_err();
        assert!(err.to_string().contains("resolve_after"), "{err}");
    }

    #[test]
    fn the_annotated_example_is_a_valid_configuration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sentinel-node.example.yaml");
        let config = NodeConfig::load(Some(&path), std::iter::empty::<(&str, &str)>()).unwrap();
        config.check().unwrap();
        assert_eq!(config.detection, DetectionConfig::default());
        config.alerting.validate().unwrap();
        config.export.as_ref().unwrap().validate().unwrap();
        assert_eq!(config.alerting.webhooks.len(), 1);
        assert_eq!(config.cluster.shards, 32);
    }

    #[test]
    fn a_node_seeded_by_others_joins() {
        let config = NodeConfig::load(
            None,
            [
                ("SENTINEL_NODE__ID", "2"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_NODE__ADVERTISE", "sentinel-2.sentinel:7400"),
                ("SENTINEL_NODE__SEEDS", "[sentinel-0.sentinel:7400]"),
            ],
        )
        .unwrap();
        assert_eq!(config.node.other_seeds(), vec!["sentinel-0.sentinel:7400"]);
    }
}
