//! The REST API (axum): ingestion, queries fanned out across shards, cluster status,
//! health and metrics. Errors are JSON `{code, message, details}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use futures::StreamExt;
use sentinel_core::{Event, FieldError, Intake};
use sentinel_proto::v1::{
    AnomaliesRequest, BaselinesRequest, ClusterStatusReply, Consistency, TelemetryRequest,
};
use serde::Serialize;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::auth::{presented_key, ApiKeys, Verdict};
use crate::body::{self, BodyError};
use crate::cache::QueryCache;
use crate::config::HttpSection;
use crate::error::CallError;
use crate::forward::{Delivery, Forwarder, Outgoing};
use crate::metrics::RouterMetrics;
use crate::otlp;
use crate::query::{
    merge_anomalies, merge_baselines, merge_telemetry, AnomaliesParams, BaselinesParams, Query,
    ShardPage, TelemetryParams,
};
use crate::routing::RoutingTable;

/// What the handlers share.
pub struct ApiState {
    /// The API keys callers must present.
    pub keys: ApiKeys,
    /// The cache of query answers.
    pub cache: QueryCache,
    /// Ids for events that arrive without one.
    pub ids: EventIds,
    /// The routing table.
    pub table: Arc<RoutingTable>,
    /// The forwarder of ingested events.
    pub forwarder: Forwarder,
    /// Parsing, redaction and validation of ingested events.
    pub intake: Arc<Intake>,
    /// The router's metrics.
    pub metrics: RouterMetrics,
    /// The HTTP settings.
    pub http: HttpSection,
}

type Shared = State<Arc<ApiState>>;

/// Event ids for events that arrive without one: a prefix random to this router process
/// and a counter, so no two routers, nor two runs of one, hand out the same id.
pub struct EventIds {
    prefix: String,
    next: AtomicU64,
}

impl Default for EventIds {
    fn default() -> Self {
        use std::hash::{BuildHasher, RandomState};
        let seed = (std::process::id(), std::time::SystemTime::now());
        EventIds {
            prefix: format!("rt-{:016x}", RandomState::new().hash_one(seed)),
            next: AtomicU64::new(0),
        }
    }
}

impl EventIds {
    /// A fresh id.
    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl ApiState {
    /// Admits a call that presented `key`, or refuses it with 401 (and counts it).
    pub fn authorize(&self, key: Option<&str>) -> Result<(), ApiError> {
        let (reason, message) = match self.keys.check(key) {
            Verdict::Allowed => return Ok(()),
            Verdict::Missing => (
                "missing",
                "an API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ),
            Verdict::Wrong => ("wrong", "the API key is not valid"),
        };
        self.metrics
            .auth_refusals
            .with_label_values(&[reason])
            .inc();
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
        ))
    }
}

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

/// An error answer: a status and `{code, message, details}`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) details: Vec<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 400 listing every bad parameter as `{field, problem}`.
    pub(crate) fn parameters(problems: Vec<FieldError>) -> ApiError {
        ApiError {
            details: problems.iter().map(|p| json!(p)).collect(),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameters",
                format!(
                    "{} invalid query parameter{}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            )
        }
    }

    fn not_ready(reason: String) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", reason)
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> ApiError {
        let message = error.to_string();
        match error {
            CallError::NotReady => ApiError::not_ready(message),
            CallError::Unreachable { .. } | CallError::Unavailable { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            CallError::Refused {
                code: tonic::Code::InvalidArgument,
                ..
            } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameters", message),
            CallError::Refused { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "node_error", message)
            }
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> ApiError {
        let (status, code) = match error {
            BodyError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            BodyError::UnsupportedEncoding(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding")
            }
            BodyError::Gzip(_) => (StatusCode::BAD_REQUEST, "invalid_body"),
            BodyError::Empty => (StatusCode::BAD_REQUEST, "invalid_events"),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message, "details": self.details})),
        )
            .into_response()
    }
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
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route {method} {}", uri.path()),
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
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
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
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
            HeaderValue::from_static("GET, POST, OPTIONS"),
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
        Some(reason) => ApiError::not_ready(reason).into_response(),
    }
}

async fn render_metrics(State(api): Shared) -> Response {
    match api.metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

/// Wall-clock time in milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The shard count of the loaded routing table.
pub fn shard_count(api: &ApiState) -> Result<u32, ApiError> {
    match api.table.layout() {
        Some(layout) if layout.shard_count > 0 => Ok(layout.shard_count),
        _ => Err(ApiError::not_ready(
            "the routing table is not loaded yet".into(),
        )),
    }
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))?;
        if bytes.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit }.into());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The outcome of one event of a request.
#[derive(Debug, Serialize)]
pub struct EventReport {
    /// Position of the event in the request.
    pub index: usize,
    /// Its `event_id` (the router's own when the event came without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// `applied`, `duplicate`, `rejected` or `failed`.
    pub status: &'static str,
    /// Why it was rejected, field by field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One parsed event, or every problem with it.
pub type Prepared = Result<Event, Vec<FieldError>>;

/// Parses, redacts and validates every event of a body.
fn prepare(intake: &Intake, body: &[u8], ndjson: bool) -> Result<Vec<Prepared>, BodyError> {
    let (_, documents) = body::split(body, ndjson)?;
    Ok(prepare_documents(intake, documents))
}

/// Redacts and validates the events of JSON documents (or notes why one is not JSON).
pub fn prepare_documents(
    intake: &Intake,
    documents: impl IntoIterator<Item = Result<Value, String>>,
) -> Vec<Prepared> {
    documents
        .into_iter()
        .flat_map(|document| match document {
            Ok(value) => intake.prepare_document(&value),
            Err(problem) => vec![Err(vec![FieldError::new("", problem)])],
        })
        .collect()
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
    let decoded = body::decode(encoding, &raw, limit)?.into_owned();
    drop(raw);
    let intake = api.intake.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        if protobuf {
            otlp::prepare(&intake, &decoded).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    format!("not an OTLP ExportTraceServiceRequest: {e}"),
                )
            })
        } else {
            prepare(&intake, &decoded, ndjson).map_err(ApiError::from)
        }
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(ingest_answer(ingest_events(&api, shards, prepared).await))
}

/// Forwards the good events of one request and reports what became of each event.
pub async fn ingest_events(
    api: &ApiState,
    shards: u32,
    prepared: Vec<Prepared>,
) -> Vec<EventReport> {
    let mut reports = Vec::with_capacity(prepared.len());
    let mut outgoing = Vec::new();
    for (index, event) in prepared.into_iter().enumerate() {
        match event {
            Ok(mut event) => {
                // An id of the router's own makes a retried batch idempotent on the shard.
                event.event_id.get_or_insert_with(|| api.ids.next());
                outgoing.push(Outgoing {
                    shard: sentinel_core::shard::shard_of(&event.service, &event.model, shards),
                    offset: None,
                    json: serde_json::to_vec(&event.to_nested_json()).expect("events serialize"),
                });
                reports.push(EventReport {
                    index,
                    event_id: event.event_id,
                    status: "pending",
                    errors: Vec::new(),
                    message: None,
                });
            }
            Err(errors) => {
                api.metrics.events_rejected.inc();
                reports.push(EventReport {
                    index,
                    event_id: None,
                    status: "rejected",
                    errors,
                    message: None,
                });
            }
        }
    }
    let deliveries = api.forwarder.forward(None, outgoing).await;
    let pending = reports.iter_mut().filter(|r| r.status == "pending");
    for (report, delivery) in pending.zip(deliveries) {
        report.status = match delivery {
            Delivery::Applied => "applied",
            Delivery::DuplicateOffset | Delivery::DuplicateEventId => "duplicate",
            Delivery::Rejected(errors) => {
                report.errors = errors;
                "rejected"
            }
            Delivery::Failed(message) => {
                report.message = Some(message);
                "failed"
            }
        };
    }
    reports
}

/// The answer to an ingestion request: 200 when every event was accepted, 503 when some
/// got no acknowledgement, otherwise 400 listing every problem.
fn ingest_answer(reports: Vec<EventReport>) -> Response {
    let tally = |status: &str| reports.iter().filter(|r| r.status == status).count();
    let (applied, duplicates, rejected, failed) = (
        tally("applied"),
        tally("duplicate"),
        tally("rejected"),
        tally("failed"),
    );
    let total = reports.len();
    let summary = json!({
        "accepted": applied + duplicates,
        "applied": applied,
        "duplicates": duplicates,
        "rejected": rejected,
        "failed": failed,
    });
    let (status, error) = if failed > 0 {
        let details: Vec<Value> = reports
            .iter()
            .filter(|r| r.status == "failed")
            .map(|r| json!({"index": r.index, "problem": r.message}))
            .collect();
        let message = format!(
            "{failed} of {total} events got no acknowledgement (their shard is unavailable); send them again"
        );
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some(("unavailable", message, details)),
        )
    } else if rejected > 0 {
        let details: Vec<Value> = reports
            .iter()
            .flat_map(|r| {
                r.errors
                    .iter()
                    .map(|e| json!({"index": r.index, "field": e.field, "problem": e.problem}))
            })
            .collect();
        let message =
            format!("{rejected} of {total} events were rejected; the others were accepted");
        (
            StatusCode::BAD_REQUEST,
            Some(("invalid_events", message, details)),
        )
    } else {
        (StatusCode::OK, None)
    };
    let mut answer = summary;
    if let Some((code, message, details)) = error {
        answer["code"] = json!(code);
        answer["message"] = json!(message);
        answer["details"] = Value::Array(details);
    }
    answer["results"] = json!(reports);
    (status, Json(answer)).into_response()
}

/// Calls one shard: any replica for stale reads, else the leader.
async fn on_shard<T, F, Fut>(
    api: &ApiState,
    shard: u32,
    consistency: Consistency,
    call: F,
) -> Result<T, CallError>
where
    F: FnMut(sentinel_proto::v1::node_client::NodeClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match consistency {
        Consistency::StaleOk => api.table.call_replica(shard, call).await,
        Consistency::Linearizable => api.table.call_leader(shard, call).await,
    }
}

/// Asks every shard of `shards` at once (`call` with the shard's `request`) for records
/// answered as JSON text, and parses them.
async fn fan_out<R, F, Fut>(
    api: &ApiState,
    shards: impl IntoIterator<Item = u32>,
    consistency: Consistency,
    request: impl Fn(u32) -> R,
    call: F,
) -> Result<Vec<Vec<Value>>, ApiError>
where
    R: Clone,
    F: Fn(sentinel_proto::v1::node_client::NodeClient<Channel>, R) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<Vec<String>>, tonic::Status>>,
{
    let calls = shards.into_iter().map(|shard| {
        let request = request(shard);
        async move {
            let texts = on_shard(api, shard, consistency, |client| {
                call(client, request.clone())
            })
            .await?;
            records(texts)
        }
    });
    futures::future::try_join_all(calls).await
}

/// Parses records a node answered as JSON text.
fn records(texts: Vec<String>) -> Result<Vec<Value>, ApiError> {
    texts
        .iter()
        .map(|text| serde_json::from_str(text))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "node_error", e.to_string()))
}

/// A query route: the REST and gRPC query operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRoute {
    /// `GET /api/v1/telemetry`.
    Telemetry,
    /// `GET /api/v1/anomalies`.
    Anomalies,
    /// `GET /api/v1/anomalies/recent`.
    RecentAnomalies,
    /// `GET /api/v1/baselines`.
    Baselines,
}

impl QueryRoute {
    /// The gRPC method of `sentinel.v1.Sentinel`.
    pub fn rpc(self) -> &'static str {
        match self {
            QueryRoute::Telemetry => "Telemetry",
            QueryRoute::Anomalies => "Anomalies",
            QueryRoute::RecentAnomalies => "RecentAnomalies",
            QueryRoute::Baselines => "Baselines",
        }
    }

    /// The REST path.
    pub fn path(self) -> &'static str {
        match self {
            QueryRoute::Telemetry => "/api/v1/telemetry",
            QueryRoute::Anomalies => "/api/v1/anomalies",
            QueryRoute::RecentAnomalies => "/api/v1/anomalies/recent",
            QueryRoute::Baselines => "/api/v1/baselines",
        }
    }
}

/// The JSON answer of `query` on `route`, from the cache when it holds one.
pub async fn query_answer(
    api: &ApiState,
    route: QueryRoute,
    query: Query,
) -> Result<Bytes, ApiError> {
    let compute = async {
        match route {
            QueryRoute::Telemetry => telemetry_answer(api, query.clone()).await,
            QueryRoute::Anomalies => {
                anomalies_answer(api, anomalies_params(query.clone(), false)?).await
            }
            QueryRoute::RecentAnomalies => {
                anomalies_answer(api, anomalies_params(query.clone(), true)?).await
            }
            QueryRoute::Baselines => baselines_answer(api, query.clone()).await,
        }
    };
    api.cache.answer(route.path(), &query, compute).await
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

/// `{count, records, next_cursor}`: one page of telemetry, merged across shards.
async fn telemetry_answer(api: &ApiState, query: Query) -> Result<Value, ApiError> {
    let shards = shard_count(api)?;
    let params = TelemetryParams::parse(query, now_ms(), shards).map_err(ApiError::parameters)?;
    let from_ms = params.cursor.from_ms;
    let calls = params.cursor.positions.iter().map(|position| {
        let request = TelemetryRequest {
            shard: position.shard,
            service: params.service.clone().unwrap_or_default(),
            model: params.model.clone().unwrap_or_default(),
            from_ms,
            until_ms: 0,
            cursor: position.cursor.clone(),
            limit: position.skip + params.limit,
            consistency: params.consistency as i32,
        };
        async move {
            let reply = on_shard(api, position.shard, params.consistency, |mut client| {
                let request = request.clone();
                async move { client.telemetry(request).await }
            })
            .await?;
            Ok::<_, ApiError>(ShardPage {
                position: position.clone(),
                records: records(reply.records)?,
                next_cursor: reply.next_cursor,
            })
        }
    });
    let pages = futures::future::try_join_all(calls).await?;
    let (records, next) = merge_telemetry(from_ms, pages, params.limit as usize);
    Ok(json!({
        "count": records.len(),
        "records": records,
        "next_cursor": next.map(|c| c.encode()),
    }))
}

/// `{count, anomalies}`: the newest anomalies matching `params`, merged across shards.
async fn anomalies_answer(api: &ApiState, params: AnomaliesParams) -> Result<Value, ApiError> {
    let shards = shard_count(api)?;
    let request = |shard| AnomaliesRequest {
        shard,
        severity: params.severity.clone().unwrap_or_default(),
        since_ms: params.since_ms,
        limit: params.limit,
        consistency: params.consistency as i32,
    };
    let answers = fan_out(
        api,
        0..shards,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.anomalies(r).await?.map(|reply| reply.alerts)) },
    );
    let anomalies = merge_anomalies(answers.await?, params.limit as usize);
    Ok(json!({"count": anomalies.len(), "anomalies": anomalies}))
}

/// The parameters of `/api/v1/anomalies` (`recent`: of `/api/v1/anomalies/recent`).
fn anomalies_params(query: Query, recent: bool) -> Result<AnomaliesParams, ApiError> {
    let params = if recent {
        AnomaliesParams::parse_recent(query)
    } else {
        AnomaliesParams::parse(query, now_ms())
    };
    params.map_err(ApiError::parameters)
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

/// `{count, baselines}`: the baselines of one key or of every key.
async fn baselines_answer(api: &ApiState, query: Query) -> Result<Value, ApiError> {
    let params = BaselinesParams::parse(query).map_err(ApiError::parameters)?;
    let shards = shard_count(api)?;
    let targets: Vec<u32> = match (&params.service, &params.model) {
        (Some(service), Some(model)) => {
            vec![sentinel_core::shard::shard_of(service, model, shards)]
        }
        _ => (0..shards).collect(),
    };
    let request = |shard| BaselinesRequest {
        shard,
        service: params.service.clone().unwrap_or_default(),
        model: params.model.clone().unwrap_or_default(),
        consistency: params.consistency as i32,
    };
    let answers = fan_out(
        api,
        targets,
        params.consistency,
        request,
        |mut client, r| async move { Ok(client.baselines(r).await?.map(|reply| reply.baselines)) },
    );
    let baselines = merge_baselines(answers.await?);
    Ok(json!({"count": baselines.len(), "baselines": baselines}))
}

async fn cluster_status(State(api): Shared) -> Result<Json<Value>, ApiError> {
    Ok(Json(cluster_status_answer(&api).await?))
}

/// The cluster layout: nodes, shards, leaders and lag.
pub async fn cluster_status_answer(api: &ApiState) -> Result<Value, ApiError> {
    Ok(status_json(&api.table.cluster_status().await?))
}

/// The cluster status as JSON, with the field names of the gRPC message.
fn status_json(status: &ClusterStatusReply) -> Value {
    json!({
        "shard_count": status.shard_count,
        "replication_factor": status.replication_factor,
        "metadata_leader": status.metadata_leader,
        "nodes": status.nodes.iter().map(|n| json!({
            "id": n.id, "address": n.address, "state": n.state,
        })).collect::<Vec<_>>(),
        "shards": status.shards.iter().map(|s| json!({
            "shard": s.shard,
            "leader": s.leader,
            "term": s.term,
            "desired": s.desired,
            "replicas": s.replicas.iter().map(|r| json!({
                "node": r.node, "role": r.role, "applied_index": r.applied_index, "lag": r.lag,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{
        ANOMALIES_PARAMETERS, BASELINES_PARAMETERS, RECENT_ANOMALIES_PARAMETERS,
        TELEMETRY_PARAMETERS,
    };
    use proptest::prelude::*;
    use sentinel_core::{RedactionConfig, ValidationBounds};
    use std::collections::BTreeSet;

    fn intake() -> Intake {
        Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap()
    }

    fn report(index: usize, status: &'static str) -> EventReport {
        EventReport {
            index,
            event_id: None,
            status,
            errors: if status == "rejected" {
                vec![FieldError::new("latency_ms", "below 0.1")]
            } else {
                Vec::new()
            },
            message: (status == "failed").then(|| "shard 3 is unavailable".to_owned()),
        }
    }

    /// The query parameters a route takes.
    fn parameters_of(path: &str) -> &'static [&'static str] {
        match path {
            "/api/v1/telemetry" => TELEMETRY_PARAMETERS,
            "/api/v1/anomalies" => ANOMALIES_PARAMETERS,
            "/api/v1/anomalies/recent" => RECENT_ANOMALIES_PARAMETERS,
            "/api/v1/baselines" => BASELINES_PARAMETERS,
            _ => &[],
        }
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
            let taken: BTreeSet<&str> = parameters_of(path).iter().copied().collect();
            assert_eq!(parameters, taken, "parameters of {method} {path}");
        }
    }

    #[test]
    fn generated_event_ids_never_repeat_within_or_across_routers() {
        let (a, b) = (EventIds::default(), EventIds::default());
        let ids: BTreeSet<String> = (0..100).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 200);
    }

    #[test]
    fn the_answer_status_follows_the_worst_event() {
        let answer = ingest_answer(vec![report(0, "applied"), report(1, "duplicate")]);
        assert_eq!(answer.status(), StatusCode::OK);
        let answer = ingest_answer(vec![report(0, "applied"), report(1, "rejected")]);
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        let answer = ingest_answer(vec![report(0, "failed"), report(1, "rejected")]);
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn every_event_of_a_body_gets_a_slot() {
        let good = r#"{"service_name": "chat", "model_name": "m", "latency_ms": 5, "timestamp": "2026-01-01T00:00:00Z"}"#;
        let body = format!("{good}\n{{oops\n[1]\n{good}\n");
        let prepared = prepare(&intake(), body.as_bytes(), false).unwrap();
        let ok: Vec<bool> = prepared.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, false, true]);
    }

    proptest! {
        #[test]
        fn body_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), ndjson: bool) {
            let _ = prepare(&intake(), &body, ndjson);
            let _ = body::decode(Some("gzip"), &body, 1 << 16);
        }

        #[test]
        fn json_like_bodies_never_panic(
            lines in proptest::collection::vec(
                prop_oneof![
                    Just(r#"{"service_name":"a","model":"m","latency_ms":1,"timestamp":"2026-01-01T00:00:00Z"}"#.to_string()),
                    Just(r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"attributes":[]}]}]}]}"#.to_string()),
                    Just("[".to_string()), Just("]".to_string()), Just("null".to_string()),
                    "[{}\\[\\]\",:0-9a-z ]{0,40}",
                ],
                0..6,
            ),
            ndjson: bool,
        ) {
            let _ = prepare(&intake(), lines.join("\n").as_bytes(), ndjson);
        }
    }
}
