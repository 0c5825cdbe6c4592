//! A node's configuration: one YAML file, every key overridable by environment variable.
//!
//! `SENTINEL_<SECTION>__<KEY>` overrides `section.key` (a double underscore separates
//! levels, so keys keep their single underscores): `SENTINEL_NODE__DATA_DIR=/data`,
//! `SENTINEL_CLUSTER__SHARDS=64`. Values are read as YAML scalars. Secrets are never in
//! the file: sinks name the environment variable or file that holds them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sentinel_core::{RedactionConfig, ValidationBounds};
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use crate::alerting::AlertingConfig;
use crate::error::NodeError;
use crate::export::ExportConfig;

/// Prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "SENTINEL_";

/// Everything a node is configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity, addresses, data and seeds.
    pub node: NodeSection,
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Node id, unique in the cluster and stable across restarts.
    pub id: u64,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// host:port peers and routers reach this node at (default: the listen address).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// Nodes to join through (host:port). Empty, or only this node's own address: this
    /// node creates the cluster when its data directory is new.
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

    /// Whether this node creates the cluster (no seed other than itself).
    pub fn creates_cluster(&self) -> bool {
        let own = self.advertised();
        self.seeds.iter().all(|seed| *seed == own)
    }
}

/// Shard layout.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Number of shards, fixed at creation.
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            shards: 32,
            replicas: 3,
        }
    }
}

/// Raft timing and snapshots.
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 500,
            election_timeout_min_ms: 1500,
            election_timeout_max_ms: 3000,
            snapshot_every_entries: 10_000,
            reconcile_ms: 1000,
        }
    }
}

/// What ingestion accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSection {
    /// Most events in one ingest call.
    pub max_batch_events: usize,
    /// Validation bounds.
    pub validation: ValidationBounds,
    /// PII redaction.
    pub redaction: RedactionConfig,
}

impl Default for IngestSection {
    fn default() -> Self {
        IngestSection {
            max_batch_events: 10_000,
            validation: ValidationBounds::default(),
            redaction: RedactionConfig::default(),
        }
    }
}

/// Retention.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,openraft=warn`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Text,
            level: "info,openraft=warn".into(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl NodeConfig {
    /// Reads `path` (when given) and applies `SENTINEL_*` overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<NodeConfig, NodeError> {
        let mut root = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| NodeError::Config {
                    key: path.display().to_string(),
                    problem: e.to_string(),
                })?;
                serde_yaml::from_str(&text).map_err(|e| NodeError::Config {
                    key: path.display().to_string(),
                    problem: e.to_string(),
                })?
            }
            None => Value::Mapping(Mapping::new()),
        };
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                override_key(&mut root, rest, &value)?;
            }
        }
        serde_yaml::from_value(root).map_err(|e| NodeError::Config {
            key: "configuration".into(),
            problem: e.to_string(),
        })
    }
}

/// Sets the key named by `SECTION__KEY` (case-insensitive) to `value` read as YAML.
fn override_key(root: &mut Value, path: &str, value: &str) -> Result<(), NodeError> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.iter().any(String::is_empty) {
        return Err(NodeError::Config {
            key: format!("{ENV_PREFIX}{path}"),
            problem: "expected SENTINEL_<SECTION>__<KEY>".into(),
        });
    }
    let parsed: Value = serde_yaml::from_str(value).unwrap_or(Value::String(value.to_owned()));
    let mut at = root;
    for part in &parts[..parts.len() - 1] {
        let map = at.as_mapping_mut().ok_or_else(|| NodeError::Config {
            key: format!("{ENV_PREFIX}{path}"),
            problem: format!("`{part}` is not a section"),
        })?;
        at = map
            .entry(Value::String(part.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    let map = at.as_mapping_mut().ok_or_else(|| NodeError::Config {
        key: format!("{ENV_PREFIX}{path}"),
        problem: "the parent is not a section".into(),
    })?;
    map.insert(Value::String(parts[parts.len() - 1].clone()), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

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
            env(&[
                ("SENTINEL_NODE__DATA_DIR", "/data"),
                ("SENTINEL_CLUSTER__REPLICAS", "5"),
                ("SENTINEL_INGEST__VALIDATION__MAX_TOKENS", "5000"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.node.data_dir, PathBuf::from("/data"));
        assert_eq!((config.cluster.shards, config.cluster.replicas), (16, 5));
        assert_eq!(config.ingest.validation.max_tokens, 5000);
        assert_eq!(config.raft.heartbeat_ms, 500);
        assert!(config.node.creates_cluster());
    }

    #[test]
    fn unknown_and_ill_typed_keys_are_named() {
        let err = NodeConfig::load(
            None,
            env(&[
                ("SENTINEL_NODE__ID", "1"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_NODE__COLOUR", "red"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = NodeConfig::load(
            None,
            env(&[
                ("SENTINEL_NODE__ID", "one"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("id"), "{err}");
    }

    #[test]
    fn the_annotated_example_is_a_valid_configuration() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sentinel-node.example.yaml");
        let config = NodeConfig::load(Some(&path), Vec::new()).unwrap();
        config.alerting.validate().unwrap();
        config.export.as_ref().unwrap().validate().unwrap();
        assert_eq!(config.alerting.webhooks.len(), 1);
        assert_eq!(config.cluster.shards, 32);
    }

    #[test]
    fn a_node_seeded_by_others_joins() {
        let config = NodeConfig::load(
            None,
            env(&[
                ("SENTINEL_NODE__ID", "2"),
                ("SENTINEL_NODE__DATA_DIR", "/d"),
                ("SENTINEL_NODE__ADVERTISE", "sentinel-2.sentinel:7400"),
                ("SENTINEL_NODE__SEEDS", "[sentinel-0.sentinel:7400]"),
            ]),
        )
        .unwrap();
        assert!(!config.node.creates_cluster());
    }
}
