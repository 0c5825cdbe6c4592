//! The REST query, incident, silence, cluster-status, health and metrics handlers: each
//! checks its request and calls the operation both APIs share.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sentinel_core::anomaly::now_ms;
use sentinel_proto::ErrorCode;
use serde_json::{json, Value};

use crate::answers::{cluster_status_answer, query_answer, QueryRoute};
use crate::control::{self, ActorInput, Change};
use crate::query;
use crate::service::{ApiError, ApiState};

use super::request::{path_id, read_body, Shared};

pub(super) async fn ready(State(api): Shared) -> Response {
    match api.table.not_ready() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => ApiError::new(ErrorCode::NotReady, reason).into_response(),
    }
}

pub(super) async fn render_metrics(State(api): Shared) -> Response {
    match api.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => ApiError::new(ErrorCode::Internal, e.to_string()).into_response(),
    }
}

async fn answer(
    api: &ApiState,
    route: QueryRoute,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let json = query_answer(api, route, query.as_deref().into()).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

pub(super) async fn telemetry(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Telemetry, query).await
}

pub(super) async fn anomalies(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Anomalies, query).await
}

pub(super) async fn recent_anomalies(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::RecentAnomalies, query).await
}

pub(super) async fn baselines(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Baselines, query).await
}

pub(super) async fn incidents(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Incidents, query).await
}

pub(super) async fn incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(path)?;
    let consistency =
        query::incident_consistency(query.as_deref()).map_err(ApiError::parameters)?;
    Ok(Json(control::incident(&api, &id, consistency).await?))
}

/// Reads the `{by, comment}` body of an incident change and makes it.
async fn change_incident(
    api: &ApiState,
    path: Result<Path<String>, PathRejection>,
    body: Body,
    change: Change,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(path)?;
    let body = read_body(body, api.http.max_body_bytes).await?;
    let actor = ActorInput::from_body(&body)?;
    Ok(Json(
        control::change_incident(api, &id, change, actor).await?,
    ))
}

pub(super) async fn acknowledge_incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change_incident(&api, path, body, Change::Acknowledge).await
}

pub(super) async fn resolve_incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change_incident(&api, path, body, Change::Resolve).await
}

pub(super) async fn silences(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Silences, query).await
}

pub(super) async fn add_silence(State(api): Shared, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, api.http.max_body_bytes).await?;
    let silence = control::silence_from_body(&body, control::new_silence_id(), now_ms())?;
    let added = control::add_silence(&api, &silence).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

pub(super) async fn expire_silence(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(path)?;
    Ok(Json(control::expire_silence(&api, &id).await?))
}

pub(super) async fn cluster_status(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    query::no_parameters(query.as_deref()).map_err(ApiError::parameters)?;
    Ok(Json(cluster_status_answer(&api).await?))
}
