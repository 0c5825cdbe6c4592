//! Load on a local 3-node cluster (three nodes in this process, real gRPC on loopback,
//! real RocksDB in a temporary directory).
//!
//! `ingest`: sustained events/s and ack latency of gRPC ingestion for several batch sizes.
//! `idle`: CPU used by an idle cluster with many shards.
//! `move`: time to copy one large shard to a node that joins.
//! `query`: REST query throughput through a router, measured with `wrk`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sentinel_core::shard::shard_of;
use sentinel_core::Event;
use sentinel_local::cluster::{client, LocalCluster};
use sentinel_local::replay::{Replay, ReplayConfig};
use sentinel_proto::leader_hint;
use sentinel_proto::v1::{IngestRequest, InputEvent};
use tokio::sync::Mutex;

#[derive(Parser)]
#[command(about = "Load on a local 3-node Sentinel cluster")]
struct Args {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Sustained gRPC ingestion: events/s and ack latency per batch size.
    Ingest {
        /// Batch sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
        batches: Vec<usize>,
        /// Seconds of load per batch size.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Concurrent ingest calls in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Shards.
        #[arg(long, default_value_t = 32)]
        shards: u32,
    },
    /// CPU of an idle cluster.
    Idle {
        /// Shards.
        #[arg(long, default_value_t = 64)]
        shards: u32,
        /// Seconds measured.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// REST query throughput through a router in this process, measured with `wrk`
    /// (Debian package `wrk`) on `/api/v1/anomalies/recent` and `/api/v1/baselines`.
    Query {
        /// Seconds of load per route.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Open connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Redis URL for the router's answer cache (e.g. `redis://127.0.0.1:6379/0`);
        /// without it every query goes to the shards.
        #[arg(long)]
        redis: Option<String>,
        /// Shards.
        #[arg(long, default_value_t = 32)]
        shards: u32,
    },
    /// Time to move one shard: fill it on a single node, then add a second node and
    /// wait until that node's replica has caught up.
    Move {
        /// Size to fill the shard to: MiB of the first node's RocksDB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Events per ingest call while filling.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat format")?
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Realistic events grouped by shard, in replay order: ten minutes of the replay, or
/// thirty with its injected incidents when `incidents`.
fn events_by_shard(shards: u32, incidents: bool) -> anyhow::Result<BTreeMap<u32, Vec<Event>>> {
    let mut by_shard: BTreeMap<u32, Vec<Event>> = BTreeMap::new();
    let replay = Replay::new(ReplayConfig {
        duration_s: if incidents { 1800.0 } else { 600.0 },
        incidents,
        ..ReplayConfig::default()
    })?;
    for labeled in replay {
        let shard = shard_of(&labeled.event.service, &labeled.event.model, shards);
        by_shard.entry(shard).or_default().push(labeled.event);
    }
    Ok(by_shard)
}

/// `count` events of `pool` from `start` on, each with a fresh event id.
fn batch_of(
    pool: &[Event],
    start: usize,
    count: usize,
    ids: &mut u64,
    worker: usize,
) -> Vec<InputEvent> {
    pool.iter()
        .cycle()
        .skip(start)
        .take(count)
        .map(|event| {
            *ids += 1;
            let mut event = event.clone();
            event.event_id = Some(format!("load-{worker}-{ids}"));
            InputEvent {
                offset: None,
                event: sentinel_core::codec::encode(&event),
            }
        })
        .collect()
}

async fn ingest(
    batches: Vec<usize>,
    seconds: u64,
    concurrency: usize,
    shards: u32,
) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, shards, 3).await?;
    let leaders = Arc::new(Mutex::new(cluster.leaders().await?));
    let events = Arc::new(events_by_shard(shards, false)?);
    let shard_ids: Vec<u32> = events.keys().copied().collect();
    println!("batch  events/s  ack p50 ms  ack p99 ms  calls  rejected");
    for batch in batches {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut workers = Vec::new();
        for worker in 0..concurrency {
            let (leaders, events, shard_ids) = (leaders.clone(), events.clone(), shard_ids.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let (mut sent, mut rejected, mut ids) = (0usize, 0usize, 0u64);
                let mut round = worker;
                while Instant::now() < deadline {
                    let shard = shard_ids[round % shard_ids.len()];
                    round += concurrency;
                    let pool = &events[&shard];
                    let start = (round * batch) % pool.len().max(1);
                    let inputs = batch_of(pool, start, batch, &mut ids, worker);
                    let address = leaders.lock().await.get(&shard).cloned();
                    let Some(address) = address else { continue };
                    let began = Instant::now();
                    match client(&address)
                        .ingest(IngestRequest {
                            shard,
                            source: None,
                            events: inputs,
                        })
                        .await
                    {
                        Ok(reply) => {
                            latencies.push(began.elapsed());
                            sent += batch;
                            rejected += reply
                                .into_inner()
                                .results
                                .iter()
                                .filter(|r| r.outcome == 4)
                                .count();
                        }
                        Err(status) => {
                            if let Some((_, leader)) = leader_hint(&status) {
                                leaders.lock().await.insert(shard, leader);
                            }
                        }
                    }
                }
                (latencies, sent, rejected)
            }));
        }
        let (mut latencies, mut sent, mut rejected) = (Vec::new(), 0, 0);
        for worker in workers {
            let (l, s, r) = worker.await?;
            latencies.extend(l);
            sent += s;
            rejected += r;
        }
        let elapsed = started.elapsed().as_secs_f64();
        latencies.sort();
        println!(
            "{batch:>5}  {:>8.0}  {:>10.2}  {:>10.2}  {:>5}  {rejected}",
            sent as f64 / elapsed,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.len()
        );
    }
    cluster.stop().await;
    Ok(())
}

/// One `wrk` run: requests/s, latency p50 and p99, and the non-2xx answers.
struct WrkRun {
    requests_per_second: f64,
    p50: String,
    p99: String,
    errors: String,
}

/// Runs `wrk` against `url` and reads its summary.
async fn wrk(url: String, seconds: u64, connections: usize) -> anyhow::Result<WrkRun> {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("wrk")
            .args([
                "-t2",
                &format!("-c{connections}"),
                &format!("-d{seconds}s"),
                "--latency",
                &url,
            ])
            .output()
    })
    .await?
    .context("running wrk (Debian package wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    Ok(WrkRun {
        requests_per_second: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("wrk printed no rate:\n{text}"))?,
        p50: field("50%").unwrap_or_default(),
        p99: field("99%").unwrap_or_default(),
        errors: field("Non-2xx or 3xx responses:").unwrap_or_else(|| "0".into()),
    })
}

async fn query(
    seconds: u64,
    connections: usize,
    redis: Option<String>,
    shards: u32,
) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, shards, 3).await?;
    eprintln!("cluster converged; ingesting the replay with its incidents");
    let leaders = cluster.leaders().await?;
    let mut ids = 0;
    for (shard, events) in events_by_shard(shards, true)? {
        for start in (0..events.len()).step_by(500) {
            let inputs = batch_of(&events, start, 500.min(events.len() - start), &mut ids, 0);
            client(&leaders[&shard])
                .ingest(IngestRequest {
                    shard,
                    source: None,
                    events: inputs,
                })
                .await?;
        }
    }
    eprintln!("{ids} events ingested; starting the router");
    let env = redis
        .iter()
        .map(|url| ("SENTINEL_CACHE__REDIS_URL".to_owned(), url.clone()));
    let router = cluster.start_router(None, None, env).await?;
    let http = router.http.clone();
    let anomalies: serde_json::Value =
        reqwest::get(format!("http://{http}/api/v1/anomalies/recent?limit=20"))
            .await?
            .json()
            .await?;
    println!(
        "3 nodes, {shards} shards, R = 3; {} anomalies in the recent answer; cache: {}",
        anomalies["count"],
        redis.as_deref().unwrap_or("none")
    );
    println!("route                          queries/s   p50        p99        non-2xx");
    for path in [
        "/api/v1/anomalies/recent",
        "/api/v1/baselines?service=chat-api&model=gpt-4o",
    ] {
        let run = wrk(format!("http://{http}{path}"), seconds, connections).await?;
        println!(
            "{path:<30} {:>9.0}   {:<10} {:<10} {}",
            run.requests_per_second, run.p50, run.p99, run.errors
        );
    }
    router.stop().await?;
    cluster.stop().await;
    Ok(())
}

async fn idle(shards: u32, seconds: u64) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, shards, 3).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = cpu_seconds()?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let used = cpu_seconds()? - before;
    let wall = started.elapsed().as_secs_f64();
    println!(
        "idle 3-node cluster, {shards} shards, R = 3: {:.1} % of one core for all three nodes ({used:.2} CPU s in {wall:.1} s)",
        100.0 * used / wall
    );
    cluster.stop().await;
    Ok(())
}

/// Bytes of the files under `path`.
fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

async fn move_shard(target_mib: u64, batch: usize) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(1, 1, 2).await?;
    let pool = Arc::new(
        events_by_shard(1, false)?
            .remove(&0)
            .context("replay events")?,
    );
    let full = Arc::new(AtomicBool::new(false));
    let filled = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (pool, full, filled) = (pool.clone(), full.clone(), filled.clone());
        let mut node = client(&cluster.addresses[0]);
        workers.push(tokio::spawn(async move {
            let (mut ids, mut round) = (0u64, worker);
            while !full.load(Ordering::Relaxed) {
                let inputs = batch_of(&pool, (round * batch) % pool.len(), batch, &mut ids, worker);
                round += 4;
                node.ingest(IngestRequest {
                    shard: 0,
                    source: None,
                    events: inputs,
                })
                .await?;
                filled.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let db = cluster.data_dir(0).join("db");
    while dir_bytes(&db) < target_mib << 20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    full.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await??;
    }
    println!(
        "filled shard 0 with {} events in {:.0} s: first node's RocksDB {:.0} MiB",
        filled.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        mib(dir_bytes(&db))
    );
    let moving = Instant::now();
    cluster.spawn()?;
    cluster.wait_converged().await?;
    let second = cluster.data_dir(1);
    println!(
        "second node joined and caught up in {:.1} s; it holds {:.0} MiB of snapshot files and {:.0} MiB of RocksDB",
        moving.elapsed().as_secs_f64(),
        mib(dir_bytes(&second.join("snapshots"))),
        mib(dir_bytes(&second.join("db")))
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Mode::Ingest {
            batches,
            seconds,
            concurrency,
            shards,
        } => ingest(batches, seconds, concurrency, shards).await,
        Mode::Idle { shards, seconds } => idle(shards, seconds).await,
        Mode::Move { mib, batch } => move_shard(mib, batch).await,
        Mode::Query {
            seconds,
            connections,
            redis,
            shards,
        } => query(seconds, connections, redis, shards).await,
    }
}
