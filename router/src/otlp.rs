//! OTLP/HTTP protobuf bodies (`POST /v1/traces` with `Content-Type:
//! application/x-protobuf`): an `ExportTraceServiceRequest` decoded into the spans the
//! shared intake maps to events, as for the OTLP/JSON form.
//!
//! An empty span or attribute takes two bytes on the wire and a hundred or so decoded,
//! so before decoding, the wire format is walked (without allocating) to estimate what
//! the request decodes into, and a request that would take more than
//! [`MAX_DECODED_PER_BYTE`] times its size is refused: well-formed exports take two to
//! four.

use std::mem::size_of;

use prost::Message as _;
use sentinel_core::parse::{AttrValue, OtlpSpan};
use sentinel_core::Intake;
use sentinel_proto::otlp::{
    any_value, AnyValue, ArrayValue, ExportTraceServiceRequest, KeyValue, KeyValueList, Resource,
    ResourceSpans, ScopeSpans, Span, Status,
};
use thiserror::Error;

use crate::ingest::EventResult;

/// Most bytes a request may take decoded, per byte of its encoding.
pub const MAX_DECODED_PER_BYTE: usize = 8;
/// Decoded bytes any request may take, however small.
const MIN_DECODED_BUDGET: usize = 64 << 10;
/// Deepest nesting of messages (prost's own recursion limit).
const MAX_DEPTH: u32 = 100;

/// Why an OTLP protobuf body was not read.
#[derive(Debug, Error)]
pub enum OtlpError {
    /// The body is not an encoded `ExportTraceServiceRequest`.
    #[error("not an OTLP ExportTraceServiceRequest: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The body would take too much memory decoded for its size.
    #[error("the OTLP request would take {estimate} bytes decoded, more than {limit} for a body of its size; send fewer empty spans or attributes")]
    Sprawling {
        /// The estimated decoded size.
        estimate: usize,
        /// The most it may take.
        limit: usize,
    },
}

/// A message type of an OTLP request, to estimate what its encoding decodes into.
#[derive(Debug, Clone, Copy)]
enum Schema {
    Request,
    ResourceSpans,
    Resource,
    ScopeSpans,
    Span,
    Status,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

impl Schema {
    /// The message a length-delimited field `number` holds, and whether the field is
    /// repeated (each element a struct of its own) rather than held inline; `None` for
    /// text and bytes.
    fn field(self, number: u64) -> Option<(Schema, bool)> {
        use Schema as S;
        match (self, number) {
            (S::Request, 1) => Some((S::ResourceSpans, true)),
            (S::ResourceSpans, 1) => Some((S::Resource, false)),
            (S::ResourceSpans, 2) => Some((S::ScopeSpans, true)),
            (S::Resource, 1) | (S::Span, 9) | (S::KeyValueList, 1) => Some((S::KeyValue, true)),
            (S::ScopeSpans, 2) => Some((S::Span, true)),
            (S::Span, 15) => Some((S::Status, false)),
            (S::KeyValue, 2) => Some((S::AnyValue, false)),
            (S::ArrayValue, 1) => Some((S::AnyValue, true)),
            (S::AnyValue, 5) => Some((S::ArrayValue, false)),
            (S::AnyValue, 6) => Some((S::KeyValueList, false)),
            _ => None,
        }
    }

    /// The size of its decoded struct.
    fn size(self) -> usize {
        match self {
            Schema::Request => size_of::<ExportTraceServiceRequest>(),
            Schema::ResourceSpans => size_of::<ResourceSpans>(),
            Schema::Resource => size_of::<Resource>(),
            Schema::ScopeSpans => size_of::<ScopeSpans>(),
            Schema::Span => size_of::<Span>(),
            Schema::Status => size_of::<Status>(),
            Schema::KeyValue => size_of::<KeyValue>(),
            Schema::AnyValue => size_of::<AnyValue>(),
            Schema::ArrayValue => size_of::<ArrayValue>(),
            Schema::KeyValueList => size_of::<KeyValueList>(),
        }
    }
}

/// What an encoded `ExportTraceServiceRequest` decodes into, in bytes, estimated from its
/// wire format without decoding it: every message's struct and every text; `None` when
/// it is not well-formed protobuf (decoding then tells why).
pub fn decoded_size(body: &[u8]) -> Option<usize> {
    Some(Schema::Request.size() + held(Schema::Request, body, 0)?)
}

/// The bytes a message encoded as `bytes` holds beyond its own struct.
fn held(schema: Schema, mut bytes: &[u8], depth: u32) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut total = 0;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                let inner = bytes.get(..len)?;
                bytes = &bytes[len..];
                total += match schema.field(key >> 3) {
                    Some((message, repeated)) => {
                        let own = if repeated { message.size() } else { 0 };
                        own + held(message, inner, depth + 1)?
                    }
                    None => len,
                };
            }
            _ => return None,
        }
    }
    Some(total)
}

/// Reads a base-128 varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Whether a `Content-Type` names OTLP protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-protobuf")
        || essence.eq_ignore_ascii_case("application/protobuf")
}

/// The events of the GenAI spans of an encoded `ExportTraceServiceRequest`, unless it
/// would take more than [`MAX_DECODED_PER_BYTE`] times its size decoded.
pub fn prepare(intake: &Intake, body: &[u8]) -> Result<Vec<EventResult>, OtlpError> {
    let limit = body
        .len()
        .saturating_mul(MAX_DECODED_PER_BYTE)
        .saturating_add(MIN_DECODED_BUDGET);
    if let Some(estimate) = decoded_size(body).filter(|estimate| *estimate > limit) {
        return Err(OtlpError::Sprawling { estimate, limit });
    }
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
        let body = request.encode_to_vec();
        let estimate = decoded_size(&body).unwrap();
        assert!(
            estimate < MAX_DECODED_PER_BYTE * body.len(),
            "{estimate} for {}",
            body.len()
        );
        let events = prepare(&intake, &body).unwrap();
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
    fn a_request_of_empty_spans_is_refused_before_it_is_decoded() {
        let empty = |n| ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default(); n],
                }],
            }],
        };
        let intake = Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap();
        let body = empty(100_000).encode_to_vec();
        assert!(body.len() < 300_000);
        assert!(decoded_size(&body).unwrap() > 100_000 * size_of::<Span>());
        assert!(matches!(
            prepare(&intake, &body),
            Err(OtlpError::Sprawling { .. })
        ));
        assert!(prepare(&intake, &empty(10).encode_to_vec())
            .unwrap()
            .is_empty());
        let wide = Span {
            attributes: vec![KeyValue::default(); 200_000],
            ..Span::default()
        };
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: None,
                scope_spans: vec![ScopeSpans { spans: vec![wide] }],
            }],
        }
        .encode_to_vec();
        assert!(matches!(
            prepare(&intake, &body),
            Err(OtlpError::Sprawling { .. })
        ));
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let intake = Intake::new(ValidationBounds::default(), &RedactionConfig::default()).unwrap();
        assert!(prepare(&intake, &[0xff, 0xff, 0xff, 0x07]).is_err());
        assert!(is_protobuf("application/x-protobuf; charset=binary"));
        assert!(!is_protobuf("application/json"));
    }
}
