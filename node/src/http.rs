//! The HTTP server of a node: `/metrics`, `/health/live` and `/health/ready`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};

use crate::host::Host;
use crate::metrics::NodeMetrics;

#[derive(Clone)]
struct Shared {
    host: Arc<Host>,
    metrics: NodeMetrics,
}

/// The routes of the HTTP server.
pub fn router(host: Arc<Host>, metrics: NodeMetrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .with_state(Shared { host, metrics })
}

/// Health while the node decides whether to create or join the cluster: live, not ready.
pub fn starting() -> Router {
    Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route(
            "/health/ready",
            get(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: waiting to create or join the cluster\n",
                )
            }),
        )
}

async fn render_metrics(State(shared): State<Shared>) -> impl IntoResponse {
    shared.metrics.sample(&shared.host);
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&shared.metrics.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_owned())],
            e.to_string().into_bytes(),
        ),
    }
}

/// Why the node is not ready, or `None` when it is: every Raft group runs, the node is
/// registered, and every local replica has a leader and has applied what it received.
pub fn not_ready(host: &Host) -> Option<String> {
    if let Some((group, error)) = host.failure() {
        return Some(format!("raft group {group} stopped: {error}"));
    }
    if host.registry().address(host.id).is_none() {
        return Some("not registered in the cluster yet".into());
    }
    // a replica placement no longer wants here is on its way out: it may know no
    // leader any more (it was removed before it heard so) and says nothing of this node
    let placement = host.placement();
    for replica in host.replicas() {
        if !placement.holds(replica.shard, host.id) {
            continue;
        }
        let metrics = replica.metrics();
        if crate::host::known_leader(&metrics).is_none() {
            return Some(format!("shard {} has no leader", replica.shard));
        }
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        if metrics.last_log_index.unwrap_or(0) > applied + crate::steps::CAUGHT_UP_ENTRIES {
            return Some(format!("shard {} is catching up", replica.shard));
        }
    }
    None
}

async fn ready(State(shared): State<Shared>) -> impl IntoResponse {
    match not_ready(&shared.host) {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
