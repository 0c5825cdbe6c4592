//! Sentinel's stateless router: serves the REST API, parses, validates and redacts
//! events, forwards them in per-shard batches to each shard's leader (following NotLeader
//! hints), and fans queries out across shards.
//!
//! The [`forward::Forwarder`] is the ingestion path every front end shares: the REST
//! API uses it without a source; a Kafka consumer submits events with their partition
//! and offsets and commits once their receipt resolves.

pub mod answers;
pub mod auth;
pub mod body;
pub mod cache;
pub mod config;
pub mod control;
pub mod error;
pub mod forward;
pub mod grpc;
pub mod ingest;
pub mod kafka;
pub mod listener;
pub mod metrics;
pub mod otlp;
pub mod query;
pub mod rest;
pub mod routing;
pub mod server;
pub mod service;

pub use config::RouterConfig;
pub use error::RouterError;
pub use server::run;
