//! Sentinel's shard server: hosts the metadata Raft group and the shard replicas placed on
//! this node, serves ingestion and queries over gRPC, moves replicas and leaderships to
//! where placement wants them, delivers alerts and exports telemetry from the shards it
//! leads, and exports metrics and health over HTTP.

pub mod alerting;
pub mod bootstrap;
pub mod cluster;
pub mod config;
pub mod elections;
pub mod error;
pub mod export;
pub mod host;
pub mod http;
pub mod identity;
pub mod intake;
pub mod leader;
pub mod metrics;
pub mod placement;
pub mod process;
pub mod registry;
pub mod server;
pub mod service;
pub mod transport;

pub use config::NodeConfig;
pub use error::NodeError;
pub use server::run;

/// Wall-clock time in milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
