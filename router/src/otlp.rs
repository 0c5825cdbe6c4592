//! OTLP/HTTP protobuf bodies (`POST /v1/traces` with `Content-Type:
//! application/x-protobuf`): an `ExportTraceServiceRequest` decoded into the spans the
//! shared intake maps to events, as for the OTLP/JSON form.

use prost::Message;
use sentinel_core::parse::{AttrValue, OtlpSpan};
use sentinel_core::Intake;
use sentinel_proto::otlp::{any_value, AnyValue, ExportTraceServiceRequest, KeyValue, Span};

use crate::api::Prepared;

/// Whether a `Content-Type` names OTLP protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-protobuf")
        || essence.eq_ignore_ascii_case("application/protobuf")
}

/// The events of the GenAI spans of an encoded `ExportTraceServiceRequest`.
pub fn prepare(intake: &Intake, body: &[u8]) -> Result<Vec<Prepared>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    Ok(request
        .resource_spans
        .iter()
        .flat_map(|resource_spans| {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let spans: Vec<OtlpSpan> = resource_spans
                .scope_spans
                .iter()
                .flat_map(|scope| scope.spans.iter().map(span))
                .collect();
            intake.prepare_spans(&resource, &spans)
        })
        .collect())
}

fn span(span: &Span) -> OtlpSpan {
    let status = span.status.clone().unwrap_or_default();
    OtlpSpan {
        trace_id: hex::encode(&span.trace_id),
        span_id: hex::encode(&span.span_id),
        name: span.name.clone(),
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        status_code: status.code,
        status_message: status.message,
        attributes: attributes(&span.attributes),
    }
}

/// Attributes with a value, in wire order.
fn attributes(pairs: &[KeyValue]) -> Vec<(String, AttrValue)> {
    pairs
        .iter()
        .filter_map(|pair| Some((pair.key.clone(), attr_value(pair.value.as_ref()?)?)))
        .collect()
}

fn attr_value(value: &AnyValue) -> Option<AttrValue> {
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => AttrValue::String(s.clone()),
        any_value::Value::BoolValue(b) => AttrValue::Bool(*b),
        any_value::Value::IntValue(i) => AttrValue::Int(*i),
        any_value::Value::DoubleValue(d) => AttrValue::Double(*d),
        any_value::Value::BytesValue(bytes) => AttrValue::Bytes(bytes.clone()),
        any_value::Value::ArrayValue(array) => {
            AttrValue::Array(array.values.iter().filter_map(attr_value).collect())
        }
        any_value::Value::KvlistValue(list) => AttrValue::KvList(attributes(&list.values)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_core::{RedactionConfig, ValidationBounds};
    use sentinel_proto::otlp::{Resource, ResourceSpans, ScopeSpans, Status};

    fn text(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
        }
    }

    fn count(key: &str, value: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
        }
    }

    #[test]
    fn gen_ai_spans_of_a_protobuf_request_become_events() {
        let start = 1_767_225_600_000_000_000u64;
        let gen_ai = Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0xcd; 8],
            name: "chat gpt-4o".into(),
            start_time_unix_nano: start,
            end_time_unix_nano: start + 250_000_000,
            attributes: vec![
                text("gen_ai.system", "openai"),
                text("gen_ai.request.model", "gpt-4o"),
                count("gen_ai.usage.input_tokens", 12),
                count("gen_ai.usage.output_tokens", 30),
                text("gen_ai.prompt", "write to ann@example.com"),
            ],
            status: Some(Status {
                message: "rate limited".into(),
                code: 2,
            }),
            ..Span::default()
        };
        let plain = Span {
            name: "GET /".into(),
            ..Span::default()
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![text("service.name", "search")],
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![gen_ai, plain],
                }],
            }],
        };
        let intake = Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap();
        let events = prepare(&intake, &request.encode_to_vec()).unwrap();
        assert_eq!(events.len(), 1, "the plain span gives no event");
        let event = events[0].as_ref().unwrap();
        assert_eq!(
            (event.service.as_str(), event.model.as_str()),
            ("search", "gpt-4o")
        );
        assert_eq!(event.latency_ms, 250.0);
        assert_eq!(event.prompt_tokens, Some(12));
        assert!(!event
            .prompt_text
            .as_deref()
            .unwrap()
            .contains("ann@example.com"));
        assert!(!event.errors.is_empty());
        assert_eq!(
            event.event_id.as_deref(),
            Some(format!("{}:{}", "ab".repeat(16), "cd".repeat(8)).as_str())
        );
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let intake = Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap();
        assert!(prepare(&intake, &[0xff, 0xff, 0xff, 0x07]).is_err());
        assert!(is_protobuf("application/x-protobuf; charset=binary"));
        assert!(!is_protobuf("application/json"));
    }
}
