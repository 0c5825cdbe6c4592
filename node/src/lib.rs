//! Sentinel's shard server.

pub mod alerting;
