//! The REST API (axum): its routes and the middleware around them. The handlers live in
//! `events`, `queries` and `layers` (the middleware); errors are JSON
//! `{code, message, details}`.

mod events;
mod layers;
mod queries;
mod request;

use std::sync::Arc;

use axum::http::{header, Method};
use axum::middleware;
use axum::routing::{delete, get, post, MethodRouter};
use axum::{Json, Router};
use sentinel_proto::ErrorCode;
use serde_json::json;

use self::events::ingest;
use self::layers::{cors, count, require_key, timeout};
use self::queries::{
    acknowledge_incident, add_silence, anomalies, baselines, cluster_status, expire_silence,
    incident, incidents, ready, recent_anomalies, render_metrics, resolve_incident, silences,
    telemetry,
};
use crate::service::{ApiError, ApiState};

/// Whether a route needs an API key (when keys are configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone may call it: health, metrics, the OpenAPI document.
    Open,
    /// Only callers presenting a configured key.
    Keyed,
}

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{
        ANOMALIES_PARAMETERS, BASELINES_PARAMETERS, INCIDENTS_PARAMETERS, INCIDENT_PARAMETERS,
        RECENT_ANOMALIES_PARAMETERS, SILENCES_PARAMETERS, TELEMETRY_PARAMETERS,
    };
    use serde_json::Value;
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
