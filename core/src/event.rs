//! The normalised telemetry event every input shape is turned into.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
    /// Whether the call failed.
    pub fn is_error(&self) -> bool {
        !self.errors.is_empty()
    }
}
