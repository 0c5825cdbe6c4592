//! Shared helpers: deterministic events and log entries, and applying them to a shard.
#![allow(dead_code)]

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use sentinel_core::{extract_metrics, Event, PriceTable};
use sentinel_storage_engine::{
    Command, Engine, EngineOptions, IngestBatch, IngestEvent, Response, ShardReader, ShardSettings,
    ShardStateMachine, SourcePartition, TypeConfig,
};

/// Start of the test clock (2026-01-01T00:00:00Z).
pub const T0: i64 = 1_767_225_600_000;

/// A call of `service`/`model` at `t` taking `latency_ms`, with a unique id.
pub fn event(service: &str, model: &str, t: i64, latency_ms: f64, id: &str) -> IngestEvent {
    let event = Event {
        event_id: Some(id.to_owned()),
        timestamp_ms: t,
        service: service.to_owned(),
        model: model.to_owned(),
        latency_ms,
        prompt_tokens: Some(400),
        completion_tokens: Some(120),
        total_tokens: Some(520),
        user_id: Some("user-1".to_owned()),
        ..Event::default()
    };
    let values = extract_metrics(&event, PriceTable::builtin()).values;
    IngestEvent {
        offset: None,
        event,
        values,
    }
}

/// `n` steady calls on one key, then one at 40× the latency: a latency spike.
pub fn spike_stream(service: &str, model: &str, n: usize) -> Vec<IngestEvent> {
    let mut out: Vec<IngestEvent> = (0..n)
        .map(|i| {
            let jitter = ((i * 37) % 23) as f64;
            event(
                service,
                model,
                T0 + i as i64 * 1000,
                800.0 + jitter * 10.0,
                &format!("{service}/{model}/{i}"),
            )
        })
        .collect();
    out.push(event(
        service,
        model,
        T0 + n as i64 * 1000,
        32_000.0,
        &format!("{service}/{model}/spike"),
    ));
    out
}

/// A Kafka batch of `events` from `topic`/0 with offsets starting at `first_offset`.
pub fn kafka_batch(topic: &str, first_offset: u64, mut events: Vec<IngestEvent>) -> Command {
    for (i, e) in events.iter_mut().enumerate() {
        e.offset = Some(first_offset + i as u64);
    }
    Command::Ingest(IngestBatch {
        received_ms: T0,
        source: Some(SourcePartition {
            topic: topic.to_owned(),
            partition: 0,
        }),
        events,
    })
}

/// An HTTP batch (no source position).
pub fn direct_batch(received_ms: i64, events: Vec<IngestEvent>) -> Command {
    Command::Ingest(IngestBatch {
        received_ms,
        source: None,
        events,
    })
}

/// Shard settings under which one call over 30 s (the spike of [`spike_stream`]) opens an
/// incident on its own: a latency cap.
pub fn capped_settings() -> ShardSettings {
    let mut settings = ShardSettings::default();
    settings.detection.incidents.latency_cap_ms = Some(30_000.0);
    settings
}

/// Engine options with [`capped_settings`].
pub fn capped_options() -> EngineOptions {
    EngineOptions {
        shard_settings: capped_settings(),
        ..EngineOptions::default()
    }
}

/// Engine options whose shards queue telemetry for export, at most `queue_max` entries.
pub fn export_options(queue_max: u64) -> EngineOptions {
    EngineOptions {
        shard_settings: ShardSettings {
            export: true,
            export_queue_max: queue_max,
            ..capped_settings()
        },
        ..EngineOptions::default()
    }
}

/// A normal log entry at `index` of term 1, leader 1.
pub fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Applies commands as entries `first_index..` and returns the responses (a Raft log
/// starts at index 0).
pub async fn apply_all(
    machine: &mut ShardStateMachine,
    first_index: u64,
    commands: Vec<Command>,
) -> Vec<Response> {
    let entries: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(first_index + i as u64, c))
        .collect();
    machine.apply(entries).await.expect("apply")
}

/// Appends `commands` to `shard`'s log as committed, applying them one by one when `apply`.
pub async fn write_log(
    engine: &Arc<Engine>,
    shard: u32,
    commands: Vec<Command>,
    apply: bool,
) -> ShardReader {
    let (mut log, mut machine, reader) = engine.open_shard(shard).unwrap();
    let entries: Vec<_> = commands
        .into_iter()
        .enumerate()
        .map(|(i, c)| entry(i as u64, c))
        .collect();
    log.save_vote(&Vote::new(3, 1)).await.unwrap();
    log.blocking_append(entries.clone()).await.unwrap();
    log.save_committed(Some(entries.last().unwrap().log_id))
        .await
        .unwrap();
    if apply {
        for e in entries {
            machine.apply([e]).await.unwrap();
        }
    }
    reader
}
