//! Sentinel's storage engine: the openraft log, vote and state machine of many shard
//! replicas in one RocksDB per node.
//!
//! Every key carries its shard id as a prefix (see `keys`), so hundreds of shards share
//! one database, one WAL and one block cache, and a shard can be snapshotted, moved and
//! dropped as a unit. Log appends of all shards are made durable together by one WAL
//! fsync ([`Engine`]). Applying committed entries runs `sentinel-core`'s detection and
//! writes telemetry, anomalies, the alert outbox and the telemetry export queue
//! ([`ShardStateMachine`]); queries read through a [`ShardReader`].

mod alert_rows;
mod backend;
mod command;
mod document;
mod engine;
mod error;
mod keys;
mod log;
mod machine;
mod reader;
mod snapshot;
mod state;

pub use backend::{EngineOptions, EngineStats};
pub use command::{
    Command, EventOutcome, IngestBatch, IngestEvent, IngestOutcome, KeyLimit, KeyLimits, Response,
    Retention, ShardSettings, SourcePartition,
};
pub use document::{Applied, Document, DocumentConfig, DocumentMachine, DocumentReader};
pub use engine::{Engine, RocksDbStats, VolumeStats};
pub use error::Error;
pub use log::{LogConfig, ShardLog};
pub use machine::{ShardSnapshotBuilder, ShardStateMachine};
pub use reader::{
    ExportEntry, ExportItem, IncidentQuery, OutboxEntry, Page, ShardReader, ShardSummary,
    TelemetryQuery,
};
pub use state::TelemetryRecord;

openraft::declare_raft_types!(
    /// The openraft types of a shard group.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);
