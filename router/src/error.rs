//! Errors of the router.

use thiserror::Error;

/// What can go wrong starting or running a router.
#[derive(Debug, Error)]
pub enum RouterError {
    /// The configuration file or environment could not be loaded.
    #[error(transparent)]
    Config(#[from] sentinel_config::ConfigError),
    /// The redaction configuration is unusable.
    #[error("configuration ingest.redaction: {0}")]
    Redaction(#[from] sentinel_core::redact::RedactError),
    /// A listener could not be bound or the server failed.
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
    /// The Redis URL of the query cache is unusable.
    #[error("configuration cache.redis_url: {0}")]
    Cache(#[from] redis::RedisError),
    /// The Kafka configuration is unusable, or its client could not be created.
    #[error("configuration kafka: {0}")]
    Kafka(String),
    /// A configured API key hash is unusable.
    #[error("configuration {0}")]
    ApiKey(#[from] crate::auth::KeyHashError),
    /// The gRPC reflection service could not read the schemas.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    /// Transport security could not be set up (no mode chosen, unreadable certificates).
    #[error(transparent)]
    Tls(#[from] sentinel_tls::TlsError),
    /// The gRPC server failed.
    #[error("serving gRPC: {0}")]
    Grpc(String),
}

/// Why a call to a shard (or to the cluster) gave no answer.
#[derive(Debug, Clone, Error)]
pub enum CallError {
    /// No node has answered the cluster layout yet.
    #[error("the routing table is not loaded yet: no node has answered")]
    NotReady,
    /// No node answered (every known node and seed was asked).
    #[error("no node answered: {reason}")]
    Unreachable {
        /// What each node said.
        reason: String,
    },
    /// The shard had no reachable leader (or replica) for as long as the router retries.
    #[error("shard {shard} is unavailable: {reason}")]
    Unavailable {
        /// The shard.
        shard: u32,
        /// The last problem seen.
        reason: String,
    },
    /// The node refused the call for a reason a retry does not fix.
    #[error("shard {shard}: {message}")]
    Refused {
        /// The shard.
        shard: u32,
        /// The gRPC status code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
}

/// The HTTP status answering `code`.
pub fn http_status(code: sentinel_proto::ErrorCode) -> axum::http::StatusCode {
    axum::http::StatusCode::from_u16(code.http_status())
        .expect("every error code's status is a valid HTTP status")
}
