//! Sentinel's shard server: hosts the metadata Raft group and the shard replicas placed on
//! this node, serves ingestion and queries over gRPC, moves replicas and leaderships to
//! where placement wants them, delivers alerts and exports telemetry from the shards it
//! leads, and exports metrics and health over HTTP.

pub mod alerting;
pub mod bootstrap;
pub mod calls;
pub mod clock;
pub mod config;
pub mod elections;
pub mod error;
pub mod export;
pub mod handover;
pub mod host;
pub mod http;
pub mod identity;
pub mod intake;
pub mod leader;
pub mod membership;
pub mod metrics;
pub mod placement;
pub mod process;
pub mod reconciler;
pub mod registry;
pub mod server;
pub mod service;
pub mod status;
pub mod steadiness;
pub mod steps;
pub mod transport;

pub use config::NodeConfig;
pub use error::NodeError;
pub use server::run;

pub(crate) use clock::now_ms;
