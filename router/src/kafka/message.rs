//! What one Kafka message holds: one event (nested, flat, or an OTLP request with one
//! GenAI span), parsed, redacted and validated by the same [`Intake`] as every other
//! ingestion path, or why it is poison.
//!
//! One message carries one event. Several events cannot share the message's offset: a
//! shard applies a partition's offsets in strictly increasing order and skips any offset
//! at or below the highest it applied, so a second event of the same offset on the same
//! shard would be skipped. An OTLP request with several GenAI spans is therefore
//! dead-lettered (`several_events`); OTLP requests belong on `POST /v1/traces`.

use sentinel_core::{parse_otlp_traces, parse_value, Event, FieldError, Intake};
use serde_json::Value;

/// Why a message is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Empty, or not JSON.
    NotJson,
    /// JSON, but not an event in any accepted shape.
    WrongShape,
    /// An event that fails validation here.
    Invalid,
    /// More than one event (an OTLP request with several GenAI spans).
    SeveralEvents,
    /// An event its shard's leader refused.
    Rejected,
}

impl Reason {
    /// The label of the reason in headers and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NotJson => "not_json",
            Reason::WrongShape => "wrong_shape",
            Reason::Invalid => "invalid",
            Reason::SeveralEvents => "several_events",
            Reason::Rejected => "rejected",
        }
    }
}

/// What a message turned into.
#[derive(Debug)]
pub enum Decoded {
    /// One event, ready for its shard.
    Event(Box<Event>),
    /// An OTLP request without GenAI spans: nothing to ingest.
    Nothing,
    /// A message for the dead-letter topic, with every problem found.
    Poison(Reason, Vec<FieldError>),
}

/// Parses, redacts and validates the payload of one message.
pub fn prepare(intake: &Intake, payload: Option<&[u8]>) -> Decoded {
    let Some(payload) = payload.filter(|p| !p.trim_ascii().is_empty()) else {
        return Decoded::Poison(
            Reason::NotJson,
            vec![FieldError::new("", "the message is empty")],
        );
    };
    let document: Value = match serde_json::from_slice(payload) {
        Ok(document) => document,
        Err(e) => {
            return Decoded::Poison(
                Reason::NotJson,
                vec![FieldError::new("", format!("malformed JSON: {e}"))],
            )
        }
    };
    let mut events = intake.prepare_document(&document);
    match events.len() {
        0 => Decoded::Nothing,
        1 => match events.pop().expect("one event") {
            Ok(event) => Decoded::Event(Box::new(event)),
            Err(problems) => Decoded::Poison(shape_or_validation(&document), problems),
        },
        n => Decoded::Poison(
            Reason::SeveralEvents,
            vec![FieldError::new(
                "resourceSpans",
                format!(
                    "{n} GenAI spans in one message; a Kafka message carries one event \
                     (produce one span per message, or post OTLP requests to /v1/traces)"
                ),
            )],
        ),
    }
}

/// Whether a refused document failed parsing (wrong shape) or validation.
fn shape_or_validation(document: &Value) -> Reason {
    let parsed = match document.get("resourceSpans") {
        Some(_) => parse_otlp_traces(document)
            .into_iter()
            .next()
            .is_some_and(|span| span.is_ok()),
        None => parse_value(document).is_ok(),
    };
    if parsed {
        Reason::Invalid
    } else {
        Reason::WrongShape
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::{RedactionConfig, ValidationBounds};
    use serde_json::json;

    fn intake() -> Intake {
        Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap()
    }

    fn flat(latency: f64) -> Value {
        json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "service_name": "chat",
            "model_name": "gpt-4o",
            "latency_ms": latency,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "prompt_text": "call 555-867-5309 or mail ann@example.com",
        })
    }

    fn otlp(models: &[&str]) -> Value {
        let spans: Vec<Value> = models
            .iter()
            .map(|model| {
                json!({
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                    "name": "chat",
                    "startTimeUnixNano": "1767225600000000000",
                    "endTimeUnixNano": "1767225600250000000",
                    "attributes": [
                        {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                        {"key": "gen_ai.request.model", "value": {"stringValue": model}},
                    ],
                })
            })
            .collect();
        json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "chat"}}
            ]},
            "scopeSpans": [{"spans": spans}],
        }]})
    }

    fn reason(prepared: Decoded) -> Reason {
        match prepared {
            Decoded::Poison(reason, problems) => {
                assert!(!problems.is_empty());
                reason
            }
            other => panic!("not poison: {other:?}"),
        }
    }

    #[test]
    fn a_good_event_is_redacted_and_kept() {
        let bytes = flat(120.0).to_string();
        let Decoded::Event(event) = prepare(&intake(), Some(bytes.as_bytes())) else {
            panic!("refused")
        };
        assert_eq!(event.model, "gpt-4o");
        assert!(!event.prompt_text.unwrap().contains("ann@example.com"));
        let bytes = otlp(&["gpt-4o"]).to_string();
        assert!(matches!(
            prepare(&intake(), Some(bytes.as_bytes())),
            Decoded::Event(_)
        ));
        let bytes = otlp(&[]).to_string();
        assert!(matches!(
            prepare(&intake(), Some(bytes.as_bytes())),
            Decoded::Nothing
        ));
    }

    #[test]
    fn poison_is_told_apart() {
        let intake = intake();
        let poison = |bytes: &str| reason(prepare(&intake, Some(bytes.as_bytes())));
        assert_eq!(reason(prepare(&intake, None)), Reason::NotJson);
        assert_eq!(poison("  \n"), Reason::NotJson);
        assert_eq!(poison("{not json"), Reason::NotJson);
        assert_eq!(poison("[1, 2]"), Reason::WrongShape);
        assert_eq!(poison(r#"{"hello": "world"}"#), Reason::WrongShape);
        assert_eq!(poison(&flat(-5.0).to_string()), Reason::Invalid);
        assert_eq!(
            poison(&otlp(&["gpt-4o", "gpt-4o-mini"]).to_string()),
            Reason::SeveralEvents
        );
        assert_eq!(Reason::SeveralEvents.label(), "several_events");
    }
}
