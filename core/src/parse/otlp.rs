//! Events of OTLP GenAI spans: from OTLP/HTTP JSON requests, or from any decoder that
//! fills an [`OtlpSpan`].

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::error::{EventError, FieldError};
use super::fields::*;
use crate::event::Event;

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
pub(super) fn decode_base64(text: &str) -> Option<Vec<u8>> {
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
