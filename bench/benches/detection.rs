//! Criterion benchmarks of the detection core: one baseline update, the full detector
//! set on one event (one key hot in cache, and 10,000 keys resident), the naive
//! sort-per-event implementation for comparison, and memory per metric key.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use sentinel_bench::naive::NaiveWindow;
use sentinel_bench::stream::{SpikeStream, StreamConfig};
use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::window::Window;
use sentinel_core::{DetectionConfig, Event, Metric, MetricValues, ShardDetector};

const W: usize = 1000;

/// Calls of the false-alarm stream with their metrics, remapped onto `keys` distinct
/// keys when more than the stream's 16 are asked for.
fn calls(n: usize, keys: usize) -> Vec<(Event, MetricValues)> {
    let prices = PriceTable::default();
    let stream = StreamConfig {
        events: n,
        spike_rate: 0.0,
        ..StreamConfig::default()
    };
    SpikeStream::new(stream)
        .enumerate()
        .map(|(i, s)| {
            let mut event = s.event;
            if keys > 16 {
                remap(&mut event, i, keys);
            }
            let values = extract_metrics(&event, &prices).values;
            (event, values)
        })
        .collect()
}

/// Puts the `i`-th call on key `i mod keys` (one model per service, so exactly `keys` keys).
fn remap(event: &mut Event, i: usize, keys: usize) {
    event.service = format!("svc-{}", i % keys);
    event.model = "gpt-4o".to_owned();
}

/// Resident set size of this process in bytes.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn window_update(c: &mut Criterion) {
    let values: Vec<f64> = calls(8192, 16)
        .iter()
        .map(|(e, _)| e.latency_ms.ln())
        .collect();
    let mut w = Window::new(W);
    for &v in values.iter().cycle().take(W) {
        w.push(v);
    }
    let mut i = 0;
    c.bench_function("baseline update (W=1000)", |b| {
        b.iter(|| {
            i = (i + 1) % values.len();
            black_box(w.push(black_box(values[i])))
        })
    });
    eprintln!(
        "memory: one metric window at W=1000 holds {} heap bytes",
        w.heap_bytes()
    );
}

fn detector_set(c: &mut Criterion) {
    let warm = calls(40_000, 16);
    let mut one_key = ShardDetector::new(0, DetectionConfig::default()).unwrap();
    let hot: Vec<_> = warm
        .iter()
        .filter(|(e, _)| e.service == warm[0].0.service && e.model == warm[0].0.model)
        .cloned()
        .collect();
    for (e, v) in hot.iter().cycle().take(3 * W) {
        one_key.observe(e, v);
    }
    let mut i = 0;
    c.bench_function("detector set, one event, 1 key hot", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            let (e, v) = &hot[i];
            black_box(one_key.observe(e, v))
        })
    });

    let mut naive: Vec<NaiveWindow> = Metric::ALL.iter().map(|_| NaiveWindow::new(W)).collect();
    for (_, v) in hot.iter().cycle().take(W) {
        for m in Metric::ALL {
            if let Some(x) = v.get(m) {
                naive[m.index()].push(x.ln());
            }
        }
    }
    c.bench_function("naive sort-per-event detector set, 1 key", |b| {
        b.iter(|| {
            i = (i + 1) % hot.len();
            let (_, v) = &hot[i];
            for m in Metric::ALL {
                if let Some(x) = v.get(m) {
                    let w = &mut naive[m.index()];
                    black_box(w.score(x.ln()));
                    w.push(x.ln());
                }
            }
        })
    });
}

fn detector_set_many_keys(c: &mut Criterion) {
    const KEYS: usize = 10_000;
    let prices = PriceTable::default();
    let stream = StreamConfig {
        events: KEYS * W,
        spike_rate: 0.0,
        ..StreamConfig::default()
    };
    let before = rss_bytes();
    let mut shard = ShardDetector::new(0, DetectionConfig::default()).unwrap();
    // Fill every window of every key to W samples, generating calls as they go so that
    // only detection state grows.
    for (i, s) in SpikeStream::new(stream).enumerate() {
        let mut event = s.event;
        remap(&mut event, i, KEYS);
        let values = extract_metrics(&event, &prices).values;
        shard.observe(&event, &values);
    }
    let grown = rss_bytes().saturating_sub(before);
    let metric_keys = KEYS * Metric::ALL.len();
    eprintln!(
        "memory: {KEYS} keys x {} metrics resident at W=1000: {:.1} MiB RSS growth, {} bytes per metric key (all detection state of the key included)",
        Metric::ALL.len(),
        grown as f64 / (1 << 20) as f64,
        grown / metric_keys
    );
    let traffic = calls(KEYS * 5, KEYS);
    // Consecutive calls belong to different keys (round robin over all 10,000), so
    // each event finds its key's state out of cache.
    let mut i = 0;
    c.bench_function("detector set, one event, 10,000 keys resident", |b| {
        b.iter(|| {
            i = (i + 1) % traffic.len();
            let (e, v) = &traffic[i];
            black_box(shard.observe(e, v))
        })
    });
}

criterion_group!(benches, window_update, detector_set, detector_set_many_keys);
criterion_main!(benches);
