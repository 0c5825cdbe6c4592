//! Criterion benchmarks of a node's intake per event, the JSON path it took before the
//! router forwarded normalised events against the path it takes now:
//!
//! * `json`: parse the nested JSON a router forwarded, redact, validate (what
//!   `sentinel_core::Intake::prepare` does), then shard check and metric extraction;
//! * `forwarded`: decode the router's binary encoding ([`sentinel_core::codec`]), redact,
//!   validate (`Intake::prepare_forwarded`), then shard check and metric extraction;
//!
//! and the router's side of each: encoding an event as nested JSON or in the codec.
//! Events without text, with a short prompt and answer, and with long ones carrying PII.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::shard::shard_of;
use sentinel_core::{codec, Event, Intake, RedactionConfig, ValidationBounds};

const SHARDS: u32 = 64;

/// A prose sentence repeated up to `chars` characters, with an e-mail address and a phone
/// number in it when `pii`.
fn prose(chars: usize, pii: bool) -> String {
    let sentence = "The quarterly report shows revenue growth across all regions, with \
                    particular strength in the enterprise segment and steady renewals. ";
    let mut text = String::with_capacity(chars + 64);
    if pii {
        text.push_str("Contact ann.smith@example.com or +1 415 555 0100 for details. ");
    }
    while text.len() < chars {
        text.push_str(sentence);
    }
    text.truncate(chars);
    text
}

/// A chat-completion event of key `i`, with texts of `chars` characters.
fn event(i: usize, chars: usize, pii: bool) -> Event {
    let json = serde_json::json!({
        "event_id": format!("0b7c2a9e-5f4d-4e7a-9c1b-{i:012}"),
        "timestamp": "2026-03-01T12:00:00.250Z",
        "service_name": format!("service-{}", i % 8),
        "model": "gpt-4o-mini",
        "provider": "openai",
        "latency_ms": 812.5,
        "prompt": {"text": prose(chars, pii), "tokens": 412},
        "response": {"text": prose(chars / 2, false), "tokens": 128, "finish_reason": "stop"},
        "user_id": format!("user-{}", i % 500),
        "session_id": format!("session-{}", i % 50),
        "metadata": {"region": "eu-west-1", "tier": "gold", "attempt": 1},
    });
    sentinel_core::parse_value(&json).expect("a well-formed event")
}

/// The benchmark's events of one shape: as events, as nested JSON, in the codec.
struct Inputs {
    name: &'static str,
    events: Vec<Event>,
    json: Vec<Vec<u8>>,
    encoded: Vec<Vec<u8>>,
}

fn inputs(name: &'static str, chars: usize, pii: bool) -> Inputs {
    let events: Vec<Event> = (0..64)
        .map(|i| {
            let mut e = event(i, chars, pii);
            if chars == 0 {
                e.prompt_text = None;
                e.response_text = None;
            }
            e
        })
        .collect();
    Inputs {
        name,
        json: events
            .iter()
            .map(|e| serde_json::to_vec(&e.to_nested_json()).expect("serializes"))
            .collect(),
        encoded: events.iter().map(codec::encode).collect(),
        events,
    }
}

/// Runs `f` on the items in turn.
fn cycle<'a, T, R>(items: &'a [T], mut f: impl FnMut(&T) -> R + 'a) -> impl FnMut() -> R + 'a {
    let mut i = 0;
    move || {
        i = (i + 1) % items.len();
        f(&items[i])
    }
}

fn intake(c: &mut Criterion) {
    let intake = Intake::new(ValidationBounds::default(), &RedactionConfig::default())
        .expect("default intake");
    let prices = PriceTable::builtin();
    let shapes = [
        inputs("no_text", 0, false),
        inputs("short_text", 200, false),
        inputs("long_text_pii", 4000, true),
    ];
    let admit = |event: Event| {
        let shard = shard_of(&event.service, &event.model, SHARDS);
        (shard, extract_metrics(&event, prices).values)
    };
    let mut node = c.benchmark_group("node_intake");
    for shape in &shapes {
        node.bench_function(BenchmarkId::new("json", shape.name), |b| {
            b.iter(cycle(&shape.json, |json| {
                black_box(admit(intake.prepare(json).expect("valid")))
            }))
        });
        node.bench_function(BenchmarkId::new("forwarded", shape.name), |b| {
            b.iter(cycle(&shape.encoded, |bytes| {
                black_box(admit(intake.prepare_forwarded(bytes).expect("valid")))
            }))
        });
    }
    node.finish();
    let mut router = c.benchmark_group("router_encode");
    for shape in &shapes {
        router.bench_function(BenchmarkId::new("json", shape.name), |b| {
            b.iter(cycle(&shape.events, |event| {
                black_box(serde_json::to_vec(&event.to_nested_json()).expect("serializes"))
            }))
        });
        router.bench_function(BenchmarkId::new("codec", shape.name), |b| {
            b.iter(cycle(&shape.events, |event| {
                black_box(codec::encode(event))
            }))
        });
    }
    router.finish();
}

criterion_group!(benches, intake);
criterion_main!(benches);
