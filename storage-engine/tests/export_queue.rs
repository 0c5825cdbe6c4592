//! The replicated telemetry export queue: what applying queues, acknowledgement, the
//! bound, restarts and snapshots.

mod common;

use std::sync::Arc;

use common::*;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::StorageHelper;
use sentinel_storage_engine::{
    Command, Engine, EngineOptions, ExportEntry, ExportItem, Response, ShardReader, ShardSettings,
    ShardStateMachine,
};
use tempfile::TempDir;

/// A fresh engine with shard 3 open.
fn open(options: EngineOptions) -> (TempDir, Arc<Engine>, ShardStateMachine, ShardReader) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), options).unwrap();
    let (_, machine, reader) = engine.open_shard(3).unwrap();
    (dir, engine, machine, reader)
}

/// `ids` with each run of consecutive `alert:` entries sorted.
fn sort_alert_runs(mut ids: Vec<String>) -> Vec<String> {
    let mut start = 0;
    while start < ids.len() {
        let end = (start..ids.len())
            .find(|&i| !ids[i].starts_with("alert:"))
            .unwrap_or(ids.len());
        ids[start..end].sort();
        start = end + 1;
    }
    ids
}

/// The whole queue.
fn queue(reader: &ShardReader) -> Vec<ExportEntry> {
    reader.export_queue(None, usize::MAX).unwrap()
}

/// Sequence numbers of entries.
fn seqs(entries: &[ExportEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// Event ids of the telemetry entries and alert ids of the anomaly entries, in order.
fn ids(entries: &[ExportEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| match &e.item {
            ExportItem::Telemetry(record) => record.event.event_id.clone().unwrap(),
            ExportItem::Anomaly(anomaly) => format!("alert:{}", anomaly.alert_id),
        })
        .collect()
}

fn applied(response: &Response) -> usize {
    match response {
        Response::Ingested(outcome) => outcome.applied(),
        other => panic!("expected an ingest outcome, got {other:?}"),
    }
}

fn configure(export: bool, export_queue_max: u64) -> Command {
    Command::Configure(Box::new(ShardSettings {
        export,
        export_queue_max,
        ..ShardSettings::default()
    }))
}

/// 20 Kafka batches of 13 events, each on its own key and ending in a latency spike.
fn traffic() -> Vec<Command> {
    (0..20u64)
        .map(|i| {
            let (service, model) = (format!("svc-{}", i % 4), format!("m{}", i / 4));
            kafka_batch("llm.telemetry", i * 100, spike_stream(&service, &model, 12))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_off_nothing_is_queued() {
    let (_dir, _engine, mut machine, reader) = open(capped_options());
    let responses = apply_all(
        &mut machine,
        0,
        vec![
            direct_batch(T0, spike_stream("chat", "gpt-4o", 60)),
            Command::Exported(5),
        ],
    )
    .await;
    assert_eq!(applied(&responses[0]), 61);
    assert_eq!(responses[1], Response::Exported(0));
    assert!(
        !reader.outbox(None, 100).unwrap().is_empty(),
        "alerts raised"
    );
    assert!(queue(&reader).is_empty());
    let summary = reader.summary();
    assert_eq!((summary.export_pending, summary.export_dropped), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_applied_event_is_queued_with_its_anomalies_in_apply_order_and_once() {
    let (_dir, _engine, mut machine, reader) = open(export_options(1_000_000));
    let stream = spike_stream("chat", "gpt-4o", 59);
    let first = kafka_batch("llm.telemetry", 0, stream[..40].to_vec());
    let responses = apply_all(&mut machine, 0, vec![first.clone(), first]).await;
    assert_eq!(applied(&responses[1]), 0);
    let entries = queue(&reader);
    assert_eq!(seqs(&entries), (0..40).collect::<Vec<_>>());
    assert_eq!(
        ids(&entries),
        stream[..40]
            .iter()
            .map(|e| e.event.event_id.clone().unwrap())
            .collect::<Vec<_>>(),
        "the replayed batch queued nothing"
    );
    match &entries[7].item {
        ExportItem::Telemetry(record) => {
            assert_eq!(record.event, stream[7].event);
            assert_eq!(record.values, stream[7].values);
        }
        other => panic!("expected telemetry, got {other:?}"),
    }

    let rest = kafka_batch("llm.telemetry", 40, stream[40..].to_vec());
    let retry = direct_batch(T0, stream[50..].to_vec());
    let responses = apply_all(&mut machine, 2, vec![rest, retry]).await;
    assert_eq!(applied(&responses[1]), 0, "repeated event ids");
    let entries = queue(&reader);
    let mut raised = reader.anomalies(None, i64::MIN, 100).unwrap();
    raised.reverse();
    assert!(!raised.is_empty(), "the spike raised anomalies");
    assert_eq!(
        reader.outbox(None, 100).unwrap().len(),
        1,
        "and one notification"
    );
    assert_eq!(entries.len(), stream.len() + raised.len());
    assert_eq!(
        seqs(&entries),
        (0..entries.len() as u64).collect::<Vec<_>>()
    );
    let mut expected = Vec::new();
    for e in &stream {
        expected.push(e.event.event_id.clone().unwrap());
        expected.extend(
            raised
                .iter()
                .filter(|a| a.timestamp_ms == e.event.timestamp_ms)
                .map(|a| format!("alert:{}", a.alert_id)),
        );
    }
    // Within one event, anomalies come in the detectors' order: compare them as sets.
    assert_eq!(
        sort_alert_runs(ids(&entries)),
        sort_alert_runs(expected),
        "each event, then its anomalies"
    );
    let anomalies: Vec<_> = entries
        .iter()
        .filter_map(|e| match &e.item {
            ExportItem::Anomaly(anomaly) => Some(anomaly.clone()),
            ExportItem::Telemetry(_) => None,
        })
        .collect();
    let by_id = |mut list: Vec<sentinel_core::Anomaly>| {
        list.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        list
    };
    assert_eq!(by_id(anomalies), by_id(raised));
    assert_eq!(reader.summary().export_pending, entries.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_removes_a_prefix_and_repeats_or_overshoots_are_harmless() {
    let (_dir, _engine, mut machine, reader) = open(export_options(1_000_000));
    let stream = spike_stream("chat", "gpt-4o", 59);
    apply_all(
        &mut machine,
        0,
        vec![direct_batch(T0, stream[..30].to_vec())],
    )
    .await;
    let responses = apply_all(
        &mut machine,
        1,
        vec![
            Command::Exported(9),
            Command::Exported(9),
            Command::Exported(4),
        ],
    )
    .await;
    assert_eq!(
        responses,
        vec![
            Response::Exported(10),
            Response::Exported(0),
            Response::Exported(0)
        ]
    );
    assert_eq!(seqs(&queue(&reader)), (10..30).collect::<Vec<_>>());
    assert_eq!(
        seqs(&reader.export_queue(Some(14), 5).unwrap()),
        vec![15, 16, 17, 18, 19]
    );
    assert_eq!(
        seqs(&reader.export_queue(Some(3), 2).unwrap()),
        vec![10, 11],
        "removed entries are not read"
    );
    assert_eq!(reader.summary().export_pending, 20);

    let responses = apply_all(&mut machine, 4, vec![Command::Exported(u64::MAX)]).await;
    assert_eq!(responses, vec![Response::Exported(20)]);
    assert!(queue(&reader).is_empty());
    apply_all(
        &mut machine,
        5,
        vec![direct_batch(T0, stream[30..40].to_vec())],
    )
    .await;
    assert_eq!(
        seqs(&queue(&reader)),
        (30..40).collect::<Vec<_>>(),
        "sequence numbers are never reused"
    );
    let responses = apply_all(&mut machine, 6, vec![Command::Exported(29)]).await;
    assert_eq!(responses, vec![Response::Exported(0)]);
    let summary = reader.summary();
    assert_eq!((summary.export_pending, summary.export_dropped), (10, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_entries_and_counts_them() {
    let (_dir, _engine, mut machine, reader) = open(export_options(25));
    let (_unbounded_dir, _unbounded_engine, mut unbounded, unbounded_reader) =
        open(export_options(1_000_000));
    let batch = direct_batch(T0, spike_stream("chat", "gpt-4o", 59));
    apply_all(&mut machine, 0, vec![batch.clone()]).await;
    apply_all(&mut unbounded, 0, vec![batch]).await;
    let all = queue(&unbounded_reader);
    let total = all.len() as u64;
    assert!(total > 60, "events and alerts");
    assert_eq!(queue(&reader), all[all.len() - 25..], "the newest 25");
    let summary = reader.summary();
    assert_eq!(
        (summary.export_pending, summary.export_dropped),
        (25, total - 25)
    );

    let responses = apply_all(
        &mut machine,
        1,
        vec![configure(true, 0), configure(true, 10)],
    )
    .await;
    assert!(
        matches!(&responses[0], Response::Rejected(r) if r.contains("export_queue_max")),
        "{responses:?}"
    );
    assert_eq!(responses[1], Response::Configured);
    assert_eq!(queue(&reader), all[all.len() - 10..], "a lower bound trims");
    assert_eq!(reader.summary().export_dropped, total - 10);

    apply_all(
        &mut machine,
        3,
        vec![
            configure(false, 10),
            direct_batch(T0, spike_stream("docs", "m", 20)),
        ],
    )
    .await;
    assert!(queue(&reader).is_empty(), "switching export off empties it");
    let summary = reader.summary();
    assert_eq!((summary.export_pending, summary.export_dropped), (0, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_a_restart() {
    let options = EngineOptions {
        checkpoint_events: 8 * 13,
        ..export_options(150)
    };
    let mut commands = traffic();
    commands.insert(10, Command::Exported(60));
    let last_index = commands.len() as u64 - 1;
    let dir = tempfile::tempdir().unwrap();
    let (digest, entries, summary) = {
        let engine = Engine::open(dir.path(), options.clone()).unwrap();
        let reader = write_log(&engine, 5, commands, true).await;
        (reader.digest().unwrap(), queue(&reader), reader.summary())
    };
    assert_eq!(entries.len(), 150);
    assert!(summary.export_dropped > 0, "the bound was reached");

    let engine = Engine::open(dir.path(), options).unwrap();
    let (mut log, mut machine, reader) = engine.open_shard(5).unwrap();
    let (checkpoint, _) = machine.applied_state().await.unwrap();
    assert!(
        checkpoint.unwrap().index < last_index,
        "entries after the checkpoint are re-applied"
    );
    StorageHelper::new(&mut log, &mut machine)
        .get_initial_state()
        .await
        .unwrap();
    assert_eq!(reader.summary().last_applied.unwrap().index, last_index);
    assert_eq!(reader.digest().unwrap(), digest);
    assert_eq!(queue(&reader), entries);
    let after = reader.summary();
    assert_eq!(
        (after.export_pending, after.export_dropped),
        (summary.export_pending, summary.export_dropped)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_carries_the_queue_and_its_sequence() {
    let (_source_dir, _source, mut machine, reader) = open(export_options(1_000_000));
    let mut commands = traffic();
    commands.insert(5, Command::Exported(40));
    let count = commands.len() as u64;
    apply_all(&mut machine, 0, commands).await;
    let built = machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let at_snapshot = (reader.digest().unwrap(), queue(&reader));
    assert_eq!(at_snapshot.1.first().map(|e| e.seq), Some(41));

    let target_dir = tempfile::tempdir().unwrap();
    let later = vec![
        direct_batch(T0 + 60_000, spike_stream("late", "m", 20)),
        Command::Exported(100),
    ];
    {
        let target = Engine::open(target_dir.path(), export_options(1_000_000)).unwrap();
        let (_, mut follower, follower_reader) = target.open_shard(3).unwrap();
        apply_all(
            &mut follower,
            0,
            vec![direct_batch(T0, spike_stream("stale", "m", 20))],
        )
        .await;
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        let mut sent = built.snapshot;
        tokio::io::copy(&mut sent, incoming.as_mut()).await.unwrap();
        tokio::io::AsyncWriteExt::flush(incoming.as_mut())
            .await
            .unwrap();
        follower
            .install_snapshot(&built.meta, incoming)
            .await
            .unwrap();
        assert_eq!(
            (follower_reader.digest().unwrap(), queue(&follower_reader)),
            at_snapshot
        );

        apply_all(&mut machine, count, later.clone()).await;
        apply_all(&mut follower, count, later).await;
        let entries = queue(&follower_reader);
        assert_eq!(entries, queue(&reader));
        assert_eq!(
            seqs(&entries),
            (101..101 + entries.len() as u64).collect::<Vec<_>>()
        );
        let resumed = at_snapshot.1.last().unwrap().seq + 1;
        let late = entries.iter().position(|e| e.seq == resumed).unwrap();
        assert_eq!(
            ids(&entries[late..late + 1]),
            vec!["late/m/0".to_owned()],
            "the sequence goes on where the snapshot left it"
        );
        assert_eq!(follower_reader.digest().unwrap(), reader.digest().unwrap());
        follower_reader.checkpoint().unwrap();
    }
    let target = Engine::open(target_dir.path(), export_options(1_000_000)).unwrap();
    let (_, _follower, follower_reader) = target.open_shard(3).unwrap();
    assert_eq!(follower_reader.digest().unwrap(), reader.digest().unwrap());
    assert_eq!(queue(&follower_reader), queue(&reader));
}
