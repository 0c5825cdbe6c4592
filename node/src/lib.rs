//! Sentinel's shard server.

pub mod export;
