//! The normalised telemetry event every input shape is turned into.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

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

    /// A digest of everything but the `event_id`: a repeated id with an equal digest is
    /// the same call sent again, with another digest a different call. Pinned (the first
    /// 8 bytes of SHA-256 over the content's JSON), so every replica computes the same.
    pub fn content_digest(&self) -> u64 {
        let content = Event {
            event_id: None,
            ..self.clone()
        };
        let json = serde_json::to_vec(&content).expect("events serialize");
        let hash = Sha256::digest(&json);
        u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
    }

    /// The id a call is applied under when its own `id` was taken by a call of other
    /// content: the id, `~` and the call's content digest, so a retry gets the same id.
    pub fn derived_event_id(id: &str, content_digest: u64) -> String {
        format!("{id}~{content_digest:016x}")
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

    #[test]
    fn the_content_digest_ignores_the_id_and_sees_every_other_field() {
        let call = Event {
            event_id: Some("1767225600123-4821".into()),
            request_id: Some("1767225600123-4821".into()),
            timestamp_ms: 1_767_225_600_123,
            service: "checkout".into(),
            model: "gpt-4o".into(),
            latency_ms: 812.5,
            ..Event::default()
        };
        let retry = Event {
            event_id: Some("another".into()),
            ..call.clone()
        };
        assert_eq!(call.content_digest(), retry.content_digest());
        let other = Event {
            latency_ms: 812.6,
            ..call.clone()
        };
        assert_ne!(call.content_digest(), other.content_digest());
        assert_eq!(
            call.content_digest(),
            0x68c8_5246_9787_4f65,
            "the digest is pinned: replicas of every release agree"
        );
        assert_eq!(Event::derived_event_id("r-1", 0xab), "r-1~00000000000000ab");
    }
}
