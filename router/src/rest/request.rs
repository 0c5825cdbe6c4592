//! What the REST handlers share: the state they extract, a body read within its
//! limit, the id of a path.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use futures::StreamExt;
use sentinel_core::FieldError;

use crate::body::BodyError;
use crate::service::{ApiError, ApiState};

/// The state every handler extracts.
pub(super) type Shared = State<Arc<ApiState>>;

/// Reads a body of at most `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
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

/// The `{id}` of a path, or 400 when it is not text.
pub(super) fn path_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(id)) => Ok(id),
        Err(rejection) => Err(ApiError::fields(vec![FieldError::new(
            "id",
            rejection.body_text(),
        )])),
    }
}
