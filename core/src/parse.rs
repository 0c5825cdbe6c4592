//! Parsing of the telemetry input shapes (DESIGN §3.1) into the normalised [`Event`].
//!
//! Three shapes are accepted:
//!
//! * **Nested** (Sentinel SDKs): `model`, `prompt {text, tokens, embedding?}`,
//!   `response {text, tokens, finish_reason, embedding?}`, ...
//! * **Flat** (producer examples): `model_name`, `prompt_tokens`, `completion_tokens`,
//!   `total_tokens`, `prompt_text`, `response_text`, ...
//! * **OTLP** GenAI spans, through [`parse_otlp_traces`] (OTLP/HTTP JSON) or
//!   [`event_from_otlp_span`] (any decoder that fills an [`OtlpSpan`]).
//!
//! Rules shared by the JSON shapes:
//!
//! * **Shape detection** ([`detect_shape`]): `resourceSpans` means OTLP; a `prompt` or
//!   `response` object means nested; otherwise any of `model_name`, `prompt_tokens`,
//!   `completion_tokens`, `total_tokens`, `prompt_text`, `response_text` means flat;
//!   otherwise `model` means nested, and anything else is read as flat. The shape decides
//!   which spelling of a field wins when both appear (nested `prompt.tokens` vs flat
//!   `prompt_tokens`) and how a missing field is named in errors.
//! * **Every problem at once**: all missing or ill-typed fields are reported together,
//!   each with its path ([`EventError::Invalid`]).
//! * **Nothing is lost**: unknown fields go to `metadata` under their own name (unknown
//!   keys of `prompt`/`response` as `prompt.<key>`/`response.<key>`; a top-level field
//!   whose name the `metadata` object already uses is kept as `top_level.<key>`).
//!   Embeddings are dropped, their dimension kept as `prompt.embedding_dim` /
//!   `response.embedding_dim`. `null` means absent everywhere.
//! * **Numbers as strings**: `"123"` is accepted for counts and `"1.5"` for amounts;
//!   non-finite values (`"NaN"`, `"inf"`) are rejected.
//! * **Identifiers** (`event_id`, `trace_id`, `user_id`, ...) are strings or integers;
//!   surrounding whitespace is trimmed and an empty string counts as absent. Without
//!   `event_id`, `request_id` is the event id. `user_id`, `session_id`, `request_id` and
//!   `provider` are also taken from `metadata` when absent at the top level.
//! * **Timestamps**: an RFC 3339 string (`T`, `t` or space separator, optional fraction,
//!   `Z` or numeric offset; without an offset the time is UTC), or a Unix time as a
//!   number or numeric string whose unit follows from its magnitude `|t|`:
//!   `|t| < 1e11` seconds (up to year 5138), `< 1e14` milliseconds, `< 1e17`
//!   microseconds, otherwise nanoseconds. Sub-millisecond parts are floored. Times after
//!   9999-12-31 are rejected.
//! * **Errors**: `errors` (list or string), `error` (string, list, object with
//!   `message`, `true`, or a non-zero number) and `status` (`error`, `failed`,
//!   `failure`, `fail`, `timeout`, `timed_out`, or an HTTP code 400–599) all feed
//!   [`Event::errors`]; these fields never make an event invalid. `status` is also kept
//!   in `metadata`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;

/// One problem with one input field, e.g. `prompt.tokens: expected a non-negative integer, got "abc"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Path of the field in the input, e.g. `prompt.tokens`.
    pub field: String,
    /// What is wrong with the field.
    pub problem: String,
}

impl FieldError {
    /// A problem with the field at path `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Renders a list of field problems as `N problem(s): a; b; c`.
pub(crate) fn list_problems(problems: &[FieldError]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let items: Vec<String> = problems.iter().map(ToString::to_string).collect();
    format!("{} {noun}: {}", problems.len(), items.join("; "))
}

/// Why an input document could not be turned into an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The bytes are not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The JSON value is not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// The document is an OTLP trace export request, which holds many spans.
    #[error(
        "this is an OTLP ExportTraceServiceRequest (resourceSpans); send it to the OTLP \
         endpoint /v1/traces, which reads it with parse_otlp_traces"
    )]
    OtlpRequest,
    /// Fields are missing or ill-typed; every problem is listed.
    #[error("invalid event, {}", list_problems(.0))]
    Invalid(Vec<FieldError>),
}

impl EventError {
    /// The field-level problems (empty for errors about the whole document).
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            EventError::Invalid(problems) => problems,
            _ => &[],
        }
    }
}

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

/// The name of a JSON value's type, for error messages.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short rendering of an offending value for error messages.
fn show(value: &Value) -> String {
    const MAX: usize = 60;
    let text = value.to_string();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// The value under `key`, treating `null` as absent.
fn get<'v>(object: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    object.get(key).filter(|v| !v.is_null())
}

/// Collects the field problems of one document.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn push(&mut self, field: &str, problem: impl Into<String>) {
        self.0.push(FieldError::new(field, problem));
    }

    fn missing(&mut self, field: &str) {
        self.push(field, "missing");
    }
}

/// An identifier: a string (trimmed, empty = absent) or an integer.
fn as_ident(value: &Value) -> Option<Option<String>> {
    match value {
        Value::String(s) => {
            let t = s.trim();
            Some((!t.is_empty()).then(|| t.to_owned()))
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Some(n.to_string())),
        _ => None,
    }
}

/// An optional identifier field.
fn ident(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<String> {
    let value = value?;
    as_ident(value).unwrap_or_else(|| {
        problems.push(field, format!("expected a string, got {}", show(value)));
        None
    })
}

/// A required, non-empty name field (service, model).
fn name(value: Option<&Value>, field: &str, problems: &mut Problems) -> String {
    let Some(value) = value else {
        problems.missing(field);
        return String::new();
    };
    match as_ident(value) {
        Some(Some(name)) => name,
        Some(None) => {
            problems.push(field, "must not be empty");
            String::new()
        }
        None => {
            problems.push(field, format!("expected a string, got {}", show(value)));
            String::new()
        }
    }
}

/// An optional free-text field; empty text counts as absent.
fn text(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<String> {
    match value? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => {
            problems.push(field, format!("expected a string, got {}", show(other)));
            None
        }
    }
}

/// A finite number from a JSON number or a numeric string.
fn as_number(value: &Value) -> Option<f64> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    number.filter(|n| n.is_finite())
}

/// A non-negative integer from a JSON number or a numeric string.
fn as_count(value: &Value) -> Option<u64> {
    if let Value::Number(n) = value {
        if let Some(u) = n.as_u64() {
            return Some(u);
        }
    }
    if let Value::String(s) = value {
        if let Ok(u) = s.trim().parse::<u64>() {
            return Some(u);
        }
    }
    float_to_count(as_number(value)?)
}

/// An integral, non-negative float as a count.
fn float_to_count(f: f64) -> Option<u64> {
    // 2^64 as f64; every smaller non-negative integral f64 converts exactly.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    (f >= 0.0 && f.fract() == 0.0 && f < LIMIT).then_some(f as u64)
}

/// An optional token count.
fn count(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<u64> {
    let value = value?;
    let parsed = as_count(value);
    if parsed.is_none() {
        problems.push(
            field,
            format!("expected a non-negative integer, got {}", show(value)),
        );
    }
    parsed
}

/// An optional amount (latency, cost).
fn amount(value: Option<&Value>, field: &str, problems: &mut Problems) -> Option<f64> {
    let value = value?;
    let parsed = as_number(value);
    if parsed.is_none() {
        problems.push(
            field,
            format!("expected a finite number, got {}", show(value)),
        );
    }
    parsed
}

/// The latest representable instant, 9999-12-31T23:59:59.999Z, in Unix milliseconds.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

/// Converts a Unix time number to milliseconds using the magnitude rule of the module docs.
fn unix_number_to_ms(value: &Value) -> Option<i64> {
    let as_int = match value {
        Value::Number(n) => n.as_i64().map(i128::from),
        Value::String(s) => s.trim().parse::<i64>().ok().map(i128::from),
        _ => None,
    };
    let ms = match as_int {
        Some(t) => match t.unsigned_abs() {
            a if a < 100_000_000_000 => t * 1000,
            a if a < 100_000_000_000_000 => t,
            a if a < 100_000_000_000_000_000 => t.div_euclid(1000),
            _ => t.div_euclid(1_000_000),
        },
        None => {
            let t = as_number(value)?;
            let ms = match t.abs() {
                a if a < 1e11 => t * 1e3,
                a if a < 1e14 => t,
                a if a < 1e17 => t / 1e3,
                _ => t / 1e6,
            };
            let ms = ms.floor();
            if ms.abs() > MAX_TIMESTAMP_MS as f64 {
                return None;
            }
            ms as i128
        }
    };
    i64::try_from(ms)
        .ok()
        .filter(|ms| (-MAX_TIMESTAMP_MS..=MAX_TIMESTAMP_MS).contains(ms))
}

/// Parses an RFC 3339 date-time (offset optional, then UTC) to Unix milliseconds.
fn rfc3339_to_ms(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_millis());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|fmt| NaiveDateTime::parse_from_str(s, fmt).ok())
        .map(|dt| dt.and_utc().timestamp_millis())
}

/// Parses a timestamp value (RFC 3339 or Unix time) to Unix milliseconds.
fn timestamp_ms(value: &Value) -> Option<i64> {
    match value {
        Value::Number(_) => unix_number_to_ms(value),
        Value::String(s) => {
            let s = s.trim();
            if s.parse::<f64>().is_ok() {
                unix_number_to_ms(value)
            } else {
                rfc3339_to_ms(s)
            }
        }
        _ => None,
    }
}

/// The required `timestamp` field.
fn timestamp(value: Option<&Value>, field: &str, problems: &mut Problems) -> i64 {
    let Some(value) = value else {
        problems.missing(field);
        return 0;
    };
    timestamp_ms(value).unwrap_or_else(|| {
        problems.push(
            field,
            format!(
                "expected an RFC 3339 date-time (e.g. 2024-06-10T12:00:00Z) or Unix \
                 seconds/milliseconds up to year 9999, got {}",
                show(value)
            ),
        );
        0
    })
}

/// Appends the error messages an `error`/`errors` value carries (see the module docs).
fn collect_errors(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Null | Value::Bool(false) => {}
        Value::Bool(true) => out.push("error flag set".to_owned()),
        Value::String(s) => {
            if !s.trim().is_empty() {
                out.push(s.clone());
            }
        }
        Value::Number(n) => {
            if n.as_f64() != Some(0.0) {
                out.push(format!("error {n}"));
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_errors(item, out)),
        Value::Object(fields) => match fields.get("message") {
            Some(Value::String(m)) if !m.trim().is_empty() => out.push(m.clone()),
            _ => out.push(value.to_string()),
        },
    }
}

/// The error a `status` field signals, if any.
fn status_error(value: &Value) -> Option<String> {
    const FAILED: [&str; 6] = ["error", "failed", "failure", "fail", "timeout", "timed_out"];
    match value {
        Value::String(s) if FAILED.iter().any(|f| s.trim().eq_ignore_ascii_case(f)) => {
            Some(format!("status: {}", s.trim()))
        }
        Value::Number(n) if n.as_u64().is_some_and(|c| (400..=599).contains(&c)) => {
            Some(format!("status {n}"))
        }
        _ => None,
    }
}

/// Inserts an extra field into metadata without overwriting an entry the producer set.
fn insert_extra(metadata: &mut BTreeMap<String, Value>, key: String, value: Value) {
    if metadata.contains_key(&key) {
        metadata.insert(format!("top_level.{key}"), value);
    } else {
        metadata.insert(key, value);
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

/// The OTLP span status code that marks a failed operation (`STATUS_CODE_ERROR`).
pub const OTLP_STATUS_CODE_ERROR: i32 = 2;

/// An OTLP attribute value (`AnyValue`), independent of the wire encoding.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// `stringValue`.
    String(String),
    /// `boolValue`.
    Bool(bool),
    /// `intValue`.
    Int(i64),
    /// `doubleValue`.
    Double(f64),
    /// `bytesValue` (raw bytes; base64 in OTLP/JSON).
    Bytes(Vec<u8>),
    /// `arrayValue`.
    Array(Vec<AttrValue>),
    /// `kvlistValue`.
    KvList(Vec<(String, AttrValue)>),
}

impl AttrValue {
    /// The value as JSON, for metadata (bytes as lowercase hex, non-finite doubles as strings).
    pub fn to_json(&self) -> Value {
        match self {
            AttrValue::String(s) => Value::String(s.clone()),
            AttrValue::Bool(b) => Value::Bool(*b),
            AttrValue::Int(i) => Value::from(*i),
            AttrValue::Double(d) => serde_json::Number::from_f64(*d)
                .map_or_else(|| Value::String(d.to_string()), Value::Number),
            AttrValue::Bytes(bytes) => {
                Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
            }
            AttrValue::Array(items) => Value::Array(items.iter().map(AttrValue::to_json).collect()),
            AttrValue::KvList(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// The value as a non-empty string, if it is one.
    fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) if !s.trim().is_empty() => Some(s.trim()),
            _ => None,
        }
    }

    /// The value as a token count (integer, integral double or numeric string).
    fn as_count(&self) -> Option<u64> {
        match self {
            AttrValue::Int(i) => u64::try_from(*i).ok(),
            AttrValue::Double(d) => float_to_count(*d),
            AttrValue::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
    }
}

/// One OTLP span, reduced to what Sentinel maps; filled by the OTLP/JSON reader here or by a protobuf decoder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OtlpSpan {
    /// Trace id as lowercase hex (OTLP/JSON sends hex; a protobuf decoder hex-encodes the 16 bytes); empty if unset.
    pub trace_id: String,
    /// Span id as lowercase hex; empty if unset.
    pub span_id: String,
    /// Span name.
    pub name: String,
    /// Start time in Unix nanoseconds; 0 if unset.
    pub start_time_unix_nano: u64,
    /// End time in Unix nanoseconds; 0 if unset.
    pub end_time_unix_nano: u64,
    /// Status code: 0 unset, 1 ok, 2 error ([`OTLP_STATUS_CODE_ERROR`]).
    pub status_code: i32,
    /// Status message.
    pub status_message: String,
    /// Span attributes, in wire order.
    pub attributes: Vec<(String, AttrValue)>,
}

impl OtlpSpan {
    /// Whether the span describes a GenAI call (has a `gen_ai.*` attribute).
    pub fn is_gen_ai(&self) -> bool {
        self.attributes
            .iter()
            .any(|(k, _)| k.starts_with("gen_ai."))
    }
}

/// Maps one span with its resource's attributes to an [`Event`]; `Ok(None)` for a span that is not a GenAI span.
///
/// Mapping: `gen_ai.system` (or `gen_ai.provider.name`) → provider;
/// `gen_ai.request.model`, else `gen_ai.response.model` → model;
/// `gen_ai.usage.input_tokens` / `output_tokens` (or the older `prompt_tokens` /
/// `completion_tokens`) and `gen_ai.usage.total_tokens` → token counts;
/// `gen_ai.response.finish_reasons` → finish reason (joined with `,`);
/// `gen_ai.prompt` / `gen_ai.completion` → texts; `gen_ai.response.id` → request id;
/// `user.id` (or `enduser.id`) → user; `session.id` (or `gen_ai.conversation.id`) →
/// session; resource `service.name` (or a span attribute of that name) → service;
/// end − start → latency; end → timestamp; status code 2 → errors (status message, else
/// `error.type`, else `span status error`); `<trace_id>:<span_id>` → event id. The span
/// name goes to metadata as `otel.span.name`, other span attributes under their key,
/// other resource attributes as `resource.<key>`. The first of duplicate keys wins.
pub fn event_from_otlp_span(
    resource_attributes: &[(String, AttrValue)],
    span: &OtlpSpan,
) -> Result<Option<Event>, EventError> {
    if !span.is_gen_ai() {
        return Ok(None);
    }
    let mut attrs: BTreeMap<&str, &AttrValue> = BTreeMap::new();
    for (key, value) in &span.attributes {
        attrs.entry(key.as_str()).or_insert(value);
    }
    let mut resource: BTreeMap<&str, &AttrValue> = BTreeMap::new();
    for (key, value) in resource_attributes {
        resource.entry(key.as_str()).or_insert(value);
    }
    let mut problems = Problems::default();

    let mut take_str = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| {
                attrs
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(|s| (*k, s.to_owned()))
            })
            .map(|(k, s)| {
                attrs.remove(k);
                s
            })
    };
    let provider = take_str(&["gen_ai.system", "gen_ai.provider.name"]);
    let model = take_str(&["gen_ai.request.model", "gen_ai.response.model"]);
    let prompt_text = take_str(&["gen_ai.prompt"]);
    let response_text = take_str(&["gen_ai.completion"]);
    let request_id = take_str(&["gen_ai.response.id"]);
    let user_id = take_str(&["user.id", "enduser.id"]);
    let session_id = take_str(&["session.id", "gen_ai.conversation.id"]);
    let span_service = take_str(&["service.name"]);

    let mut take_count = |keys: &[&'static str], problems: &mut Problems| {
        let key = keys.iter().find(|k| attrs.contains_key(*k))?;
        let value = attrs.remove(key)?;
        let parsed = value.as_count();
        if parsed.is_none() {
            problems.push(
                &format!("attributes.{key}"),
                format!(
                    "expected a non-negative integer, got {}",
                    show(&value.to_json())
                ),
            );
        }
        parsed
    };
    let prompt_tokens = take_count(
        &["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"],
        &mut problems,
    );
    let completion_tokens = take_count(
        &[
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
        ],
        &mut problems,
    );
    let total_tokens = take_count(&["gen_ai.usage.total_tokens"], &mut problems);

    let finish_reason = match attrs.get("gen_ai.response.finish_reasons") {
        Some(AttrValue::Array(items)) => {
            let reasons: Vec<&str> = items.iter().filter_map(AttrValue::as_str).collect();
            (!reasons.is_empty()).then(|| reasons.join(","))
        }
        Some(value) => value.as_str().map(str::to_owned),
        None => None,
    };
    if finish_reason.is_some() {
        attrs.remove("gen_ai.response.finish_reasons");
    }

    if model.is_none() {
        problems.missing("attributes.gen_ai.request.model");
    }
    let service = resource
        .remove("service.name")
        .and_then(AttrValue::as_str)
        .map(str::to_owned)
        .or(span_service);
    if service.is_none() {
        problems.missing("resource.attributes.service.name");
    }
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 {
        problems.missing("startTimeUnixNano");
    }
    if end == 0 {
        problems.missing("endTimeUnixNano");
    } else if start != 0 && end < start {
        problems.push(
            "endTimeUnixNano",
            format!("{end} is before startTimeUnixNano {start}"),
        );
    }
    if !problems.0.is_empty() {
        return Err(EventError::Invalid(problems.0));
    }

    let mut errors = Vec::new();
    if span.status_code == OTLP_STATUS_CODE_ERROR {
        let message = span.status_message.trim();
        errors.push(if !message.is_empty() {
            message.to_owned()
        } else if let Some(kind) = attrs.get("error.type").and_then(|v| v.as_str()) {
            kind.to_owned()
        } else {
            "span status error".to_owned()
        });
    }

    let mut metadata: BTreeMap<String, Value> = BTreeMap::new();
    if !span.name.is_empty() {
        metadata.insert(
            "otel.span.name".to_owned(),
            Value::String(span.name.clone()),
        );
    }
    for (key, value) in attrs {
        metadata.insert(key.to_owned(), value.to_json());
    }
    for (key, value) in resource {
        metadata.insert(format!("resource.{key}"), value.to_json());
    }

    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_ascii_lowercase());
    let trace_id = non_empty(&span.trace_id);
    let span_id = non_empty(&span.span_id);
    let event_id = trace_id
        .as_ref()
        .zip(span_id.as_ref())
        .map(|(t, s)| format!("{t}:{s}"));

    Ok(Some(Event {
        event_id,
        // `end` is at most u64::MAX, so `end / 1e6` is below 2^45 and fits an i64.
        timestamp_ms: (end / 1_000_000) as i64,
        service: service.unwrap_or_default(),
        model: model.unwrap_or_default(),
        provider,
        trace_id,
        span_id,
        user_id,
        session_id,
        request_id,
        latency_ms: (end - start) as f64 / 1e6,
        prompt_tokens,
        completion_tokens,
        total_tokens,
        cost_usd: None,
        finish_reason,
        prompt_text,
        response_text,
        errors,
        metadata,
    }))
}

/// Parses an OTLP/HTTP JSON `ExportTraceServiceRequest`: one result per GenAI span, in document order; other spans are skipped.
///
/// Both the lowerCamelCase names of the OTLP/JSON encoding and the protobuf
/// snake_case names are read; 64-bit integers may be numbers or strings; the status
/// code may be a number or its enum name. Errors carry the path of the span, e.g.
/// `resourceSpans[0].scopeSpans[1].spans[2].attributes.gen_ai.usage.input_tokens`.
pub fn parse_otlp_traces(request: &Value) -> Vec<Result<Event, EventError>> {
    let Some(object) = request.as_object() else {
        return vec![Err(EventError::NotAnObject(json_kind(request)))];
    };
    let resource_spans = match field(object, "resourceSpans", "resource_spans") {
        None => return vec![Err(invalid("resourceSpans", "missing"))],
        Some(Value::Array(items)) => items,
        Some(other) => {
            return vec![Err(invalid(
                "resourceSpans",
                format!("expected an array, got {}", show(other)),
            ))]
        }
    };
    let mut results = Vec::new();
    for (r, resource_span) in resource_spans.iter().enumerate() {
        let resource_path = format!("resourceSpans[{r}]");
        read_resource_spans(resource_span, &resource_path, &mut results);
    }
    results
}

/// A single-problem [`EventError::Invalid`].
fn invalid(field: &str, problem: impl Into<String>) -> EventError {
    EventError::Invalid(vec![FieldError::new(field, problem)])
}

/// The value under the camelCase or snake_case name, treating `null` as absent.
fn field<'v>(object: &'v Map<String, Value>, camel: &str, snake: &str) -> Option<&'v Value> {
    get(object, camel).or_else(|| get(object, snake))
}

/// The array under the camelCase or snake_case name; an absent field is an empty list.
fn array<'v>(
    object: &'v Map<String, Value>,
    camel: &str,
    snake: &str,
    path: &str,
    problems: &mut Problems,
) -> &'v [Value] {
    match field(object, camel, snake) {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            problems.push(
                &format!("{path}.{camel}"),
                format!("expected an array, got {}", show(other)),
            );
            &[]
        }
    }
}

/// Reads one `resourceSpans[]` entry and appends a result per GenAI span.
fn read_resource_spans(value: &Value, path: &str, results: &mut Vec<Result<Event, EventError>>) {
    let Some(object) = value.as_object() else {
        results.push(Err(invalid(
            path,
            format!("expected an object, got {}", show(value)),
        )));
        return;
    };
    let mut resource_problems = Problems::default();
    let resource_attributes = match field(object, "resource", "resource").and_then(Value::as_object)
    {
        Some(resource) => read_attributes(
            resource,
            &format!("{path}.resource"),
            &mut resource_problems,
        ),
        None => Vec::new(),
    };
    let mut scope_problems = Problems::default();
    let scopes = array(
        object,
        "scopeSpans",
        "scope_spans",
        path,
        &mut scope_problems,
    );
    if !scope_problems.0.is_empty() {
        results.push(Err(EventError::Invalid(scope_problems.0)));
    }
    for (s, scope) in scopes.iter().enumerate() {
        let scope_path = format!("{path}.scopeSpans[{s}]");
        let mut problems = Problems::default();
        let spans = match scope.as_object() {
            Some(scope) => array(scope, "spans", "spans", &scope_path, &mut problems),
            None => {
                problems.push(
                    &scope_path,
                    format!("expected an object, got {}", show(scope)),
                );
                &[]
            }
        };
        if !problems.0.is_empty() {
            results.push(Err(EventError::Invalid(problems.0)));
        }
        for (i, span_value) in spans.iter().enumerate() {
            let span_path = format!("{scope_path}.spans[{i}]");
            let mut problems = Problems::default();
            let span = read_span(span_value, &span_path, &mut problems);
            if !span.is_gen_ai() {
                continue;
            }
            problems.0.splice(0..0, resource_problems.0.iter().cloned());
            let result = if problems.0.is_empty() {
                event_from_otlp_span(&resource_attributes, &span)
            } else {
                Err(EventError::Invalid(problems.0))
            };
            match result {
                Ok(Some(event)) => results.push(Ok(event)),
                Ok(None) => {}
                Err(EventError::Invalid(fields)) => {
                    let fields = fields
                        .into_iter()
                        .map(|f| FieldError {
                            field: locate(&f.field, path, &span_path),
                            problem: f.problem,
                        })
                        .collect();
                    results.push(Err(EventError::Invalid(fields)));
                }
                Err(other) => results.push(Err(other)),
            }
        }
    }
}

/// Gives a mapping error's field its full document path.
fn locate(field: &str, resource_path: &str, span_path: &str) -> String {
    if field.starts_with("resourceSpans[") {
        field.to_owned()
    } else if field.starts_with("resource.") {
        format!("{resource_path}.{field}")
    } else {
        format!("{span_path}.{field}")
    }
}

/// Reads one span object.
fn read_span(value: &Value, path: &str, problems: &mut Problems) -> OtlpSpan {
    let Some(object) = value.as_object() else {
        problems.push(path, format!("expected an object, got {}", show(value)));
        return OtlpSpan::default();
    };
    let mut string = |camel: &str, snake: &str| match field(object, camel, snake) {
        None => String::new(),
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(other) => {
            problems.push(
                &format!("{path}.{camel}"),
                format!("expected a string, got {}", show(other)),
            );
            String::new()
        }
    };
    let trace_id = string("traceId", "trace_id");
    let span_id = string("spanId", "span_id");
    let name = string("name", "name");
    let mut nanos = |camel: &str, snake: &str| {
        let value = field(object, camel, snake)?;
        let parsed = as_count(value);
        if parsed.is_none() {
            problems.push(
                &format!("{path}.{camel}"),
                format!(
                    "expected Unix nanoseconds as a non-negative integer, got {}",
                    show(value)
                ),
            );
        }
        parsed
    };
    let start_time_unix_nano = nanos("startTimeUnixNano", "start_time_unix_nano").unwrap_or(0);
    let end_time_unix_nano = nanos("endTimeUnixNano", "end_time_unix_nano").unwrap_or(0);
    let (status_code, status_message) = read_status(object, path, problems);
    let attributes = read_attributes(object, path, problems);
    OtlpSpan {
        trace_id,
        span_id,
        name,
        start_time_unix_nano,
        end_time_unix_nano,
        status_code,
        status_message,
        attributes,
    }
}

/// Reads a span's `status {code, message}`.
fn read_status(object: &Map<String, Value>, path: &str, problems: &mut Problems) -> (i32, String) {
    let Some(status) = get(object, "status") else {
        return (0, String::new());
    };
    let Some(status) = status.as_object() else {
        problems.push(
            &format!("{path}.status"),
            format!("expected an object, got {}", show(status)),
        );
        return (0, String::new());
    };
    let code = match get(status, "code") {
        None => 0,
        Some(value) => {
            let code = match value {
                Value::String(s) => match s.trim() {
                    "STATUS_CODE_UNSET" => Some(0),
                    "STATUS_CODE_OK" => Some(1),
                    "STATUS_CODE_ERROR" => Some(OTLP_STATUS_CODE_ERROR),
                    other => other.parse::<i32>().ok(),
                },
                Value::Number(n) => n.as_i64().and_then(|c| i32::try_from(c).ok()),
                _ => None,
            };
            code.unwrap_or_else(|| {
                problems.push(
                    &format!("{path}.status.code"),
                    format!(
                        "expected 0, 1, 2 or STATUS_CODE_UNSET/OK/ERROR, got {}",
                        show(value)
                    ),
                );
                0
            })
        }
    };
    let message = match get(status, "message") {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    };
    (code, message)
}

/// Reads the `attributes` list of an object (a span or a resource).
fn read_attributes(
    object: &Map<String, Value>,
    path: &str,
    problems: &mut Problems,
) -> Vec<(String, AttrValue)> {
    read_key_values(
        array(object, "attributes", "attributes", path, problems),
        &format!("{path}.attributes"),
        problems,
    )
}

/// Reads a list of OTLP `KeyValue`s; entries with an unset value are skipped.
fn read_key_values(
    items: &[Value],
    path: &str,
    problems: &mut Problems,
) -> Vec<(String, AttrValue)> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(entry) = item.as_object() else {
            problems.push(
                &item_path,
                format!("expected an object {{key, value}}, got {}", show(item)),
            );
            continue;
        };
        let Some(key) = get(entry, "key").and_then(Value::as_str) else {
            problems.push(&format!("{item_path}.key"), "missing");
            continue;
        };
        if let Some(value) = get(entry, "value") {
            if let Some(value) = read_any_value(value, &format!("{path}.{key}"), problems) {
                out.push((key.to_owned(), value));
            }
        }
    }
    out
}

/// Reads an OTLP/JSON `AnyValue`; `None` when it is unset or malformed (malformed is reported).
fn read_any_value(value: &Value, path: &str, problems: &mut Problems) -> Option<AttrValue> {
    let Some(object) = value.as_object() else {
        problems.push(
            path,
            format!("expected an AnyValue object, got {}", show(value)),
        );
        return None;
    };
    let bad = |problems: &mut Problems, expected: &str, got: &Value| {
        problems.push(path, format!("expected {expected}, got {}", show(got)));
        None
    };
    if let Some(v) = field(object, "stringValue", "string_value") {
        return match v {
            Value::String(s) => Some(AttrValue::String(s.clone())),
            other => bad(problems, "a string", other),
        };
    }
    if let Some(v) = field(object, "boolValue", "bool_value") {
        return match v {
            Value::Bool(b) => Some(AttrValue::Bool(*b)),
            other => bad(problems, "a boolean", other),
        };
    }
    if let Some(v) = field(object, "intValue", "int_value") {
        let parsed = match v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        return parsed
            .map(AttrValue::Int)
            .or_else(|| bad(problems, "a 64-bit integer", v));
    }
    if let Some(v) = field(object, "doubleValue", "double_value") {
        let parsed = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => match s.trim() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                other => other.parse::<f64>().ok(),
            },
            _ => None,
        };
        return parsed
            .map(AttrValue::Double)
            .or_else(|| bad(problems, "a number", v));
    }
    if let Some(v) = field(object, "bytesValue", "bytes_value") {
        return match v.as_str().and_then(decode_base64) {
            Some(bytes) => Some(AttrValue::Bytes(bytes)),
            None => bad(problems, "a base64 string", v),
        };
    }
    if let Some(v) = field(object, "arrayValue", "array_value") {
        let Some(values) = v.as_object().map(|a| get(a, "values")) else {
            return bad(problems, "an object {values}", v);
        };
        let items = match values {
            None => &[][..],
            Some(Value::Array(items)) => items,
            Some(other) => return bad(problems, "an array of values", other),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(value) = read_any_value(item, &format!("{path}[{i}]"), problems) {
                out.push(value);
            }
        }
        return Some(AttrValue::Array(out));
    }
    if let Some(v) = field(object, "kvlistValue", "kvlist_value") {
        let Some(values) = v.as_object().map(|a| get(a, "values")) else {
            return bad(problems, "an object {values}", v);
        };
        let items = match values {
            None => &[][..],
            Some(Value::Array(items)) => items,
            Some(other) => return bad(problems, "an array of key-values", other),
        };
        return Some(AttrValue::KvList(read_key_values(items, path, problems)));
    }
    None
}

/// Decodes standard or URL-safe base64, padding optional; `None` if malformed.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let data = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(data.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in data.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (bits < 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Event, EventError> {
        parse_event(value.to_string().as_bytes())
    }

    fn problems(result: Result<Event, EventError>) -> Vec<String> {
        match result {
            Err(e) => e.field_errors().iter().map(ToString::to_string).collect(),
            Ok(event) => panic!("expected an error, got {event:?}"),
        }
    }

    fn nested_sample() -> Value {
        json!({
            "event_id": "5f0c4b1e-8d3a-4c2b-9a7e-2f1d6c3b4a59",
            "timestamp": "2024-06-10T12:00:00.250Z",
            "service_name": "support-bot",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "model": "gpt-4o",
            "prompt": {"text": "How do I reset my password?", "tokens": 12,
                       "embedding": [0.1, 0.2, 0.3], "language": "en"},
            "response": {"text": "Open Settings → Security.", "tokens": 48,
                         "finish_reason": "stop", "embedding": [0.3, 0.2, 0.1, 0.0]},
            "latency_ms": 812.5,
            "cost_usd": 0.00051,
            "metadata": {"environment": "prod", "user_id": "u-42", "region": "eu-west-1"},
            "errors": [],
            "sdk_version": "python/1.4.2"
        })
    }

    fn flat_sample() -> Value {
        json!({
            "timestamp": 1718020800123_i64,
            "service_name": "search-api",
            "model_name": "claude-3-5-sonnet-20241022",
            "latency_ms": "1250",
            "prompt_tokens": 350,
            "completion_tokens": "120",
            "total_tokens": 470,
            "cost_usd": 0.00285,
            "user_id": 1009,
            "session_id": "sess-77",
            "request_id": "req-9f2",
            "prompt_text": "Summarise this document",
            "metadata": {"ab_bucket": 3, "flags": ["beta"], "cached": false},
            "temperature": 0.2
        })
    }

    #[test]
    fn nested_event_is_normalised() {
        let event = parse(nested_sample()).unwrap();
        assert_eq!(
            event.event_id.as_deref(),
            Some("5f0c4b1e-8d3a-4c2b-9a7e-2f1d6c3b4a59")
        );
        assert_eq!(event.timestamp_ms, 1_718_020_800_250);
        assert_eq!(event.service, "support-bot");
        assert_eq!(event.model, "gpt-4o");
        assert_eq!(
            event.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(event.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(event.prompt_tokens, Some(12));
        assert_eq!(event.completion_tokens, Some(48));
        assert_eq!(event.total_tokens, None);
        assert_eq!(event.finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            event.prompt_text.as_deref(),
            Some("How do I reset my password?")
        );
        assert_eq!(
            event.response_text.as_deref(),
            Some("Open Settings → Security.")
        );
        assert_eq!(event.latency_ms, 812.5);
        assert_eq!(event.cost_usd, Some(0.00051));
        assert!(event.errors.is_empty());
        assert_eq!(
            event.user_id.as_deref(),
            Some("u-42"),
            "lifted from metadata"
        );
        assert_eq!(event.metadata["environment"], "prod");
        assert_eq!(event.metadata["sdk_version"], "python/1.4.2");
        assert_eq!(event.metadata["prompt.language"], "en");
        assert_eq!(event.metadata["prompt.embedding_dim"], 3);
        assert_eq!(event.metadata["response.embedding_dim"], 4);
        assert!(!event.metadata.contains_key("prompt.embedding"));
    }

    #[test]
    fn flat_event_is_normalised() {
        let event = parse(flat_sample()).unwrap();
        assert_eq!(
            event.event_id.as_deref(),
            Some("req-9f2"),
            "request_id stands in"
        );
        assert_eq!(event.timestamp_ms, 1_718_020_800_123);
        assert_eq!(event.service, "search-api");
        assert_eq!(event.model, "claude-3-5-sonnet-20241022");
        assert_eq!(event.latency_ms, 1250.0);
        assert_eq!(event.prompt_tokens, Some(350));
        assert_eq!(event.completion_tokens, Some(120));
        assert_eq!(event.total_tokens, Some(470));
        assert_eq!(event.user_id.as_deref(), Some("1009"));
        assert_eq!(event.session_id.as_deref(), Some("sess-77"));
        assert_eq!(event.request_id.as_deref(), Some("req-9f2"));
        assert_eq!(
            event.prompt_text.as_deref(),
            Some("Summarise this document")
        );
        assert_eq!(event.response_text, None);
        assert_eq!(event.metadata["ab_bucket"], 3);
        assert_eq!(event.metadata["flags"], json!(["beta"]));
        assert_eq!(event.metadata["cached"], false);
        assert_eq!(event.metadata["temperature"], 0.2);
        assert!(!event.is_error());
    }

    #[test]
    fn shapes_are_detected_from_keys() {
        let shape = |v: Value| detect_shape(v.as_object().unwrap());
        assert_eq!(shape(nested_sample()), InputShape::Nested);
        assert_eq!(shape(flat_sample()), InputShape::Flat);
        assert_eq!(shape(json!({"resourceSpans": []})), InputShape::Otlp);
        assert_eq!(
            shape(json!({"model": "m", "service_name": "s"})),
            InputShape::Nested
        );
        assert_eq!(shape(json!({})), InputShape::Flat);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let mut bad = nested_sample();
        bad["prompt"]["tokens"] = json!("abc");
        bad["response"]["tokens"] = json!(-3);
        bad["latency_ms"] = json!(true);
        bad["timestamp"] = json!("yesterday");
        bad["model"] = json!("");
        bad.as_object_mut().unwrap().remove("service_name");
        bad["metadata"] = json!("prod");
        let found = problems(parse(bad));
        assert_eq!(
            found,
            [
                "metadata: expected an object, got \"prod\"",
                "timestamp: expected an RFC 3339 date-time (e.g. 2024-06-10T12:00:00Z) or Unix seconds/milliseconds up to year 9999, got \"yesterday\"",
                "service_name: missing",
                "model: must not be empty",
                "latency_ms: expected a finite number, got true",
                "prompt.tokens: expected a non-negative integer, got \"abc\"",
                "response.tokens: expected a non-negative integer, got -3",
            ]
        );
        let missing = problems(parse(json!({})));
        assert_eq!(
            missing,
            [
                "timestamp: missing",
                "service_name: missing",
                "model_name: missing",
                "latency_ms: missing"
            ]
        );
        let message = parse(json!({"timestamp": 1})).unwrap_err().to_string();
        assert!(
            message.starts_with("invalid event, 3 problems: service_name: missing; "),
            "{message}"
        );
    }

    #[test]
    fn ill_typed_flat_fields_are_named() {
        let mut bad = flat_sample();
        bad["completion_tokens"] = json!(12.5);
        bad["cost_usd"] = json!("NaN");
        bad["user_id"] = json!({"id": 1});
        bad["prompt_text"] = json!(42);
        let found = problems(parse(bad));
        assert_eq!(
            found,
            [
                "completion_tokens: expected a non-negative integer, got 12.5",
                "prompt_text: expected a string, got 42",
                "user_id: expected a string, got {\"id\":1}",
                "cost_usd: expected a finite number, got \"NaN\"",
            ]
        );
    }

    #[test]
    fn timestamps_accept_rfc3339_and_unix_numbers() {
        let ts = |v: Value| timestamp_ms(&v);
        let noon = 1_718_020_800_000;
        assert_eq!(ts(json!("2024-06-10T12:00:00Z")), Some(noon));
        assert_eq!(ts(json!("2024-06-10T14:00:00+02:00")), Some(noon));
        assert_eq!(ts(json!("2024-06-10 12:00:00.5Z")), Some(noon + 500));
        assert_eq!(ts(json!("2024-06-10T12:00:00.123456")), Some(noon + 123));
        assert_eq!(ts(json!("2024-06-10 12:00:00")), Some(noon));
        assert_eq!(ts(json!(1_718_020_800)), Some(noon), "seconds");
        assert_eq!(
            ts(json!(1_718_020_800.25)),
            Some(noon + 250),
            "fractional seconds"
        );
        assert_eq!(ts(json!("1718020800")), Some(noon), "seconds as a string");
        assert_eq!(ts(json!(1_718_020_800_000_i64)), Some(noon), "milliseconds");
        assert_eq!(
            ts(json!(1_718_020_800_000_999_i64)),
            Some(noon),
            "microseconds"
        );
        assert_eq!(
            ts(json!(1_718_020_800_000_999_999_i64)),
            Some(noon),
            "nanoseconds"
        );
        assert_eq!(ts(json!(0)), Some(0));
        assert_eq!(ts(json!(1e300)), None);
        assert_eq!(ts(json!("2024-06-10")), None);
        assert_eq!(ts(json!(true)), None);
    }

    #[test]
    fn error_fields_in_the_wild_feed_errors() {
        let with = |extra: Value| {
            let mut v = flat_sample();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            parse(v).unwrap()
        };
        assert_eq!(
            with(json!({"error": "rate limited"})).errors,
            ["rate limited"]
        );
        assert_eq!(with(json!({"error": true})).errors, ["error flag set"]);
        assert!(with(json!({"error": false, "errors": []}))
            .errors
            .is_empty());
        assert!(with(json!({"error": "", "status": "success"}))
            .errors
            .is_empty());
        assert_eq!(
            with(json!({"errors": ["timeout", {"message": "upstream 503"}, null]})).errors,
            ["timeout", "upstream 503"]
        );
        let failed = with(json!({"status": "FAILED"}));
        assert_eq!(failed.errors, ["status: FAILED"]);
        assert_eq!(failed.metadata["status"], "FAILED");
        assert_eq!(with(json!({"status": 429})).errors, ["status 429"]);
        assert!(with(json!({"status": 200})).errors.is_empty());
    }

    #[test]
    fn metadata_collisions_keep_both_values() {
        let mut v = flat_sample();
        v["metadata"] = json!({"region": "eu"});
        v["region"] = json!("us");
        let event = parse(v).unwrap();
        assert_eq!(event.metadata["region"], "eu");
        assert_eq!(event.metadata["top_level.region"], "us");
    }

    #[test]
    fn other_shapes_spellings_are_fallbacks() {
        let event = parse(json!({
            "timestamp": "2024-06-10T12:00:00Z", "service_name": "s", "model": "m",
            "latency_ms": 5, "prompt": "hi", "response": {"text": "yo"}, "prompt_tokens": 3
        }))
        .unwrap();
        assert_eq!(event.prompt_text.as_deref(), Some("hi"));
        assert_eq!(event.response_text.as_deref(), Some("yo"));
        assert_eq!(event.prompt_tokens, Some(3));
        let flat_with_model = parse(json!({
            "timestamp": 1, "service_name": "s", "model": "m", "latency_ms": 5, "total_tokens": 9
        }))
        .unwrap();
        assert_eq!(flat_with_model.model, "m");
    }

    #[test]
    fn non_objects_and_otlp_requests_are_rejected_here() {
        assert!(matches!(
            parse_event(b"{not json"),
            Err(EventError::Json(_))
        ));
        assert_eq!(
            parse_event(b"[1,2]"),
            Err(EventError::NotAnObject("an array"))
        );
        let otlp = parse(json!({"resourceSpans": []})).unwrap_err();
        assert_eq!(otlp, EventError::OtlpRequest);
        assert!(otlp.to_string().contains("parse_otlp_traces"));
    }

    fn attr(key: &str, value: Value) -> Value {
        json!({"key": key, "value": value})
    }

    fn otlp_sample() -> Value {
        json!({"resourceSpans": [{
            "resource": {"attributes": [
                attr("service.name", json!({"stringValue": "checkout"})),
                attr("deployment.environment", json!({"stringValue": "staging"}))
            ]},
            "scopeSpans": [{
                "scope": {"name": "opentelemetry.instrumentation.openai"},
                "spans": [
                    {
                        "traceId": "5B8EFFF798038103D269B633813FC60C",
                        "spanId": "EEE19B7EC3C1B174",
                        "name": "chat gpt-4o-mini",
                        "startTimeUnixNano": "1718020799500000000",
                        "endTimeUnixNano": 1718020800000000000_u64,
                        "attributes": [
                            attr("gen_ai.system", json!({"stringValue": "openai"})),
                            attr("gen_ai.request.model", json!({"stringValue": "gpt-4o-mini"})),
                            attr("gen_ai.response.model", json!({"stringValue": "gpt-4o-mini-2024-07-18"})),
                            attr("gen_ai.usage.input_tokens", json!({"intValue": "120"})),
                            attr("gen_ai.usage.output_tokens", json!({"intValue": 30})),
                            attr("gen_ai.response.finish_reasons", json!({"arrayValue": {"values": [{"stringValue": "stop"}]}})),
                            attr("gen_ai.request.temperature", json!({"doubleValue": 0.7})),
                            attr("http.status_code", json!({"intValue": "200"})),
                            attr("user.id", json!({"stringValue": "u-7"})),
                            attr("payload", json!({"bytesValue": "aGk="}))
                        ],
                        "status": {}
                    },
                    {
                        "traceId": "5b8efff798038103d269b633813fc60c",
                        "spanId": "aaa19b7ec3c1b174",
                        "name": "HTTP GET",
                        "startTimeUnixNano": "1", "endTimeUnixNano": "2",
                        "attributes": [attr("http.method", json!({"stringValue": "GET"}))]
                    },
                    {
                        "trace_id": "5b8efff798038103d269b633813fc60c",
                        "span_id": "bbb19b7ec3c1b174",
                        "start_time_unix_nano": 1718020801000000000_u64,
                        "end_time_unix_nano": 1718020803000000000_u64,
                        "attributes": [
                            attr("gen_ai.system", json!({"string_value": "anthropic"})),
                            attr("gen_ai.response.model", json!({"string_value": "claude-3-haiku-20240307"})),
                            attr("gen_ai.usage.prompt_tokens", json!({"int_value": 10})),
                            attr("gen_ai.usage.completion_tokens", json!({"double_value": 4.0})),
                            attr("error.type", json!({"string_value": "overloaded_error"}))
                        ],
                        "status": {"code": "STATUS_CODE_ERROR"}
                    }
                ]
            }]
        }]})
    }

    #[test]
    fn otlp_genai_spans_are_mapped() {
        let results = parse_otlp_traces(&otlp_sample());
        assert_eq!(results.len(), 2, "the HTTP span is skipped");
        let chat = results[0].as_ref().unwrap();
        assert_eq!(chat.service, "checkout");
        assert_eq!(chat.provider.as_deref(), Some("openai"));
        assert_eq!(chat.model, "gpt-4o-mini");
        assert_eq!(chat.prompt_tokens, Some(120));
        assert_eq!(chat.completion_tokens, Some(30));
        assert_eq!(chat.finish_reason.as_deref(), Some("stop"));
        assert_eq!(chat.latency_ms, 500.0);
        assert_eq!(chat.timestamp_ms, 1_718_020_800_000);
        assert_eq!(
            chat.trace_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c")
        );
        assert_eq!(
            chat.event_id.as_deref(),
            Some("5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174")
        );
        assert_eq!(chat.user_id.as_deref(), Some("u-7"));
        assert!(chat.errors.is_empty());
        assert_eq!(
            chat.metadata["gen_ai.response.model"],
            "gpt-4o-mini-2024-07-18"
        );
        assert_eq!(chat.metadata["gen_ai.request.temperature"], 0.7);
        assert_eq!(chat.metadata["http.status_code"], 200);
        assert_eq!(chat.metadata["payload"], "6869");
        assert_eq!(chat.metadata["otel.span.name"], "chat gpt-4o-mini");
        assert_eq!(chat.metadata["resource.deployment.environment"], "staging");
        assert!(!chat.metadata.contains_key("gen_ai.usage.input_tokens"));

        let failed = results[1].as_ref().unwrap();
        assert_eq!(
            failed.model, "claude-3-haiku-20240307",
            "response model as fallback"
        );
        assert_eq!(failed.prompt_tokens, Some(10));
        assert_eq!(failed.completion_tokens, Some(4));
        assert_eq!(failed.latency_ms, 2000.0);
        assert_eq!(failed.errors, ["overloaded_error"]);
    }

    #[test]
    fn otlp_errors_carry_span_paths() {
        let mut request = otlp_sample();
        let span = &mut request["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        span["attributes"][1] = attr("gen_ai.operation.name", json!({"stringValue": "chat"}));
        span["attributes"][2] = attr("gen_ai.operation.kind", json!({"stringValue": "x"}));
        span["attributes"][3] = attr("gen_ai.usage.input_tokens", json!({"intValue": "-4"}));
        span["endTimeUnixNano"] = json!("1");
        request["resourceSpans"][0]["resource"]["attributes"][0] =
            attr("host.name", json!({"stringValue": "h"}));
        let results = parse_otlp_traces(&request);
        let found: Vec<String> = results[0]
            .as_ref()
            .unwrap_err()
            .field_errors()
            .iter()
            .map(ToString::to_string)
            .collect();
        let span = "resourceSpans[0].scopeSpans[0].spans[0]";
        assert_eq!(
            found,
            [
                format!("{span}.attributes.gen_ai.usage.input_tokens: expected a non-negative integer, got -4"),
                format!("{span}.attributes.gen_ai.request.model: missing"),
                "resourceSpans[0].resource.attributes.service.name: missing".to_owned(),
                format!("{span}.endTimeUnixNano: 1 is before startTimeUnixNano 1718020799500000000"),
            ]
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().field_errors()[0].field,
            "resourceSpans[0].resource.attributes.service.name"
        );
    }

    #[test]
    fn otlp_status_and_structure_problems() {
        let span = OtlpSpan {
            start_time_unix_nano: 1_000_000,
            end_time_unix_nano: 3_000_000,
            status_code: OTLP_STATUS_CODE_ERROR,
            status_message: "context length exceeded".into(),
            attributes: vec![(
                "gen_ai.request.model".into(),
                AttrValue::String("gpt-4".into()),
            )],
            ..OtlpSpan::default()
        };
        let resource = [("service.name".to_owned(), AttrValue::String("svc".into()))];
        let event = event_from_otlp_span(&resource, &span).unwrap().unwrap();
        assert_eq!(event.errors, ["context length exceeded"]);
        assert_eq!(event.latency_ms, 2.0);
        assert_eq!(event.event_id, None);
        let plain = OtlpSpan::default();
        assert_eq!(event_from_otlp_span(&resource, &plain), Ok(None));

        assert_eq!(
            parse_otlp_traces(&json!({"resourceSpans": 3}))[0]
                .as_ref()
                .unwrap_err()
                .to_string(),
            "invalid event, 1 problem: resourceSpans: expected an array, got 3"
        );
        assert!(parse_otlp_traces(&json!({"resourceSpans": []})).is_empty());
        assert_eq!(
            parse_otlp_traces(&json!([])),
            vec![Err(EventError::NotAnObject("an array"))]
        );
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(decode_base64("a"), None);
        assert_eq!(decode_base64("a!bc"), None);
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~]{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "123",
                "-1",
                "1e400",
                "NaN",
                "2024-06-10T12:00:00Z",
                "STATUS_CODE_ERROR",
                "aGk=",
            ])
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            let key = prop::sample::select(vec![
                "timestamp",
                "service_name",
                "model",
                "model_name",
                "latency_ms",
                "prompt",
                "response",
                "text",
                "tokens",
                "errors",
                "error",
                "status",
                "metadata",
                "resourceSpans",
                "scopeSpans",
                "spans",
                "attributes",
                "key",
                "value",
                "stringValue",
                "intValue",
                "doubleValue",
                "arrayValue",
                "kvlistValue",
                "bytesValue",
                "values",
                "startTimeUnixNano",
                "endTimeUnixNano",
                "code",
                "gen_ai.system",
                "embedding",
                "user_id",
                "other",
            ]);
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..8).prop_map(|m| Value::Object(
                    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_event_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_event(&bytes);
        }

        #[test]
        fn parsers_never_panic_on_json(value in arb_json()) {
            let _ = parse_event(value.to_string().as_bytes());
            let _ = parse_value(&value);
            let _ = parse_otlp_traces(&value);
            let _ = parse_otlp_traces(&json!({"resourceSpans": [value]}));
        }
    }
}
