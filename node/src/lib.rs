//! Sentinel's shard server.
