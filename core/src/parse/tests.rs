//! Tests of the three shapes and the shared field rules.

use super::fields::timestamp_ms;
use super::otlp::decode_base64;
use super::*;
use crate::event::Event;
use proptest::prelude::*;
use serde_json::json;
use serde_json::Value;

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
