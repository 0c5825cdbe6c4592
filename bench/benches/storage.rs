//! Criterion benchmark of the shard state machine: applying batches of 500 events on
//! 1,000 (service, model) keys with full windows (W = 1000), on one core, RocksDB included;
//! and detection alone on the same traffic, to show what storage adds.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use sentinel_bench::storage::Traffic;
use sentinel_core::{DetectionConfig, ShardDetector};
use sentinel_storage_engine::{Command, Engine, EngineOptions, ShardStateMachine};

const BATCH: usize = 500;
const W: usize = 1000;

fn entry(index: u64, command: Command) -> Entry<sentinel_storage_engine::TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Applies one batch as log entry `index`; returns how long `apply` took.
fn apply(
    rt: &tokio::runtime::Runtime,
    machine: &mut ShardStateMachine,
    index: u64,
    command: Command,
) -> Duration {
    let entry = entry(index, command);
    let started = Instant::now();
    rt.block_on(machine.apply([entry])).expect("apply");
    started.elapsed()
}

fn apply_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("shard apply, batches of 500");
    group.throughput(Throughput::Elements(BATCH as u64));
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(30));
    for keys in [1000, 167] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let (_, mut machine, reader) = engine.open_shard(0).unwrap();
        let mut traffic = Traffic::new(7, keys, 0);
        let mut index = 1;
        for _ in 0..keys * W * 5 / 4 / BATCH {
            apply(&rt, &mut machine, index, traffic.batch(BATCH));
            index += 1;
        }
        let fullest = reader.baselines(None, None).iter().map(|b| b.events).min();
        assert!(
            fullest >= Some(W as u64),
            "every window is full before measuring"
        );
        group.bench_function(format!("{keys} keys at W = {W}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        index += 1;
                        apply(&rt, &mut machine, index, traffic.batch(BATCH))
                    })
                    .sum()
            })
        });
    }
    group.finish();
}

fn detection_alone(c: &mut Criterion) {
    let mut group = c.benchmark_group("detection alone, batches of 500");
    group.throughput(Throughput::Elements(BATCH as u64));
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(30));
    for keys in [1000, 167] {
        let mut detector = ShardDetector::new(0, DetectionConfig::default()).unwrap();
        let mut traffic = Traffic::new(7, keys, 0);
        let observe = |detector: &mut ShardDetector, command: Command| {
            let Command::Ingest(batch) = command else {
                unreachable!("traffic is ingest batches")
            };
            let started = Instant::now();
            for e in &batch.events {
                black_box(detector.observe(&e.event, &e.values));
            }
            started.elapsed()
        };
        for _ in 0..keys * W * 5 / 4 / BATCH {
            observe(&mut detector, traffic.batch(BATCH));
        }
        group.bench_function(format!("{keys} keys at W = {W}"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| observe(&mut detector, traffic.batch(BATCH)))
                    .sum()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, apply_throughput, detection_alone);
criterion_main!(benches);
