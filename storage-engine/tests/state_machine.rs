//! The shard state machine on a real RocksDB: exactly-once application, queries,
//! retention, restarts, snapshots and dropping a shard.

mod common;

use std::sync::Arc;

use common::*;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageHelper, Vote};
use sentinel_core::incident::IncidentStatus;
use sentinel_core::Event;
use sentinel_storage_engine::{
    Command, Engine, EngineOptions, EventOutcome, IncidentQuery, KeyLimit, KeyLimits, Response,
    Retention, ShardReader, ShardSettings, ShardStateMachine, SourcePartition, TelemetryQuery,
};
use tempfile::TempDir;

fn engine() -> (TempDir, Arc<Engine>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path(), capped_options()).unwrap();
    (dir, engine)
}

fn open(engine: &Arc<Engine>, shard: u32) -> (ShardStateMachine, ShardReader) {
    let (_, machine, reader) = engine.open_shard(shard).unwrap();
    (machine, reader)
}

fn events_seen(reader: &ShardReader, service: &str) -> u64 {
    reader
        .baselines(Some(service), None)
        .iter()
        .map(|b| b.events)
        .sum()
}

fn ingested(response: &Response) -> &sentinel_storage_engine::IngestOutcome {
    match response {
        Response::Ingested(outcome) => outcome,
        other => panic!("expected an ingest outcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_overlapping_and_late_batches_count_each_event_once() {
    let (_dir, engine) = engine();
    let (mut machine, reader) = open(&engine, 3);
    let events = spike_stream("chat", "gpt-4o", 99);
    let first = kafka_batch("llm.telemetry", 0, events[..50].to_vec());
    let overlap = kafka_batch("llm.telemetry", 25, events[25..75].to_vec());
    let rest = kafka_batch("llm.telemetry", 75, events[75..].to_vec());
    let responses = apply_all(
        &mut machine,
        0,
        vec![
            first.clone(),
            first.clone(),
            overlap,
            first,
            rest.clone(),
            rest,
        ],
    )
    .await;
    let applied: Vec<usize> = responses.iter().map(|r| ingested(r).applied()).collect();
    assert_eq!(applied, vec![50, 0, 25, 0, 25, 0]);
    assert_eq!(
        ingested(&responses[2]).count(EventOutcome::DuplicateOffset),
        25
    );
    assert_eq!(events_seen(&reader, "chat"), 100);
    let source = SourcePartition {
        topic: "llm.telemetry".into(),
        partition: 0,
    };
    assert_eq!(reader.applied_offsets().get(&source), Some(&99));
    let page = reader
        .telemetry(&TelemetryQuery {
            service: Some("chat".into()),
            model: Some("gpt-4o".into()),
            from_ms: i64::MIN,
            until_ms: i64::MAX,
            cursor: None,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(page.items.len(), 100, "one telemetry row per event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_id_is_acknowledged_but_applied_once_within_the_horizon() {
    let (_dir, engine) = engine();
    let (mut machine, reader) = open(&engine, 3);
    let horizon = ShardSettings::default().event_id_horizon_ms;
    let batch = spike_stream("search", "claude", 20)[..20].to_vec();
    let responses = apply_all(
        &mut machine,
        0,
        vec![
            direct_batch(T0, batch.clone()),
            direct_batch(T0 + 1_000, batch.clone()),
            direct_batch(T0 + horizon + 1_000, batch),
        ],
    )
    .await;
    assert_eq!(ingested(&responses[0]).applied(), 20);
    assert_eq!(
        ingested(&responses[1]).count(EventOutcome::DuplicateEventId),
        20
    );
    assert_eq!(
        ingested(&responses[2]).applied(),
        20,
        "ids are remembered for the horizon only"
    );
    assert_eq!(events_seen(&reader, "search"), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_on_other_content_is_applied_under_a_derived_id_and_retries_stay_duplicates() {
    // Ids as the original producer examples build them: the millisecond and four digits.
    let first = event("checkout", "gpt-4o", T0, 800.0, "1767225600000-4821");
    let second = event("checkout", "gpt-4o", T0 + 3, 950.0, "1767225600000-4821");
    let derived = Event::derived_event_id("1767225600000-4821", second.event.content_digest());
    let commands = vec![
        direct_batch(T0, vec![first.clone(), second.clone()]),
        direct_batch(T0 + 1_000, vec![second.clone(), first.clone()]),
        kafka_batch("llm.telemetry", 0, vec![second.clone()]),
    ];
    let mut digests = Vec::new();
    for _replica in 0..2 {
        let (_dir, engine) = engine();
        let (mut machine, reader) = open(&engine, 5);
        let responses = apply_all(&mut machine, 0, commands.clone()).await;
        assert_eq!(
            ingested(&responses[0]).events,
            [
                EventOutcome::Applied,
                EventOutcome::AppliedAs(derived.clone())
            ]
        );
        assert_eq!(
            ingested(&responses[1]).count(EventOutcome::DuplicateEventId),
            2,
            "a retry of either call is a duplicate"
        );
        assert_eq!(
            ingested(&responses[2]).count(EventOutcome::DuplicateEventId),
            1,
            "over Kafka too"
        );
        assert_eq!(events_seen(&reader, "checkout"), 2);
        let page = reader
            .telemetry(&TelemetryQuery {
                service: Some("checkout".into()),
                model: Some("gpt-4o".into()),
                from_ms: i64::MIN,
                until_ms: i64::MAX,
                cursor: None,
                limit: 10,
            })
            .unwrap();
        let ids: Vec<_> = page
            .items
            .iter()
            .map(|r| r.event.event_id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["1767225600000-4821".to_owned(), derived.clone()]);
        digests.push(reader.digest().unwrap());
    }
    assert_eq!(digests[0], digests[1], "replicas decide alike");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_new_keys_beyond_the_limits_are_refused_alike_on_every_replica() {
    let limits = KeyLimits {
        max_per_shard: 3,
        max_models_per_service: 2,
    };
    let settings = ShardSettings {
        keys: limits,
        ..ShardSettings::default()
    };
    let keys = [
        ("a", "m1"),
        ("a", "m2"),
        ("a", "m3"),
        ("b", "m1"),
        ("c", "m1"),
        ("a", "m1"),
    ];
    let events: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, (s, m))| event(s, m, T0 + i as i64, 500.0, &format!("e{i}")))
        .collect();
    let commands = vec![
        Command::Configure(Box::new(settings.clone())),
        kafka_batch("t", 0, events.clone()),
        // A replay of the same offsets, and the refused ids again after the bound is raised.
        kafka_batch("t", 0, events.clone()),
        Command::Configure(Box::new(ShardSettings {
            keys: KeyLimits::UNLIMITED,
            ..settings
        })),
        direct_batch(T0, vec![events[2].clone(), events[4].clone()]),
    ];
    let mut digests = Vec::new();
    for _replica in 0..2 {
        let (_dir, engine) = engine();
        let (mut machine, reader) = open(&engine, 4);
        let responses = apply_all(&mut machine, 0, commands.clone()).await;
        assert_eq!(
            ingested(&responses[1]).events,
            vec![
                EventOutcome::Applied,
                EventOutcome::Applied,
                EventOutcome::KeyLimit(KeyLimit::ModelsPerService(2)),
                EventOutcome::Applied,
                EventOutcome::KeyLimit(KeyLimit::PerShard(3)),
                EventOutcome::Applied,
            ]
        );
        assert_eq!(
            ingested(&responses[2]).count(EventOutcome::DuplicateOffset),
            6,
            "a refused offset is settled like an applied one"
        );
        assert_eq!(
            ingested(&responses[4]).applied(),
            2,
            "a refused event id is not remembered"
        );
        assert_eq!(reader.summary().keys, 5);
        assert_eq!(reader.settings().keys, KeyLimits::UNLIMITED);
        digests.push(reader.digest().unwrap());
    }
    let problem = KeyLimit::PerShard(3).to_string();
    assert!(problem.contains("ingest.max_keys_per_shard"), "{problem}");
    assert_eq!(KeyLimit::ModelsPerService(2).field(), "model");
    assert_eq!(digests[0], digests[1], "replicas decide alike");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_commands_are_rejected_whole_and_change_nothing() {
    let (_dir, engine) = engine();
    let (mut machine, reader) = open(&engine, 3);
    let mut bad = kafka_batch("t", 10, spike_stream("chat", "m", 3));
    if let Command::Ingest(batch) = &mut bad {
        batch.events[2].offset = Some(5);
    }
    let mut settings = ShardSettings::default();
    settings.detection.z_score.threshold = -1.0;
    let before = reader.digest().unwrap();
    let responses = apply_all(
        &mut machine,
        0,
        vec![bad, Command::Configure(Box::new(settings))],
    )
    .await;
    match &responses[..] {
        [Response::Rejected(a), Response::Rejected(b)] => {
            assert!(a.contains("events[2].offset"), "{a}");
            assert!(b.contains("z_score"), "{b}");
        }
        other => panic!("expected two rejections, got {other:?}"),
    }
    assert_eq!(events_seen(&reader, "chat"), 0);
    let after = reader.digest().unwrap();
    assert_eq!(before, after, "rejected commands change no state");
    assert_eq!(reader.summary().last_applied.unwrap().index, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_becomes_an_anomaly_and_an_outbox_entry_until_acknowledged() {
    let (_dir, engine) = engine();
    let (mut machine, reader) = open(&engine, 3);
    let responses = apply_all(
        &mut machine,
        0,
        vec![direct_batch(T0, spike_stream("chat", "gpt-4o", 60))],
    )
    .await;
    let alerts = ingested(&responses[0]).alerts.clone();
    assert_eq!(
        alerts.len(),
        1,
        "the spike opened one incident, notified once"
    );
    let anomalies = reader.anomalies(None, i64::MIN, 100).unwrap();
    assert!(!anomalies.is_empty(), "the spike is recorded as anomalies");
    assert_eq!(anomalies[0].service_name, "chat");
    assert!(anomalies
        .iter()
        .any(|a| a.details.metric == "latency_ms" && a.details.value == 32_000.0));
    let severity = anomalies[0].severity;
    assert_eq!(
        reader
            .anomalies(Some(severity), i64::MIN, 100)
            .unwrap()
            .len(),
        anomalies.iter().filter(|a| a.severity == severity).count()
    );
    assert!(
        reader.anomalies(None, T0 + 61_000, 100).unwrap().is_empty(),
        "since is honoured"
    );

    let incidents = reader
        .incidents(&IncidentQuery {
            limit: 10,
            since_ms: i64::MIN,
            ..IncidentQuery::default()
        })
        .unwrap();
    assert_eq!(incidents.len(), 1);
    let incident = &incidents[0];
    assert_eq!(incident.status, IncidentStatus::Open);
    assert!(anomalies
        .iter()
        .all(|a| a.incident_id.as_deref() == Some(incident.incident_id.as_str())));
    let outbox = reader.outbox(None, 100).unwrap();
    assert_eq!(outbox.iter().map(|e| e.seq).collect::<Vec<_>>(), alerts);
    assert_eq!(
        outbox[0].alert.incident_id.as_ref(),
        Some(&incident.incident_id)
    );
    let payload: serde_json::Value = serde_json::from_str(&outbox[0].json).unwrap();
    assert_eq!(payload["event"], "opened");
    assert_eq!(payload["alert_id"], outbox[0].alert.alert_id.as_str());
    assert_eq!(payload["incident"]["signals"][0]["method"], "latency_cap");

    let responses = apply_all(
        &mut machine,
        1,
        vec![
            Command::AckAlerts(alerts.clone()),
            Command::AckAlerts(alerts),
        ],
    )
    .await;
    assert_eq!(responses[0], Response::Acked(1));
    assert_eq!(
        responses[1],
        Response::Acked(0),
        "acknowledging twice is harmless"
    );
    assert!(reader.outbox(None, 100).unwrap().is_empty());
    assert_eq!(reader.summary().outbox_pending, 0);
    assert_eq!(
        reader.anomalies(None, i64::MIN, 100).unwrap().len(),
        anomalies.len(),
        "history stays"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_pages_follow_the_cursor_and_retention_deletes_old_rows() {
    let (_dir, engine) = engine();
    let (mut machine, reader) = open(&engine, 3);
    let mut events = spike_stream("chat", "a", 30);
    events.extend(spike_stream("chat", "b", 30));
    events.extend(spike_stream("docs", "a", 30));
    apply_all(&mut machine, 0, vec![direct_batch(T0, events)]).await;

    let mut query = TelemetryQuery {
        service: Some("chat".into()),
        model: Some("a".into()),
        from_ms: T0 + 5_000,
        until_ms: T0 + 25_000,
        cursor: None,
        limit: 7,
    };
    let mut seen = Vec::new();
    loop {
        let page = reader.telemetry(&query).unwrap();
        assert!(page.items.len() <= 7);
        seen.extend(page.items.iter().map(|r| r.event.timestamp_ms));
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, (5..25).map(|i| T0 + i * 1000).collect::<Vec<_>>());

    let all_chat = TelemetryQuery {
        service: Some("chat".into()),
        model: None,
        from_ms: i64::MIN,
        until_ms: i64::MAX,
        cursor: None,
        limit: 1000,
    };
    assert_eq!(reader.telemetry(&all_chat).unwrap().items.len(), 62);
    let everything = TelemetryQuery {
        service: None,
        ..all_chat.clone()
    };
    assert_eq!(reader.telemetry(&everything).unwrap().items.len(), 93);
    let bad = TelemetryQuery {
        cursor: Some("zz".into()),
        ..all_chat.clone()
    };
    assert!(reader.telemetry(&bad).is_err());

    let anomalies_before = reader.anomalies(None, i64::MIN, 100).unwrap().len();
    assert!(anomalies_before > 0);
    let purge = Command::Purge(Retention {
        telemetry_before_ms: T0 + 10_000,
        anomalies_before_ms: T0 + 10_000,
        dedup_before_ms: T0,
    });
    assert_eq!(
        apply_all(&mut machine, 1, vec![purge]).await,
        vec![Response::Purged]
    );
    assert_eq!(reader.telemetry(&all_chat).unwrap().items.len(), 62 - 20);
    assert_eq!(reader.telemetry(&everything).unwrap().items.len(), 93 - 30);
    assert_eq!(
        reader.anomalies(None, i64::MIN, 100).unwrap().len(),
        anomalies_before,
        "spikes are recent"
    );
    let purge_all = Command::Purge(Retention {
        telemetry_before_ms: i64::MAX,
        anomalies_before_ms: i64::MAX,
        dedup_before_ms: i64::MAX,
    });
    apply_all(&mut machine, 2, vec![purge_all]).await;
    assert!(reader.telemetry(&everything).unwrap().items.is_empty());
    assert!(reader.anomalies(None, i64::MIN, 100).unwrap().is_empty());
    assert_eq!(
        events_seen(&reader, "chat"),
        62,
        "baselines are not telemetry"
    );
}

/// The 40 batches the restart tests write: 4 keys, 13 events each, offsets with gaps.
fn restart_commands() -> Vec<Command> {
    (0..40u64)
        .map(|i| {
            kafka_batch(
                "llm.telemetry",
                i * 100,
                spike_stream(&format!("svc-{}", i % 4), "m", 12),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shard_comes_back_with_the_digest_of_its_log() {
    let options = EngineOptions {
        checkpoint_events: 15 * 13,
        ..EngineOptions::default()
    };
    let applied_dir = tempfile::tempdir().unwrap();
    let logged_dir = tempfile::tempdir().unwrap();
    let digest = {
        let applied = Engine::open(applied_dir.path(), options.clone()).unwrap();
        let logged = Engine::open(logged_dir.path(), options.clone()).unwrap();
        write_log(&logged, 5, restart_commands(), false).await;
        write_log(&applied, 5, restart_commands(), true)
            .await
            .digest()
            .unwrap()
    };
    for (dir, checkpoint) in [(&applied_dir, Some(29)), (&logged_dir, None)] {
        let engine = Engine::open(dir.path(), options.clone()).unwrap();
        let (mut log, mut machine, reader) = engine.open_shard(5).unwrap();
        let (applied, _) = machine.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), checkpoint, "the last checkpoint");
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(39)
        );
        StorageHelper::new(&mut log, &mut machine)
            .get_initial_state()
            .await
            .unwrap();
        assert_eq!(reader.summary().last_applied.unwrap().index, 39);
        assert_eq!(
            reader.digest().unwrap(),
            digest,
            "the state is the log, replayed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_checkpoint_leaves_nothing_to_re_apply() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let reader = write_log(&engine, 2, restart_commands(), true).await;
        reader.checkpoint().unwrap();
        reader.digest().unwrap()
    };
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    let (_, mut machine, reader) = engine.open_shard(2).unwrap();
    assert_eq!(
        machine.applied_state().await.unwrap().0.map(|l| l.index),
        Some(39)
    );
    assert_eq!(reader.digest().unwrap(), digest);
}

/// Copies a snapshot into a receiving file in 64 KiB chunks, as the Raft transport does.
async fn send(mut from: Box<tokio::fs::File>, to: &mut tokio::fs::File, flip_byte: Option<u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    loop {
        let n = from.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        if let Some(at) = flip_byte.filter(|&at| at >= offset && at < offset + n as u64) {
            buf[(at - offset) as usize] ^= 0x40;
        }
        to.write_all(&buf[..n]).await.unwrap();
        offset += n as u64;
    }
    to.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_under_concurrent_apply_installs_with_the_digest_it_was_taken_at() {
    let (_source_dir, source) = engine();
    let (mut machine, reader) = open(&source, 4);
    apply_all(&mut machine, 0, restart_commands()).await;
    let at_snapshot = reader.digest().unwrap();
    let mut builder = machine.get_snapshot_builder().await;
    let late = vec![direct_batch(T0 + 60_000, spike_stream("late", "m", 30))];
    apply_all(&mut machine, 40, late.clone()).await;
    let built = builder.build_snapshot().await.unwrap();
    assert_eq!(built.meta.last_log_id.unwrap().index, 39);
    assert_ne!(reader.digest().unwrap(), at_snapshot, "the source moved on");
    let current = machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);

    let target_dir = tempfile::tempdir().unwrap();
    {
        let target = Engine::open(target_dir.path(), EngineOptions::default()).unwrap();
        let (mut follower, follower_reader) = open(&target, 4);
        apply_all(
            &mut follower,
            0,
            vec![direct_batch(T0, spike_stream("stale", "m", 20))],
        )
        .await;
        let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
        send(current.snapshot, &mut incoming, None).await;
        follower
            .install_snapshot(&built.meta, incoming)
            .await
            .unwrap();
        assert_eq!(follower_reader.digest().unwrap(), at_snapshot);
        assert!(
            follower_reader.baselines(Some("stale"), None).is_empty(),
            "old state replaced"
        );

        apply_all(&mut follower, 40, late).await;
        assert_eq!(follower_reader.digest().unwrap(), reader.digest().unwrap());
        assert_eq!(
            follower_reader.anomalies(None, i64::MIN, 1000).unwrap(),
            reader.anomalies(None, i64::MIN, 1000).unwrap()
        );
        follower_reader.checkpoint().unwrap();
    }
    let target = Engine::open(target_dir.path(), EngineOptions::default()).unwrap();
    let (mut follower, follower_reader) = open(&target, 4);
    assert_eq!(
        follower_reader.digest().unwrap(),
        reader.digest().unwrap(),
        "durable after restart"
    );
    let kept = follower
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot is kept");
    assert_eq!(kept.meta, built.meta);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_snapshot_is_refused_and_the_shard_keeps_its_state() {
    let (_source_dir, source) = engine();
    let (mut machine, _) = open(&source, 4);
    apply_all(&mut machine, 0, restart_commands()).await;
    let built = machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_target_dir, target) = engine();
    let (mut follower, follower_reader) = open(&target, 4);
    apply_all(
        &mut follower,
        0,
        vec![direct_batch(T0, spike_stream("own", "m", 20))],
    )
    .await;
    let before = follower_reader.digest().unwrap();
    let len = built.snapshot.metadata().await.unwrap().len();
    let mut incoming = follower.begin_receiving_snapshot().await.unwrap();
    send(built.snapshot, &mut incoming, Some(len / 2)).await;
    let err = follower
        .install_snapshot(&built.meta, incoming)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert_eq!(follower_reader.digest().unwrap(), before);
    assert!(follower.get_current_snapshot().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_shard_leaves_nothing_but_its_vote_and_log_position_and_its_neighbours_untouched()
{
    let (_dir, engine) = engine();
    for shard in [1, 2, 3] {
        let (mut machine, _) = open(&engine, shard);
        apply_all(&mut machine, 0, restart_commands()).await;
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let digests: Vec<String> = [1, 3]
        .iter()
        .map(|&s| open(&engine, s).1.digest().unwrap())
        .collect();
    let (mut log, _held, reader) = engine.open_shard(2).unwrap();
    let followed = Vote::new_committed(7, 4);
    log.save_vote(&followed).await.unwrap();
    let held = |index| LogId::new(CommittedLeaderId::new(7, 4), index);
    log.blocking_append((0..=40).map(|index| Entry {
        log_id: held(index),
        payload: EntryPayload::Blank,
    }))
    .await
    .unwrap();
    assert!(
        engine.drop_shard(2).is_err(),
        "an open shard is not dropped"
    );
    drop((log, _held, reader));
    engine.drop_shard(2).unwrap();
    assert_eq!(engine.shard_ids().unwrap(), vec![1, 3]);
    assert!(!engine.dir().join("snapshots/2").exists());
    let (mut log, _, fresh) = engine.open_shard(2).unwrap();
    assert_eq!(fresh.summary().last_applied, None);
    assert!(fresh.baselines(None, None).is_empty());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(followed),
        "a replica opened again keeps the vote of the one dropped"
    );
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(
        engine.dropped_log_id(2).unwrap(),
        Some(held(40)),
        "the log position of the replica dropped is kept"
    );
    let shorter = LogId::new(CommittedLeaderId::new(3, 1), 90);
    log.blocking_append([Entry {
        log_id: shorter,
        payload: EntryPayload::Blank,
    }])
    .await
    .unwrap();
    drop((log, fresh));
    engine.drop_shard(2).unwrap();
    assert_eq!(
        engine.dropped_log_id(2).unwrap(),
        Some(held(40)),
        "a later drop of a shorter log keeps the longest"
    );
    assert_eq!(engine.shard_ids().unwrap(), vec![1, 3]);
    let after: Vec<String> = [1, 3]
        .iter()
        .map(|&s| open(&engine, s).1.digest().unwrap())
        .collect();
    assert_eq!(after, digests);
}

/// One step of a router's deliveries to a shard for one partition.
#[derive(Debug, Clone)]
enum Delivery {
    /// The next `len` offsets.
    Next(usize),
    /// A retry of offsets `[start, start + len)` among those already sent.
    Retry(usize, usize),
}

fn deliveries() -> impl proptest::strategy::Strategy<Value = Vec<Delivery>> {
    use proptest::prelude::*;
    proptest::collection::vec(
        prop_oneof![
            (1usize..12).prop_map(Delivery::Next),
            (0usize..60, 1usize..30).prop_map(|(s, l)| Delivery::Retry(s, l)),
        ],
        1..20,
    )
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 24, ..Default::default() })]

    /// Whatever mix of new batches, replays and overlapping retries arrives, every offset
    /// sent is applied exactly once.
    #[test]
    fn any_mix_of_batches_and_retries_applies_each_offset_once(plan in deliveries()) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let (_dir, engine) = engine();
            let (mut machine, reader) = open(&engine, 3);
            let stream = spike_stream("chat", "gpt-4o", 400);
            let mut sent = 0usize;
            let mut commands = Vec::new();
            for step in plan {
                let (start, end) = match step {
                    Delivery::Next(len) => {
                        let range = (sent, (sent + len).min(stream.len()));
                        sent = range.1;
                        range
                    }
                    Delivery::Retry(start, len) => (start.min(sent), (start + len).min(sent)),
                };
                if start < end {
                    commands.push(kafka_batch("llm.telemetry", start as u64, stream[start..end].to_vec()));
                }
            }
            let count = commands.len() as u64;
            apply_all(&mut machine, 0, commands).await;
            assert_eq!(events_seen(&reader, "chat"), sent as u64);
            let source = SourcePartition { topic: "llm.telemetry".into(), partition: 0 };
            assert_eq!(reader.applied_offsets().get(&source).copied(), sent.checked_sub(1).map(|s| s as u64));
            assert_eq!(reader.summary().last_applied.map(|l| l.index + 1).unwrap_or(0), count);
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reports_its_volume_and_what_rocksdb_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
        let empty = engine.rocksdb_stats().unwrap();
        write_log(&engine, 5, restart_commands(), true).await;
        let written = engine.rocksdb_stats().unwrap();
        assert!(
            written.memtable_bytes > empty.memtable_bytes,
            "{empty:?} then {written:?}"
        );
        assert!(!written.write_stopped);
        assert_eq!(written.delayed_write_rate, 0);
        let volume = engine.volume_stats().unwrap();
        assert!(volume.size_bytes > 0);
        assert!(volume.available_bytes <= volume.size_bytes);
    }
    // Opening again flushes what the log recovered into SST files.
    let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
    assert!(engine.rocksdb_stats().unwrap().live_sst_bytes > 0);
}
