//! The checks every received event goes through before it is forwarded or stored, on
//! every ingestion path (router and node alike): parse (any input shape), redact,
//! validate, with every problem reported by field.
//!
//! Redaction runs before validation, as [`crate::validate`] requires: truncating first
//! could cut a secret in half and leave a fragment that no longer looks like one.

use serde_json::Value;

use crate::event::Event;
use crate::parse::{
    detect_shape, event_from_otlp_span, parse_event, parse_otlp_traces, parse_value, AttrValue,
    InputShape, OtlpSpan,
};
use crate::redact::{RedactError, RedactionConfig, Redactor};
use crate::validate::{validate, ValidationBounds};
use crate::{EventError, FieldError};

/// Parsing, redaction and validation with one configuration.
#[derive(Debug)]
pub struct Intake {
    bounds: ValidationBounds,
    redactor: Redactor,
}

/// The field-level problems of an input that could not be turned into an event.
pub fn refusal(error: EventError) -> Vec<FieldError> {
    match error {
        EventError::Invalid(problems) => problems,
        whole => vec![FieldError::new("", whole.to_string())],
    }
}

impl Intake {
    /// An intake checking `bounds` and redacting as `redaction` says.
    pub fn new(
        bounds: ValidationBounds,
        redaction: &RedactionConfig,
    ) -> Result<Intake, RedactError> {
        Ok(Intake {
            bounds,
            redactor: Redactor::new(redaction)?,
        })
    }

    /// The event in `json` (one nested or flat event), redacted and validated, or every problem with it.
    pub fn prepare(&self, json: &[u8]) -> Result<Event, Vec<FieldError>> {
        self.admit(parse_event(json))
    }

    /// The events of one JSON document: one for a nested or flat event, one per GenAI
    /// span of an OTLP `ExportTraceServiceRequest`, each redacted and validated.
    pub fn prepare_document(&self, document: &Value) -> Vec<Result<Event, Vec<FieldError>>> {
        match document.as_object().map(detect_shape) {
            Some(InputShape::Otlp) => parse_otlp_traces(document)
                .into_iter()
                .map(|parsed| self.admit(parsed))
                .collect(),
            _ => vec![self.admit(parse_value(document))],
        }
    }

    /// The events of the GenAI spans among `spans` of one resource (decoded from OTLP
    /// protobuf), each redacted and validated; other spans give nothing.
    pub fn prepare_spans(
        &self,
        resource_attributes: &[(String, AttrValue)],
        spans: &[OtlpSpan],
    ) -> Vec<Result<Event, Vec<FieldError>>> {
        spans
            .iter()
            .filter_map(|span| event_from_otlp_span(resource_attributes, span).transpose())
            .map(|parsed| self.admit(parsed))
            .collect()
    }

    /// An event a router already parsed, in the [`crate::codec`] encoding: decoded (no
    /// JSON is parsed), redacted and validated with this intake's settings, or every
    /// problem with it.
    pub fn prepare_forwarded(&self, bytes: &[u8]) -> Result<Event, Vec<FieldError>> {
        let event = crate::codec::decode(bytes)
            .map_err(|e| vec![FieldError::new("event", e.to_string())])?;
        self.admit(Ok(event))
    }

    fn admit(&self, parsed: Result<Event, EventError>) -> Result<Event, Vec<FieldError>> {
        let mut event = parsed.map_err(refusal)?;
        self.redactor.redact_event(&mut event);
        validate(&mut event, &self.bounds).map_err(|e| e.violations)?;
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn intake() -> Intake {
        Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap()
    }

    fn flat(latency: f64, text: &str) -> Value {
        json!({
            "timestamp": "2026-01-01T00:00:00Z",
            "service_name": "chat",
            "model_name": "gpt-4o",
            "latency_ms": latency,
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "prompt_text": text,
        })
    }

    #[test]
    fn accepts_and_redacts_before_truncating() {
        let intake = intake();
        let event = intake
            .prepare(
                flat(120.0, "mail me at ann@example.com")
                    .to_string()
                    .as_bytes(),
            )
            .unwrap();
        assert!(!event.prompt_text.unwrap().contains("ann@example.com"));
        let bounded = Intake::new(
            ValidationBounds {
                max_text_chars: 20,
                ..ValidationBounds::default()
            },
            &RedactionConfig::default(),
        )
        .unwrap();
        let event = bounded
            .prepare_document(&flat(1.0, "abcdefghijklm ann@example.com"))
            .remove(0)
            .unwrap();
        assert!(!event.prompt_text.unwrap().contains("ann@"));
    }

    #[test]
    fn every_problem_is_reported_by_field() {
        let intake = intake();
        let refused = intake
            .prepare(flat(-5.0, "").to_string().as_bytes())
            .unwrap_err();
        assert_eq!(refused[0].field, "latency_ms");
        let refused = intake.prepare(b"{not json").unwrap_err();
        assert_eq!(refused[0].field, "");
        assert!(refused[0].problem.contains("malformed JSON"));
        let refused = intake.prepare_document(&json!([1])).remove(0).unwrap_err();
        assert!(refused[0].problem.contains("object"));
        let refused = intake
            .prepare_document(&json!({"service_name": 3}))
            .remove(0)
            .unwrap_err();
        assert!(refused.len() > 1, "{refused:?}");
    }

    #[test]
    fn a_forwarded_event_is_decoded_redacted_and_bounded_without_parsing_json() {
        let intake = intake();
        let event = intake
            .prepare(flat(120.0, "hello").to_string().as_bytes())
            .unwrap();
        let forwarded = intake
            .prepare_forwarded(&crate::codec::encode(&event))
            .unwrap();
        assert_eq!(forwarded, event);
        let mut unredacted = event.clone();
        unredacted.prompt_text = Some("mail me at ann@example.com".into());
        let redacted = intake
            .prepare_forwarded(&crate::codec::encode(&unredacted))
            .unwrap();
        assert!(!redacted.prompt_text.unwrap().contains("ann@example.com"));
        let mut out_of_bounds = event.clone();
        out_of_bounds.latency_ms = -5.0;
        let refused = intake
            .prepare_forwarded(&crate::codec::encode(&out_of_bounds))
            .unwrap_err();
        assert_eq!(refused[0].field, "latency_ms");
        let refused = intake.prepare_forwarded(b"{not json").unwrap_err();
        assert_eq!(refused[0].field, "event");
    }

    #[test]
    fn an_otlp_request_gives_one_event_per_gen_ai_span() {
        let span = |model: &str| {
            json!({
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "name": "chat",
                "startTimeUnixNano": "1767225600000000000",
                "endTimeUnixNano": "1767225600250000000",
                "attributes": [
                    {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                    {"key": "gen_ai.request.model", "value": {"stringValue": model}},
                    {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                ],
            })
        };
        let request = json!({"resourceSpans": [{
            "resource": {"attributes": [
                {"key": "service.name", "value": {"stringValue": "chat"}}
            ]},
            "scopeSpans": [{"spans": [span("gpt-4o"), span("gpt-4o-mini")]}],
        }]});
        let events = intake().prepare_document(&request);
        assert_eq!(events.len(), 2);
        let first = events[0].as_ref().unwrap();
        assert_eq!(
            (first.service.as_str(), first.model.as_str()),
            ("chat", "gpt-4o")
        );
        assert_eq!(first.latency_ms, 250.0);
    }
}
