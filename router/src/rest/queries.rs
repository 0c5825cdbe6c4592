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
use sentinel_proto::v1::IncidentRef;
use sentinel_proto::ErrorCode;
use serde_json::{json, Value};

use crate::answers::{cluster_status_answer, query_answer, QueryInput};
use crate::control::{self, ActorInput, Change};
use crate::query::{self, QueryFields};
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

/// The answer of a list query whose REST text reads into `fields`, made by `input`.
async fn answer<T: QueryFields>(
    api: &ApiState,
    query: Option<String>,
    input: fn(T) -> QueryInput,
) -> Result<Response, ApiError> {
    let (fields, problems) = query::fields_of(query.as_deref());
    let json = query_answer(api, &input(fields), problems).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

pub(super) async fn telemetry(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, query, QueryInput::Telemetry).await
}

pub(super) async fn anomalies(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, query, QueryInput::Anomalies).await
}

pub(super) async fn recent_anomalies(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, query, QueryInput::RecentAnomalies).await
}

pub(super) async fn baselines(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, query, QueryInput::Baselines).await
}

pub(super) async fn incidents(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, query, QueryInput::Incidents).await
}

pub(super) async fn incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(path)?;
    let (fields, problems) = query::fields_of::<IncidentRef>(query.as_deref());
    let consistency =
        query::incident_consistency(&fields, problems).map_err(ApiError::parameters)?;
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
    answer(&api, query, QueryInput::Silences).await
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
