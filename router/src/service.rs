//! What the REST and gRPC APIs share: the API's state, its errors (one mapping to HTTP
//! statuses, which gRPC maps on to codes), and calls on one shard or fanned out over many.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sentinel_core::{FieldError, Intake};
use sentinel_proto::v1::Consistency;
use sentinel_proto::ErrorCode;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::auth::{ApiKeys, Verdict};
use crate::body::BodyError;
use crate::cache::QueryCache;
use crate::config::HttpSection;
use crate::error::{http_status, CallError};
use crate::forward::Forwarder;
use crate::ingest::{IdGenerator, RequestLimits};
use crate::metrics::RouterMetrics;
use crate::routing::RoutingTable;

/// What the handlers share.
pub struct ApiState {
    /// The API keys callers must present.
    pub keys: ApiKeys,
    /// The cache of query answers.
    pub cache: QueryCache,
    /// Ids for events that arrive without one.
    pub ids: IdGenerator,
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
    /// How much one ingestion request may hold.
    pub limits: RequestLimits,
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
        Err(ApiError::new(ErrorCode::Unauthorized, message))
    }
}

/// An error answer: a code (which gives the HTTP status and gRPC code) and
/// `{code, message, details}`.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) details: Vec<Value>,
}

impl ApiError {
    /// An error of `code` with `message` and no details.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// 400 listing every bad parameter as `{field, problem}`.
    pub(crate) fn parameters(problems: Vec<FieldError>) -> ApiError {
        ApiError::listing(ErrorCode::InvalidParameters, "query parameter", problems)
    }

    /// 400 listing every bad field of a request (body or path) as `{field, problem}`.
    pub(crate) fn fields(problems: Vec<FieldError>) -> ApiError {
        ApiError::listing(ErrorCode::InvalidFields, "field", problems)
    }

    /// An error of `code` listing `problems` with the `what` each names.
    fn listing(code: ErrorCode, what: &str, problems: Vec<FieldError>) -> ApiError {
        let count = problems.len();
        ApiError {
            details: problems.iter().map(|p| json!(p)).collect(),
            ..ApiError::new(
                code,
                format!(
                    "{count} invalid {what}{}",
                    if count == 1 { "" } else { "s" }
                ),
            )
        }
    }

    /// 400: the body is not what the route takes.
    pub(crate) fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::InvalidBody, message)
    }

    /// 404: no such incident or silence.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NotFound, message)
    }

    /// 502: a node answered something unusable.
    pub(crate) fn node_error(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::NodeError, message)
    }

    /// The HTTP status answering it.
    pub(crate) fn status(&self) -> StatusCode {
        http_status(self.code)
    }
}

impl From<CallError> for ApiError {
    fn from(error: CallError) -> ApiError {
        let message = error.to_string();
        let code = match error {
            CallError::NotReady => ErrorCode::NotReady,
            CallError::Unreachable { .. } | CallError::Unavailable { .. } => ErrorCode::Unavailable,
            CallError::Refused {
                code: tonic::Code::InvalidArgument,
                ..
            } => ErrorCode::InvalidParameters,
            CallError::Refused { .. } => ErrorCode::NodeError,
        };
        ApiError::new(code, message)
    }
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> ApiError {
        let code = match error {
            BodyError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            BodyError::UnsupportedEncoding(_) => ErrorCode::UnsupportedEncoding,
            BodyError::Gzip(_) => ErrorCode::InvalidBody,
            BodyError::Empty => ErrorCode::InvalidEvents,
            BodyError::TooManyEvents { .. } => ErrorCode::TooManyEvents,
        };
        ApiError::new(code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(
                json!({"code": self.code.name(), "message": self.message, "details": self.details}),
            ),
        )
            .into_response()
    }
}

/// The shard count of the loaded routing table.
pub fn shard_count(api: &ApiState) -> Result<u32, ApiError> {
    match api.table.layout() {
        Some(layout) if layout.shard_count > 0 => Ok(layout.shard_count),
        _ => Err(ApiError::new(
            ErrorCode::NotReady,
            "the routing table is not loaded yet",
        )),
    }
}

/// Calls one shard: any replica for stale reads, else the leader.
pub(crate) async fn on_shard<T, F, Fut>(
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
pub(crate) async fn fan_out<R, F, Fut>(
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
pub(crate) fn records(texts: Vec<String>) -> Result<Vec<Value>, ApiError> {
    texts
        .iter()
        .map(|text| serde_json::from_str(text))
        .collect::<Result<_, _>>()
        .map_err(|e| ApiError::node_error(e.to_string()))
}
