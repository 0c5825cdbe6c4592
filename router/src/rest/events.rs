//! `POST /api/v1/events` and `POST /v1/traces`: a body's events admitted, forwarded, and
//! answered event by event.

use std::borrow::Cow;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{self, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sentinel_proto::ErrorCode;
use serde::Serialize;

use crate::body::{self, BodyError};
use crate::error::http_status;
use crate::ingest::{self, Admission, Admitted, EventReport};
use crate::otlp::{self, OtlpError};
use crate::service::{shard_count, ApiError};

use super::request::{read_body, Shared};

pub(super) async fn ingest(
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
    let status = verdict.status();
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
    (status, Json(answer)).into_response()
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
    (http_status(ErrorCode::InvalidEvents), Json(answer)).into_response()
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
