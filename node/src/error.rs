//! Errors of the shard server.

use thiserror::Error;

/// What can go wrong running a node.
#[derive(Debug, Error)]
pub enum NodeError {
    /// A configuration key is missing, unknown or ill-typed.
    #[error("configuration {key}: {problem}")]
    Config {
        /// The key, file or variable at fault.
        key: String,
        /// What is wrong.
        problem: String,
    },
    /// The detection settings load but cannot work.
    #[error("invalid configuration: {}", detection_problems(.0))]
    Detection(sentinel_core::config::ConfigError),
    /// The configuration file or environment could not be loaded.
    #[error(transparent)]
    Load(#[from] sentinel_config::ConfigError),
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] sentinel_storage_engine::Error),
    /// openraft refused to start or stopped.
    #[error("raft group {group}: {message}")]
    Raft {
        /// Group id.
        group: u32,
        /// openraft's error.
        message: String,
    },
    /// A listener could not be bound or a server failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Alert sinks could not be set up.
    #[error("alerting: {0}")]
    Alerting(#[from] crate::alerting::AlertingError),
    /// The exporter could not be set up.
    #[error("export: {0}")]
    Export(#[from] crate::export::ExportError),
    /// Transport security could not be set up (no mode chosen, unreadable certificates).
    #[error(transparent)]
    Tls(#[from] sentinel_tls::TlsError),
    /// Joining the cluster through the seeds failed for good.
    #[error("joining the cluster: {0}")]
    Join(String),
    /// The data directory's identity is unreadable or belongs to another node or cluster.
    #[error("node identity: {0}")]
    Identity(String),
}

impl NodeError {
    /// openraft's `error` for `group`.
    pub fn raft(group: u32, error: impl std::fmt::Display) -> NodeError {
        NodeError::Raft {
            group,
            message: error.to_string(),
        }
    }
}

/// Why one step of a background round (a shard leader's work, reconciliation) failed;
/// the round logs it and tries again on its next turn.
#[derive(Debug, Error)]
pub enum RoundError {
    /// openraft refused a write or a membership change.
    #[error("raft: {0}")]
    Raft(String),
    /// The shard's state machine rejected the command.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Reading the shard's storage failed.
    #[error("storage: {0}")]
    Storage(#[from] sentinel_storage_engine::Error),
    /// A peer, or the metadata group, refused or did not answer.
    #[error("{}", .0.message())]
    Peer(#[from] tonic::Status),
    /// Exporting to InfluxDB failed.
    #[error("export: {0}")]
    Export(#[from] crate::export::ExportError),
    /// The step did not finish in time (openraft goes on with a change it started).
    #[error("not done within {0:?}")]
    TimedOut(std::time::Duration),
}

impl RoundError {
    /// openraft's `error`.
    pub fn raft(error: impl std::fmt::Display) -> RoundError {
        RoundError::Raft(error.to_string())
    }
}

/// Every problem of the detection settings, each naming its key under `detection`.
fn detection_problems(error: &sentinel_core::config::ConfigError) -> String {
    error
        .problems
        .iter()
        .map(|problem| format!("detection.{problem}"))
        .collect::<Vec<_>>()
        .join("; ")
}
