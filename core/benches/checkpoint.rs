//! Criterion benchmarks of a shard's detection checkpoint (`ShardDetector::to_bytes` and
//! `from_bytes`) in the binary encoding it is written in now (`sentinel_core::codec`,
//! MessagePack) against bincode, the encoding before it; the sizes are printed.
//! A shard of 16 keys whose windows are full (W = 1000), as a node checkpoints it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::{DetectionConfig, Event, ShardDetector};

/// Calls per key: past the window, so every window is full.
const CALLS_PER_KEY: usize = 1_500;
/// Keys of the shard.
const KEYS: usize = 16;

/// A detector that has seen `CALLS_PER_KEY` calls on each of `KEYS` keys.
fn full_shard() -> ShardDetector {
    let mut detector = ShardDetector::new(0, DetectionConfig::default()).expect("defaults");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 + 1e-12
    };
    let prices = PriceTable::builtin();
    for call in 0..CALLS_PER_KEY * KEYS {
        let key = call % KEYS;
        let latency = 600.0 * (-uniform().ln()).sqrt();
        let prompt = 300 + (400.0 * uniform()) as u64;
        let completion = 50 + (300.0 * uniform()) as u64;
        let event = Event {
            event_id: Some(format!("ev-{call}")),
            timestamp_ms: 1_767_600_000_000 + call as i64 * 10,
            service: format!("service-{}", key / 4),
            model: format!("model-{}", key % 4),
            user_id: Some(format!("user-{}", call % 97)),
            latency_ms: latency,
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            cost_usd: Some(prompt as f64 * 2.5e-6 + completion as f64 * 1e-5),
            ..Event::default()
        };
        let values = extract_metrics(&event, prices).values;
        detector.observe(&event, &values);
    }
    detector
}

fn checkpoint(c: &mut Criterion) {
    let detector = full_shard();
    let codec = detector.to_bytes();
    let bincode = bincode::serialize(&detector).expect("bincode encodes the detector");
    println!(
        "checkpoint of {KEYS} full keys: codec {} bytes, bincode {} bytes",
        codec.len(),
        bincode.len()
    );
    let mut group = c.benchmark_group("checkpoint");
    group.bench_function("encode/codec", |b| {
        b.iter(|| black_box(&detector).to_bytes())
    });
    group.bench_function("encode/bincode", |b| {
        b.iter(|| bincode::serialize(black_box(&detector)).expect("encodes"))
    });
    group.bench_function("decode/codec", |b| {
        b.iter(|| ShardDetector::from_bytes(black_box(&codec)).expect("decodes"))
    });
    group.bench_function("decode/bincode", |b| {
        b.iter(|| ShardDetector::from_bytes(black_box(&bincode)).expect("decodes"))
    });
    group.finish();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
