//! Crash safety with real processes: a child appends, commits and applies in a loop and is
//! killed with SIGKILL at random points; after every kill the store must hold a prefix of
//! what was appended, every append acknowledged as flushed, and a state whose digest equals
//! a fresh replay of the surviving log.
//!
//! `SENTINEL_CRASH_ROUNDS` sets the number of kills (default 12; the long run uses 200).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, LogId, RaftLogReader, StorageHelper};
use sentinel_storage_engine::{Command, Engine, EngineOptions};

const SHARD: u32 = 11;
const CHILD_DIR: &str = "SENTINEL_CRASH_CHILD_DIR";

fn options() -> EngineOptions {
    EngineOptions {
        checkpoint_events: 7 * 25,
        ..EngineOptions::default()
    }
}

/// The command at log index `i`: a deterministic batch of 25 events over 5 keys.
fn command_at(i: u64) -> Command {
    let events = (0..25u64)
        .map(|j| {
            let n = i * 25 + j;
            let latency = if n % 997 == 0 {
                40_000.0
            } else {
                700.0 + ((n * 7919) % 300) as f64
            };
            event(
                &format!("svc-{}", n % 5),
                "gpt-4o",
                T0 + n as i64 * 100,
                latency,
                &format!("e{n}"),
            )
        })
        .collect();
    kafka_batch("llm.telemetry", i * 25, events)
}

fn log_id(i: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), i)
}

/// The child: commit and apply what the log holds, then append, commit and apply
/// forever, printing each index once its append is durable; snapshot and purge now and then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of crash_recovery_keeps_a_prefix_and_replays_to_the_same_digest"]
async fn crash_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by the crash test");
    let engine = Engine::open(dir.as_ref(), options()).unwrap();
    let (mut log, mut machine, reader) = engine.open_shard(SHARD).unwrap();
    StorageHelper::new(&mut log, &mut machine)
        .get_initial_state()
        .await
        .unwrap();
    let mut next = log
        .get_log_state()
        .await
        .unwrap()
        .last_log_id
        .map_or(0, |l| l.index + 1);
    let applied = reader.summary().last_applied.map_or(0, |l| l.index + 1);
    for i in applied..next {
        log.save_committed(Some(log_id(i))).await.unwrap();
        machine.apply([entry(i, command_at(i))]).await.unwrap();
    }
    println!("ready {next}");
    loop {
        log.blocking_append([entry(next, command_at(next))])
            .await
            .unwrap();
        println!("flushed {next}");
        log.save_committed(Some(log_id(next))).await.unwrap();
        machine
            .apply([entry(next, command_at(next))])
            .await
            .unwrap();
        if next % 23 == 22 {
            machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
            log.purge(log_id(next - 5)).await.unwrap();
        }
        next += 1;
    }
}

/// A small deterministic generator for kill delays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_recovery_keeps_a_prefix_and_replays_to_the_same_digest() {
    let rounds: u64 = std::env::var("SENTINEL_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Lcg(0x05e1_71e1);
    let mut acknowledged: Option<u64> = None;
    for round in 0..rounds {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        let run_for = Duration::from_millis(100 + rng.below(400));
        let started = Instant::now();
        let mut ready = false;
        for line in lines.lines() {
            let line = line.unwrap();
            if let Some(i) = line.strip_prefix("flushed ") {
                acknowledged = acknowledged.max(Some(i.parse().unwrap()));
            }
            ready |= line.contains("ready ");
            if ready && started.elapsed() >= run_for {
                break;
            }
        }
        assert!(ready, "round {round}: the child never started");
        child.kill().unwrap();
        child.wait().unwrap();
        check(dir.path(), acknowledged, round).await;
    }
    assert!(
        acknowledged > Some(rounds),
        "the child made progress: {acknowledged:?}"
    );
}

/// Reopens the store and checks it against the deterministic history.
async fn check(dir: &std::path::Path, acknowledged: Option<u64>, round: u64) {
    let engine = Engine::open(dir, options()).unwrap();
    let (mut log, mut machine, reader) = engine.open_shard(SHARD).unwrap();
    let state = log.get_log_state().await.unwrap();
    let last = state.last_log_id.map(|l| l.index);
    assert!(
        last >= acknowledged,
        "round {round}: entry {acknowledged:?} was acknowledged as flushed, the log ends at {last:?}"
    );
    let first = state.last_purged_log_id.map_or(0, |l| l.index + 1);
    let end = last.map_or(0, |l| l + 1);
    let entries = log.try_get_log_entries(first..end).await.unwrap();
    assert_eq!(
        entries.len() as u64,
        end - first,
        "round {round}: gap in the log"
    );
    for e in &entries {
        assert_eq!(
            *e,
            entry(e.log_id.index, command_at(e.log_id.index)),
            "round {round}"
        );
    }
    StorageHelper::new(&mut log, &mut machine)
        .get_initial_state()
        .await
        .unwrap();
    let applied = reader.summary().last_applied.map(|l| l.index);
    assert!(
        applied <= last,
        "round {round}: applied {applied:?} beyond the log end {last:?}"
    );
    let digest = reader.digest().unwrap();
    drop((log, machine, reader));
    drop(engine);
    let end = applied.map_or(0, |a| a + 1);
    assert_eq!(
        digest,
        replay(end).await,
        "round {round}: state differs from a replay of 0..{end}"
    );
}

/// The digest of a fresh store that applied entries `0..end`.
async fn replay(end: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<Engine> = Engine::open(dir.path(), options()).unwrap();
    let (_, mut machine, reader) = engine.open_shard(SHARD).unwrap();
    for chunk in (0..end).collect::<Vec<_>>().chunks(16) {
        machine
            .apply(chunk.iter().map(|&i| entry(i, command_at(i))))
            .await
            .unwrap();
    }
    reader.digest().unwrap()
}
