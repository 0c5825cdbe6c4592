//! The REST API (axum): routes, middleware, ingestion, queries fanned out across shards,
//! cluster status, health and metrics. Errors are JSON `{code, message, details}`.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use futures::StreamExt;
use sentinel_core::anomaly::now_ms;
use sentinel_core::FieldError;
use sentinel_proto::ErrorCode;
use serde::Serialize;
use serde_json::{json, Value};

use crate::answers::{cluster_status_answer, query_answer, QueryRoute};
use crate::auth::presented_key;
use crate::body::{self, BodyError};
use crate::control::{self, ActorInput, Change};
use crate::ingest::{self, Admission, Admitted, EventReport};
use crate::otlp::{self, OtlpError};
use crate::query;
use crate::service::{shard_count, ApiError, ApiState};

type Shared = State<Arc<ApiState>>;

/// Whether a route needs an API key (when keys are configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may call it: health, metrics, the OpenAPI document.
    Open,
    /// Only callers presenting a configured key.
    Keyed,
}

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the REST API: path, method, access and handler.
pub fn routes() -> Vec<(&'static str, Method, Access, MethodRouter<Arc<ApiState>>)> {
    use Access::{Keyed, Open};
    vec![
        ("/api/v1/events", Method::POST, Keyed, post(ingest)),
        ("/v1/traces", Method::POST, Keyed, post(ingest)),
        ("/api/v1/telemetry", Method::GET, Keyed, get(telemetry)),
        ("/api/v1/anomalies", Method::GET, Keyed, get(anomalies)),
        (
            "/api/v1/anomalies/recent",
            Method::GET,
            Keyed,
            get(recent_anomalies),
        ),
        ("/api/v1/baselines", Method::GET, Keyed, get(baselines)),
        ("/api/v1/incidents", Method::GET, Keyed, get(incidents)),
        ("/api/v1/incidents/{id}", Method::GET, Keyed, get(incident)),
        (
            "/api/v1/incidents/{id}/acknowledge",
            Method::POST,
            Keyed,
            post(acknowledge_incident),
        ),
        (
            "/api/v1/incidents/{id}/resolve",
            Method::POST,
            Keyed,
            post(resolve_incident),
        ),
        ("/api/v1/silences", Method::GET, Keyed, get(silences)),
        ("/api/v1/silences", Method::POST, Keyed, post(add_silence)),
        (
            "/api/v1/silences/{id}",
            Method::DELETE,
            Keyed,
            delete(expire_silence),
        ),
        (
            "/api/v1/cluster/status",
            Method::GET,
            Keyed,
            get(cluster_status),
        ),
        (
            "/api/v1/openapi.json",
            Method::GET,
            Open,
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        ),
        (
            "/health/live",
            Method::GET,
            Open,
            get(|| async { Json(json!({"status": "live"})) }),
        ),
        ("/health/ready", Method::GET, Open, get(ready)),
        ("/metrics", Method::GET, Open, get(render_metrics)),
    ]
}

/// The routes of the REST API with their middleware.
pub fn router(state: Arc<ApiState>) -> Router {
    let (mut open, mut keyed) = (Router::new(), Router::new());
    for (path, _, access, handler) in routes() {
        match access {
            Access::Open => open = open.route(path, handler),
            Access::Keyed => keyed = keyed.route(path, handler),
        }
    }
    keyed
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .merge(open)
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                ErrorCode::NotFound,
                format!("no route {method} {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                format!("{} does not take {method}", uri.path()),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(middleware::from_fn_with_state(state.clone(), cors))
        .with_state(state)
}

async fn require_key(State(api): Shared, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let key = presented_key(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    match api.authorize(key) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

async fn count(State(api): Shared, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = next.run(request).await;
    api.metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

async fn timeout(State(api): Shared, request: Request, next: Next) -> Response {
    let limit = Duration::from_millis(api.http.request_timeout_ms);
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::Timeout,
            format!(
                "the request took longer than {limit:?}; events carrying an event_id may be sent again safely"
            ),
        )
        .into_response(),
    }
}

async fn cors(State(api): Shared, request: Request, next: Next) -> Response {
    let origins = &api.http.cors_origins;
    let allowed = request
        .headers()
        .get(header::ORIGIN)
        .filter(|origin| {
            origins
                .iter()
                .any(|o| o == "*" || origin.to_str().is_ok_and(|v| v == o))
        })
        .cloned();
    let Some(origin) = allowed else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, content-encoding, x-api-key"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

async fn ready(State(api): Shared) -> Response {
    match api.table.not_ready() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => ApiError::new(ErrorCode::NotReady, reason).into_response(),
    }
}

async fn render_metrics(State(api): Shared) -> Response {
    match api.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => ApiError::new(ErrorCode::Internal, e.to_string()).into_response(),
    }
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_body(e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

async fn ingest(
    State(api): Shared,
    headers: HeaderMap,
    request: Body,
) -> Result<Response, ApiError> {
    let shards = shard_count(&api)?;
    let limit = api.http.max_body_bytes;
    let raw = read_body(request, limit).await?;
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("unreadable"));
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let ndjson = content_type.starts_with("application/x-ndjson")
        || content_type.starts_with("application/ndjson")
        || content_type.starts_with("application/jsonl");
    let protobuf = otlp::is_protobuf(&content_type);
    let decoded = match body::decode(encoding, &raw, limit)? {
        Cow::Owned(decoded) => Some(decoded),
        Cow::Borrowed(_) => None,
    };
    let decoded = decoded.unwrap_or(raw);
    let state = api.clone();
    let admitted = tokio::task::spawn_blocking(move || {
        let mut admission = Admission::new(&state.intake, &state.ids, shards, state.limits);
        if protobuf {
            let events = otlp::prepare(&state.intake, &decoded).map_err(|e| {
                let code = match e {
                    OtlpError::Decode(_) => ErrorCode::InvalidBody,
                    OtlpError::Sprawling { .. } => ErrorCode::PayloadTooLarge,
                };
                ApiError::new(code, e.to_string())
            })?;
            admission.events(events)?;
        } else {
            match body::for_each_document(&decoded, ndjson, |document| admission.document(document))
            {
                Err(BodyError::Empty) => return Ok(None),
                walked => walked?,
            };
        }
        Ok::<_, ApiError>(Some(admission.finish()))
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let Some(admitted) = admitted? else {
        return Ok(nothing_to_ingest(BodyError::Empty.to_string()));
    };
    let admitted = admitted.forward(&api.forwarder).await;
    api.metrics
        .events_rejected
        .inc_by(admitted.tally("rejected") as u64);
    Ok(ingest_answer(&admitted, api.limits.max_listed_problems))
}

/// The answer to an ingestion request: its counts, its verdict (200 when every event was
/// accepted, 503 when some got no acknowledgement, otherwise 400 listing the problems),
/// and every event's report.
fn ingest_answer(admitted: &Admitted, max_details: usize) -> Response {
    let verdict = ingest::verdict(admitted, max_details);
    let (applied, duplicates) = (admitted.tally("applied"), admitted.tally("duplicate"));
    let (code, message, details) = match verdict.error {
        Some((code, message, details)) => (Some(code.name()), Some(message), Some(details)),
        None => (None, None, None),
    };
    let answer = IngestAnswer {
        accepted: applied + duplicates,
        applied,
        duplicates,
        rejected: admitted.tally("rejected"),
        failed: admitted.tally("failed"),
        code,
        message,
        details,
        omitted_problems: admitted.problems.omitted(),
        results: &admitted.reports,
    };
    (verdict.status, Json(answer)).into_response()
}

/// The answer to a body that holds no events: 400 with zero counts.
fn nothing_to_ingest(message: String) -> Response {
    let answer = IngestAnswer {
        accepted: 0,
        applied: 0,
        duplicates: 0,
        rejected: 0,
        failed: 0,
        code: Some(ErrorCode::InvalidEvents.name()),
        message: Some(message),
        details: Some(Vec::new()),
        omitted_problems: 0,
        results: &[],
    };
    (
        StatusCode::from_u16(ErrorCode::InvalidEvents.http_status()).expect("a valid status"),
        Json(answer),
    )
        .into_response()
}

/// The JSON answer of an ingestion request (`IngestAnswer` of the OpenAPI document).
#[derive(Serialize)]
struct IngestAnswer<'a> {
    accepted: usize,
    applied: usize,
    duplicates: usize,
    rejected: usize,
    failed: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Vec<ingest::Detail<'a>>>,
    omitted_problems: usize,
    results: &'a [EventReport],
}

async fn answer(
    api: &ApiState,
    route: QueryRoute,
    query: Option<String>,
) -> Result<Response, ApiError> {
    let json = query_answer(api, route, query.as_deref().into()).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

async fn telemetry(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Telemetry, query).await
}

async fn anomalies(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Anomalies, query).await
}

async fn recent_anomalies(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::RecentAnomalies, query).await
}

async fn baselines(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Baselines, query).await
}

async fn incidents(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Incidents, query).await
}

/// The `{id}` of a path, or 400 when it is not text.
fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(id)) => Ok(id),
        Err(rejection) => Err(ApiError::fields(vec![FieldError::new(
            "id",
            rejection.body_text(),
        )])),
    }
}

async fn incident(
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

async fn acknowledge_incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change_incident(&api, path, body, Change::Acknowledge).await
}

async fn resolve_incident(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    change_incident(&api, path, body, Change::Resolve).await
}

async fn silences(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    answer(&api, QueryRoute::Silences, query).await
}

async fn add_silence(State(api): Shared, body: Body) -> Result<Response, ApiError> {
    let body = read_body(body, api.http.max_body_bytes).await?;
    let silence = control::silence_from_body(&body, control::new_silence_id(), now_ms())?;
    let added = control::add_silence(&api, &silence).await?;
    Ok((StatusCode::CREATED, Json(added)).into_response())
}

async fn expire_silence(
    State(api): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(path)?;
    Ok(Json(control::expire_silence(&api, &id).await?))
}

async fn cluster_status(
    State(api): Shared,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    query::no_parameters(query.as_deref()).map_err(ApiError::parameters)?;
    Ok(Json(cluster_status_answer(&api).await?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{
        ANOMALIES_PARAMETERS, BASELINES_PARAMETERS, INCIDENTS_PARAMETERS, INCIDENT_PARAMETERS,
        RECENT_ANOMALIES_PARAMETERS, SILENCES_PARAMETERS, TELEMETRY_PARAMETERS,
    };
    use std::collections::BTreeSet;

    /// The query parameters a route takes, and `id` when its path has one.
    fn parameters_of(method: &Method, path: &str) -> Vec<&'static str> {
        let query = match (method.as_str(), path) {
            (_, "/api/v1/telemetry") => TELEMETRY_PARAMETERS,
            (_, "/api/v1/anomalies") => ANOMALIES_PARAMETERS,
            (_, "/api/v1/anomalies/recent") => RECENT_ANOMALIES_PARAMETERS,
            (_, "/api/v1/baselines") => BASELINES_PARAMETERS,
            (_, "/api/v1/incidents") => INCIDENTS_PARAMETERS,
            ("GET", "/api/v1/incidents/{id}") => INCIDENT_PARAMETERS,
            ("GET", "/api/v1/silences") => SILENCES_PARAMETERS,
            _ => &[],
        };
        let id = path.contains("{id}").then_some("id");
        query.iter().copied().chain(id).collect()
    }

    #[test]
    fn the_openapi_document_describes_every_route_and_only_those() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, operations)| {
                let methods = operations.as_object().expect("operations").keys();
                methods.map(move |method| (path.clone(), method.to_ascii_uppercase()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|(path, method, _, _)| (path.to_string(), method.to_string()))
            .collect();
        assert_eq!(documented, served);
        for (path, method, access, _) in routes() {
            let operation = &doc["paths"][path][method.as_str().to_ascii_lowercase()];
            let secured = !operation["security"]
                .as_array()
                .expect("security")
                .is_empty();
            assert_eq!(
                secured,
                access == Access::Keyed,
                "security of {method} {path}"
            );
            let parameters: BTreeSet<&str> = operation["parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|parameter| {
                    let reference = parameter["$ref"].as_str().expect("a $ref");
                    let name = reference.trim_start_matches("#/components/parameters/");
                    doc["components"]["parameters"][name]["name"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{reference} is defined"))
                })
                .collect();
            let taken: BTreeSet<&str> = parameters_of(&method, path).into_iter().collect();
            assert_eq!(parameters, taken, "parameters of {method} {path}");
        }
    }
}
