//! Load generator for the storage engine: log append throughput with an fsync per batch
//! for many Raft groups writing at once, and the start-up time of a node holding many
//! shards and gigabytes of data.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageHelper};
use sentinel_bench::storage::Traffic;
use sentinel_storage_engine::{Command, Engine, EngineOptions, TypeConfig};

#[derive(Parser)]
#[command(about = "Storage-engine load: log append throughput and node start-up time")]
struct Args {
    #[command(subcommand)]
    command: Load,
}

#[derive(Subcommand)]
enum Load {
    /// Appends batches with an fsync each from 1, 8 and 64 groups at once.
    Append {
        /// Numbers of groups writing at once.
        #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
        groups: Vec<usize>,
        /// Events per appended batch.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Runs per group count (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Directory for the databases (on the disk under test).
        #[arg(long, default_value = "target/storage-load")]
        dir: PathBuf,
    },
    /// Fills a node with shards and data once, then times opening it until every shard
    /// serves, on two threads.
    Startup {
        /// Shards on the node.
        #[arg(long, default_value_t = 256)]
        shards: u32,
        /// Data to write before timing, in GiB of RocksDB files (snapshot files come on top).
        #[arg(long, default_value_t = 2.0)]
        gigabytes: f64,
        /// Leave each shard with this many applied entries after its last checkpoint, as
        /// after a crash (0: as after a clean shutdown).
        #[arg(long, default_value_t = 0)]
        unchecked_entries: u64,
        /// Timed openings (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Directory of the node's data (kept between invocations).
        #[arg(long, default_value = "target/storage-startup")]
        dir: PathBuf,
    },
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match Args::parse().command {
        Load::Append {
            groups,
            batch,
            seconds,
            runs,
            dir,
        } => rt.block_on(append(
            &groups,
            batch,
            Duration::from_secs(seconds),
            runs,
            &dir,
        )),
        Load::Startup {
            shards,
            gigabytes,
            unchecked_entries,
            runs,
            dir,
        } => rt.block_on(startup(shards, gigabytes, unchecked_entries, runs, &dir)),
    }
}

fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

async fn append(
    groups: &[usize],
    batch: usize,
    run_for: Duration,
    runs: usize,
    dir: &Path,
) -> Result<()> {
    println!("groups  batches/s  MB/s  appends per fsync  (median of {runs} runs of {run_for:?}, {batch} events per batch)");
    for &g in groups {
        let mut rates = Vec::new();
        let mut mbs = Vec::new();
        let mut per_sync = Vec::new();
        for run in 0..runs {
            let path = dir.join(format!("append-{g}-{run}"));
            let _ = std::fs::remove_dir_all(&path);
            let engine = Engine::open(&path, EngineOptions::default())?;
            let started = Instant::now();
            let mut tasks = Vec::new();
            for shard in 0..g as u32 {
                let engine: Arc<Engine> = engine.clone();
                let batches: Vec<Command> = {
                    let mut traffic = Traffic::new(u64::from(shard), 64, shard as i32);
                    (0..8).map(|_| traffic.batch(batch)).collect()
                };
                tasks.push(tokio::spawn(async move {
                    let (mut log, _, _) = engine.open_shard(shard)?;
                    let mut index = 1;
                    while started.elapsed() < run_for {
                        let command = batches[(index % 8) as usize].clone();
                        log.blocking_append([entry(index, command)]).await?;
                        index += 1;
                    }
                    anyhow::Ok(index - 1)
                }));
            }
            let mut appended = 0;
            for task in tasks {
                appended += task.await??;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let stats = engine.stats();
            rates.push(appended as f64 / elapsed);
            mbs.push(stats.log_bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e6);
            per_sync.push(
                stats.log_appends.load(Ordering::Relaxed) as f64
                    / stats.log_syncs.load(Ordering::Relaxed).max(1) as f64,
            );
            drop(engine);
            std::fs::remove_dir_all(&path)?;
        }
        println!(
            "{g:>6}  {:>9.0}  {:>4.1}  {:>17.1}",
            median(rates),
            median(mbs),
            median(per_sync)
        );
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 30)
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

async fn startup(
    shards: u32,
    gigabytes: f64,
    unchecked: u64,
    runs: usize,
    dir: &Path,
) -> Result<()> {
    let defaults = EngineOptions::default();
    let options = EngineOptions {
        checkpoint_events: ((unchecked + 1) * 500).max(defaults.checkpoint_events),
        ..defaults
    };
    let marker = dir.join(format!("filled-{shards}-{gigabytes}-{unchecked}"));
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(dir);
        fill(dir, shards, gigabytes, unchecked, &options).await?;
        std::fs::write(&marker, b"")?;
    }
    println!(
        "node with {shards} shards, {:.2} GiB in RocksDB (+ {:.2} GiB of snapshot files), {unchecked} entries per shard to re-apply",
        gib(dir_bytes(&dir.join("db"))?),
        gib(dir_bytes(&dir.join("snapshots"))?)
    );
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let engine = Engine::open(dir, options.clone())?;
        let ids = engine.shard_ids()?;
        let mut openers = Vec::new();
        for half in ids.chunks(ids.len().div_ceil(2)) {
            let (engine, half) = (engine.clone(), half.to_vec());
            openers.push(tokio::spawn(async move {
                let mut open = Vec::new();
                for shard in half {
                    let (mut log, mut machine, reader) = engine.open_shard(shard)?;
                    StorageHelper::new(&mut log, &mut machine)
                        .get_initial_state()
                        .await?;
                    open.push((log, machine, reader));
                }
                anyhow::Ok(open)
            }));
        }
        let mut open = Vec::new();
        for opener in openers {
            open.extend(opener.await??);
        }
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            open.len() == shards as usize,
            "{} shards opened",
            open.len()
        );
        times.push(elapsed);
        println!(
            "  opened {} shards, ready to serve in {elapsed:.3} s",
            open.len()
        );
    }
    println!("median start-up: {:.3} s", median(times));
    Ok(())
}

/// Writes batches round-robin over the shards until the data reaches `gigabytes`; each
/// shard is then snapshotted and its log purged, as a running node does, and left with
/// `unchecked` applied entries after its last checkpoint.
async fn fill(
    dir: &Path,
    shards: u32,
    gigabytes: f64,
    unchecked: u64,
    options: &EngineOptions,
) -> Result<()> {
    let engine = Engine::open(dir, options.clone())?;
    let mut stores = Vec::new();
    for shard in 0..shards {
        let (log, machine, reader) = engine.open_shard(shard)?;
        stores.push((
            log,
            machine,
            reader,
            Traffic::new(u64::from(shard), 16, 0),
            1u64,
        ));
    }
    let target = (gigabytes * f64::from(1 << 30)) as u64;
    let started = Instant::now();
    let mut round = 0;
    while dir_bytes(&dir.join("db"))? < target {
        for (log, machine, _, traffic, next) in &mut stores {
            let command = traffic.batch(500);
            log.blocking_append([entry(*next, command.clone())]).await?;
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), *next)))
                .await?;
            machine.apply([entry(*next, command)]).await?;
            *next += 1;
        }
        round += 1;
        if round % 20 == 0 {
            for (log, machine, ..) in &mut stores {
                let snapshot = machine
                    .get_snapshot_builder()
                    .await
                    .build_snapshot()
                    .await?;
                log.purge(
                    snapshot
                        .meta
                        .last_log_id
                        .context("snapshot of applied entries")?,
                )
                .await?;
            }
            println!(
                "  filled {:.2} GiB in {:.0} s",
                gib(dir_bytes(&dir.join("db"))?),
                started.elapsed().as_secs_f64()
            );
        }
    }
    for (log, machine, reader, traffic, next) in &mut stores {
        machine
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await?;
        for _ in 0..unchecked {
            let command = traffic.batch(500);
            log.blocking_append([entry(*next, command.clone())]).await?;
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), *next)))
                .await?;
            machine.apply([entry(*next, command)]).await?;
            *next += 1;
        }
        if unchecked == 0 {
            reader.checkpoint()?;
        }
    }
    engine.sync()?;
    Ok(())
}
