//! The REST API's middleware: API keys, request counts, the request timeout, CORS.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sentinel_proto::ErrorCode;

use crate::auth::presented_key;
use crate::service::ApiError;

use super::request::Shared;

pub(super) async fn require_key(State(api): Shared, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let key = presented_key(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    match api.authorize(key) {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

pub(super) async fn count(State(api): Shared, request: Request, next: Next) -> Response {
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

pub(super) async fn timeout(State(api): Shared, request: Request, next: Next) -> Response {
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

pub(super) async fn cors(State(api): Shared, request: Request, next: Next) -> Response {
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
