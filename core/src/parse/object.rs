//! Events of the nested SDK shape and the flat producer shape, and shape detection.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::EventError;
use super::fields::*;
use crate::event::Event;

/// The input shape of a telemetry document (DESIGN §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputShape {
    /// Sentinel SDK shape with `prompt` / `response` objects.
    Nested,
    /// Producer shape with top-level token counts and texts.
    Flat,
    /// OTLP `ExportTraceServiceRequest` (`resourceSpans`).
    Otlp,
}

/// Keys whose presence marks the flat shape.
const FLAT_MARKERS: [&str; 6] = [
    "model_name",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_text",
    "response_text",
];

/// Top-level keys read into [`Event`] fields (everything else goes to metadata).
const KNOWN_KEYS: [&str; 24] = [
    "event_id",
    "timestamp",
    "service_name",
    "model",
    "model_name",
    "provider",
    "trace_id",
    "span_id",
    "user_id",
    "session_id",
    "request_id",
    "latency_ms",
    "cost_usd",
    "prompt",
    "response",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_text",
    "response_text",
    "finish_reason",
    "metadata",
    "errors",
    "error",
];

/// Detects the shape of a JSON object from the keys present (rule in the module docs).
pub fn detect_shape(object: &Map<String, Value>) -> InputShape {
    if object.contains_key("resourceSpans") || object.contains_key("resource_spans") {
        InputShape::Otlp
    } else if ["prompt", "response"]
        .iter()
        .any(|k| object.get(*k).is_some_and(Value::is_object))
    {
        InputShape::Nested
    } else if FLAT_MARKERS.iter().any(|k| object.contains_key(*k)) {
        InputShape::Flat
    } else if object.contains_key("model") {
        InputShape::Nested
    } else {
        InputShape::Flat
    }
}

/// Parses one nested or flat JSON event from bytes.
pub fn parse_event(bytes: &[u8]) -> Result<Event, EventError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| EventError::Json(e.to_string()))?;
    parse_value(&value)
}

/// Parses one nested or flat event from a JSON value; OTLP requests are rejected with [`EventError::OtlpRequest`].
pub fn parse_value(value: &Value) -> Result<Event, EventError> {
    let object = value
        .as_object()
        .ok_or_else(|| EventError::NotAnObject(json_kind(value)))?;
    match detect_shape(object) {
        InputShape::Otlp => Err(EventError::OtlpRequest),
        shape => parse_object(object, shape),
    }
}

/// What a nested `prompt` or `response` part carries.
#[derive(Default)]
struct Part {
    text: Option<String>,
    tokens: Option<u64>,
    finish_reason: Option<String>,
}

/// Reads the nested `prompt` / `response` part named `key` (a string is taken as its text).
fn part(
    object: &Map<String, Value>,
    key: &str,
    problems: &mut Problems,
    metadata: &mut BTreeMap<String, Value>,
) -> Part {
    let mut part = Part::default();
    match get(object, key) {
        None => {}
        Some(Value::String(s)) => part.text = (!s.is_empty()).then(|| s.clone()),
        Some(Value::Object(fields)) => {
            part.text = text(get(fields, "text"), &format!("{key}.text"), problems);
            part.tokens = count(get(fields, "tokens"), &format!("{key}.tokens"), problems);
            if key == "response" {
                part.finish_reason = ident(
                    get(fields, "finish_reason"),
                    "response.finish_reason",
                    problems,
                );
            }
            for (name, value) in fields {
                match name.as_str() {
                    "text" | "tokens" => {}
                    "finish_reason" if key == "response" => {}
                    "embedding" => {
                        if let Value::Array(values) = value {
                            metadata.insert(format!("{key}.embedding_dim"), values.len().into());
                        }
                    }
                    _ => insert_extra(metadata, format!("{key}.{name}"), value.clone()),
                }
            }
        }
        Some(other) => problems.push(
            key,
            format!(
                "expected an object {{text, tokens}} or a string, got {}",
                show(other)
            ),
        ),
    }
    part
}

/// The nested-shape value first for nested events, the flat one first otherwise.
fn prefer<T>(nested: bool, nested_value: Option<T>, flat_value: Option<T>) -> Option<T> {
    if nested {
        nested_value.or(flat_value)
    } else {
        flat_value.or(nested_value)
    }
}

/// Reads a nested or flat event object.
fn parse_object(object: &Map<String, Value>, shape: InputShape) -> Result<Event, EventError> {
    let nested = shape == InputShape::Nested;
    let mut problems = Problems::default();
    let mut metadata = BTreeMap::new();

    match get(object, "metadata") {
        None => {}
        Some(Value::Object(fields)) => {
            metadata.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(other) => problems.push(
            "metadata",
            format!("expected an object, got {}", show(other)),
        ),
    }

    let event_id = ident(get(object, "event_id"), "event_id", &mut problems);
    let timestamp_ms = timestamp(get(object, "timestamp"), "timestamp", &mut problems);
    let service = name(get(object, "service_name"), "service_name", &mut problems);
    let (model_key, other_model_key) = if nested {
        ("model", "model_name")
    } else {
        ("model_name", "model")
    };
    let model = name(
        get(object, model_key).or_else(|| get(object, other_model_key)),
        model_key,
        &mut problems,
    );
    let latency_ms = amount(get(object, "latency_ms"), "latency_ms", &mut problems);
    if get(object, "latency_ms").is_none() {
        problems.missing("latency_ms");
    }

    let prompt = part(object, "prompt", &mut problems, &mut metadata);
    let response = part(object, "response", &mut problems, &mut metadata);
    let flat_prompt_tokens = count(get(object, "prompt_tokens"), "prompt_tokens", &mut problems);
    let flat_completion_tokens = count(
        get(object, "completion_tokens"),
        "completion_tokens",
        &mut problems,
    );
    let flat_prompt_text = text(get(object, "prompt_text"), "prompt_text", &mut problems);
    let flat_response_text = text(get(object, "response_text"), "response_text", &mut problems);

    let mut event = Event {
        event_id,
        timestamp_ms,
        service,
        model,
        provider: ident(get(object, "provider"), "provider", &mut problems),
        trace_id: ident(get(object, "trace_id"), "trace_id", &mut problems),
        span_id: ident(get(object, "span_id"), "span_id", &mut problems),
        user_id: ident(get(object, "user_id"), "user_id", &mut problems),
        session_id: ident(get(object, "session_id"), "session_id", &mut problems),
        request_id: ident(get(object, "request_id"), "request_id", &mut problems),
        latency_ms: latency_ms.unwrap_or_default(),
        prompt_tokens: prefer(nested, prompt.tokens, flat_prompt_tokens),
        completion_tokens: prefer(nested, response.tokens, flat_completion_tokens),
        total_tokens: count(get(object, "total_tokens"), "total_tokens", &mut problems),
        cost_usd: amount(get(object, "cost_usd"), "cost_usd", &mut problems),
        finish_reason: response
            .finish_reason
            .or_else(|| ident(get(object, "finish_reason"), "finish_reason", &mut problems)),
        prompt_text: prefer(nested, prompt.text, flat_prompt_text),
        response_text: prefer(nested, response.text, flat_response_text),
        errors: Vec::new(),
        metadata: BTreeMap::new(),
    };

    for key in ["errors", "error"] {
        if let Some(value) = object.get(key) {
            collect_errors(value, &mut event.errors);
        }
    }
    if let Some(error) = object.get("status").and_then(status_error) {
        event.errors.push(error);
    }

    for (key, value) in object {
        if !KNOWN_KEYS.contains(&key.as_str()) {
            insert_extra(&mut metadata, key.clone(), value.clone());
        }
    }
    let lifted = |key: &str| metadata.get(key).and_then(as_ident).flatten();
    event.user_id = event.user_id.take().or_else(|| lifted("user_id"));
    event.session_id = event.session_id.take().or_else(|| lifted("session_id"));
    event.request_id = event.request_id.take().or_else(|| lifted("request_id"));
    event.provider = event.provider.take().or_else(|| lifted("provider"));
    event.event_id = event.event_id.take().or_else(|| event.request_id.clone());
    event.metadata = metadata;

    if problems.0.is_empty() {
        Ok(event)
    } else {
        Err(EventError::Invalid(problems.0))
    }
}
