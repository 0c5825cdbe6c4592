//! The normalised telemetry event every input shape is turned into.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// One LLM call, normalised from any accepted input shape (nested SDK, flat producer, OTLP span).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Event {
    /// Producer-assigned id (UUID string) used for idempotent ingestion; absent in flat events without `request_id`.
    pub event_id: Option<String>,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Calling service (`service_name`).
    pub service: String,
    /// Model name (`model` / `model_name` / `gen_ai.request.model`).
    pub model: String,
    /// Provider or system (`gen_ai.system`), when known.
    pub provider: Option<String>,
    /// Distributed-trace id, when known.
    pub trace_id: Option<String>,
    /// Span id, when known.
    pub span_id: Option<String>,
    /// End user, when known.
    pub user_id: Option<String>,
    /// Conversation or session, when known.
    pub session_id: Option<String>,
    /// Producer request id, when known.
    pub request_id: Option<String>,
    /// End-to-end latency in milliseconds.
    pub latency_ms: f64,
    /// Input tokens, when known.
    pub prompt_tokens: Option<u64>,
    /// Output tokens, when known.
    pub completion_tokens: Option<u64>,
    /// Total tokens as reported by the producer, when known.
    pub total_tokens: Option<u64>,
    /// Cost in USD as reported by the producer, when known.
    pub cost_usd: Option<f64>,
    /// Why generation stopped (`stop`, `length`, ...), when known.
    pub finish_reason: Option<String>,
    /// Prompt text (redacted before it is stored or forwarded).
    pub prompt_text: Option<String>,
    /// Response text (redacted before it is stored or forwarded).
    pub response_text: Option<String>,
    /// Errors reported for the call; non-empty means the call failed.
    pub errors: Vec<String>,
    /// Extra fields of the input, kept rather than rejected.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Event {
    /// The event in the nested SDK input shape, which [`crate::parse_value`] reads back
    /// into an equal event.
    pub fn to_nested_json(&self) -> Value {
        let mut object = Map::new();
        let mut put = |key: &str, value: Value| {
            if !value.is_null() {
                object.insert(key.to_owned(), value);
            }
        };
        put("event_id", json!(self.event_id));
        put(
            "timestamp",
            json!(chrono::DateTime::from_timestamp_millis(self.timestamp_ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
        );
        put("service_name", json!(self.service));
        put("model", json!(self.model));
        put("provider", json!(self.provider));
        put("trace_id", json!(self.trace_id));
        put("span_id", json!(self.span_id));
        put("user_id", json!(self.user_id));
        put("session_id", json!(self.session_id));
        put("request_id", json!(self.request_id));
        put("latency_ms", json!(self.latency_ms));
        put("cost_usd", json!(self.cost_usd));
        put("total_tokens", json!(self.total_tokens));
        put(
            "prompt",
            json!({"text": self.prompt_text, "tokens": self.prompt_tokens}),
        );
        put(
            "response",
            json!({
                "text": self.response_text,
                "tokens": self.completion_tokens,
                "finish_reason": self.finish_reason,
            }),
        );
        if !self.errors.is_empty() {
            put("errors", json!(self.errors));
        }
        if !self.metadata.is_empty() {
            put("metadata", json!(self.metadata));
        }
        Value::Object(object)
    }

    /// Whether the call failed.
    pub fn is_error(&self) -> bool {
        !self.errors.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_json_reads_back_as_the_same_event() {
        let event = Event {
            event_id: Some("0b8f6c1e-1d2a-4e0f-9a51-2f4c3d5e6f70".into()),
            timestamp_ms: 1_767_225_600_123,
            service: "checkout".into(),
            model: "gpt-4o".into(),
            provider: Some("openai".into()),
            trace_id: Some("trace-1".into()),
            span_id: None,
            user_id: Some("u-42".into()),
            session_id: Some("s-7".into()),
            request_id: Some("r-9".into()),
            latency_ms: 812.5,
            prompt_tokens: Some(420),
            completion_tokens: Some(96),
            total_tokens: Some(516),
            cost_usd: Some(0.0123),
            finish_reason: Some("stop".into()),
            prompt_text: Some("Summarize the order".into()),
            response_text: None,
            errors: vec!["rate limited".into()],
            metadata: [("region".to_owned(), json!("eu-west-1"))].into(),
        };
        let read = crate::parse_value(&event.to_nested_json()).expect("parses");
        assert_eq!(read, event);
    }
}
