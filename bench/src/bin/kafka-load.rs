//! Kafka ingestion throughput: a backlog of events in a Kafka-protocol broker, drained by
//! a router (in this process) into a local 3-node cluster (nodes in this process, real
//! gRPC on loopback, RocksDB in a temporary directory). Reports how fast the broker
//! takes the backlog and how fast the router turns it into events committed by the
//! shards, with offsets committed behind them.
//!
//! The broker is `tansu` started on a free port (installed by `scripts/setup`), or any
//! broker given with `--brokers`.
//!
//! ```sh
//! cargo run --release -p sentinel-bench --bin kafka-load -- --events 200000
//! SENTINEL_KAFKA__PROPERTIES='{fetch.wait.max.ms: 10}' cargo run ... kafka-load
//! ```

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use sentinel_local::cluster::{ephemeral_port, LocalCluster};
use sentinel_router::kafka::rdkafka;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const TOPIC: &str = "llm.telemetry";

#[derive(Parser)]
#[command(about = "Kafka ingestion throughput through a router into a local cluster")]
struct Args {
    /// Events in the backlog.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Shards of the cluster.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// (service, model) keys the events are spread over.
    #[arg(long, default_value_t = 64)]
    keys: usize,
    /// The router's `ingest.batch.max_in_flight_bytes`.
    #[arg(long, default_value_t = 64 << 20)]
    max_in_flight_bytes: usize,
    /// Bootstrap brokers of a running broker; without it, tansu is started.
    #[arg(long)]
    brokers: Option<String>,
    /// The tansu binary started when `--brokers` is absent.
    #[arg(long, default_value = "/var/cache/sentinel/tools/bin/tansu")]
    tansu: PathBuf,
    /// Produce-to-anomaly probes measured after the backlog drained (0: none).
    #[arg(long, default_value_t = 20)]
    probes: usize,
}

/// A tansu broker process with in-memory storage.
struct Tansu {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tansu {
    fn start(bin: &PathBuf) -> anyhow::Result<(Tansu, String)> {
        let dir = tempfile::tempdir()?;
        let address = format!("127.0.0.1:{}", ephemeral_port()?);
        let url = format!("tcp://{address}");
        let child = Command::new(bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (run scripts/setup)", bin.display()))?;
        Ok((Tansu { child, _dir: dir }, address))
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flat-shape event `i`, spread over `keys` (service, model) pairs.
fn event(i: usize, keys: usize, t0: i64) -> Vec<u8> {
    let key = i % keys;
    serde_json::json!({
        "timestamp": chrono::DateTime::from_timestamp_millis(t0 + i as i64)
            .expect("time in range")
            .to_rfc3339(),
        "service_name": format!("service-{}", key / 2),
        "model_name": if key % 2 == 0 { "gpt-4o" } else { "claude-3-5-sonnet" },
        "latency_ms": 200.0 + ((i * 37) % 100) as f64,
        "prompt_tokens": 400,
        "completion_tokens": 120,
        "user_id": format!("user-{}", i % 1000),
    })
    .to_string()
    .into_bytes()
}

/// Produces the backlog; its duration.
async fn produce(brokers: &str, args: &Args) -> anyhow::Result<Duration> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let topic = NewTopic::new(TOPIC, args.partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&topic], &options).await? {
        if let Err((_, code)) = result {
            eprintln!("creating {TOPIC}: {code} (going on)");
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .create()?;
    let t0 = chrono::Utc::now().timestamp_millis() - 3_600_000;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for i in 0..args.events {
        let payload = event(i, args.keys, t0);
        let key = format!("{}", i % args.keys);
        let partition = (i % args.keys) as i32 % args.partitions;
        loop {
            let record = FutureRecord::to(TOPIC)
                .partition(partition)
                .key(&key)
                .payload(&payload);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err(_) => match pending.pop_front() {
                    Some(delivery) => check(delivery.await)?,
                    None => tokio::time::sleep(Duration::from_millis(10)).await,
                },
            }
        }
        if pending.len() >= 20_000 {
            check(pending.pop_front().expect("pending").await)?;
        }
    }
    for delivery in pending {
        check(delivery.await)?;
    }
    Ok(started.elapsed())
}

/// Whether the broker acknowledged a message.
fn check<E>(
    delivery: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, E>,
) -> anyhow::Result<()> {
    match delivery {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => bail!("producing: {error}"),
        Err(_) => bail!("the producer went away"),
    }
}

/// Events the baselines count, over every key.
async fn applied(http: &reqwest::Client, router: &str) -> Option<u64> {
    let answer: serde_json::Value = http
        .get(format!(
            "http://{router}/api/v1/baselines?consistency=stale"
        ))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(
        answer["baselines"]
            .as_array()?
            .iter()
            .filter_map(|b| b["events"].as_u64())
            .sum(),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (_tansu, brokers) = match &args.brokers {
        Some(brokers) => (None, brokers.clone()),
        None => {
            let (tansu, address) = Tansu::start(&args.tansu)?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            (Some(tansu), address)
        }
    };
    let took = produce(&brokers, &args).await?;
    println!(
        "backlog: {} events in {} partitions produced in {:.1} s ({:.0} events/s)",
        args.events,
        args.partitions,
        took.as_secs_f64(),
        args.events as f64 / took.as_secs_f64()
    );

    let cluster = LocalCluster::start(3, args.shards, 3).await?;
    let env = [
        ("SENTINEL_KAFKA__BROKERS", brokers.clone()),
        ("SENTINEL_KAFKA__TOPICS", TOPIC.to_owned()),
        (
            "SENTINEL_KAFKA__GROUP_ID",
            format!("kafka-load-{}", std::process::id()),
        ),
        (
            "SENTINEL_INGEST__BATCH__MAX_IN_FLIGHT_BYTES",
            args.max_in_flight_bytes.to_string(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let started = Instant::now();
    // SENTINEL_* variables of this process override the router's settings.
    let router = cluster
        .start_router(None, None, env.into_iter().chain(std::env::vars()))
        .await?;
    let http_listen = router.http.clone();
    let http = reqwest::Client::new();
    let mut last_report = Instant::now();
    loop {
        let done = applied(&http, &http_listen).await.unwrap_or(0);
        if done >= args.events as u64 {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            println!(
                "  {done} events applied after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the backlog did not drain within an hour ({done} applied)");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    println!(
        "drained: {} events applied by {} shards in {:.1} s from router start ({:.0} events/s, routing table load included)",
        args.events,
        args.shards,
        took.as_secs_f64(),
        args.events as f64 / took.as_secs_f64()
    );
    if args.probes > 0 {
        let mut latencies = probe_latency(&brokers, &http, &http_listen, args.probes).await?;
        latencies.sort();
        let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "produce to anomaly listed: {} probes, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            at(0.5).as_secs_f64() * 1e3,
            at(0.99).as_secs_f64() * 1e3,
            latencies[latencies.len() - 1].as_secs_f64() * 1e3
        );
    }
    router.stop().await?;
    cluster.stop().await;
    Ok(())
}

/// Produce-to-anomaly latency, one probe at a time: a fresh key gets 60 ordinary events
/// (a baseline), then one latency spike; the time from producing the spike until the
/// router lists its anomaly (`/api/v1/anomalies`, polled every 2 ms).
async fn probe_latency(
    brokers: &str,
    http: &reqwest::Client,
    router: &str,
    probes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .create()?;
    let send = async |payload: serde_json::Value| -> anyhow::Result<()> {
        let payload = payload.to_string();
        let record: FutureRecord<'_, (), String> = FutureRecord::to(TOPIC).payload(&payload);
        check(Ok::<_, ()>(
            producer.send(record, Duration::from_secs(30)).await,
        ))
    };
    let mut latencies = Vec::with_capacity(probes);
    for probe in 0..probes {
        let service = format!("probe-{}-{probe}", std::process::id());
        let now = chrono::Utc::now().timestamp_millis();
        let event = |t: i64, latency_ms: f64| {
            serde_json::json!({
                "timestamp": chrono::DateTime::from_timestamp_millis(t)
                    .expect("time in range")
                    .to_rfc3339(),
                "service_name": service,
                "model_name": "probe-model",
                "latency_ms": latency_ms,
                "prompt_tokens": 400,
                "completion_tokens": 120,
            })
        };
        for j in 0..60 {
            send(event(
                now - 61_000 + j * 1_000,
                200.0 + ((j * 37) % 100) as f64,
            ))
            .await?;
        }
        let baseline = format!(
            "http://{router}/api/v1/baselines?service={service}&model=probe-model&consistency=stale"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer: serde_json::Value = http.get(&baseline).send().await?.json().await?;
            if answer["baselines"][0]["events"].as_u64() == Some(60) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the baseline of {service} never reached 60 events: {answer}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let anomalies =
            format!("http://{router}/api/v1/anomalies?hours=1&limit=100&consistency=stale");
        let started = Instant::now();
        send(event(now, 20_000.0)).await?;
        loop {
            let answer: serde_json::Value = http.get(&anomalies).send().await?.json().await?;
            let listed = answer["anomalies"]
                .as_array()
                .is_some_and(|list| list.iter().any(|a| a["service_name"] == service.as_str()));
            if listed {
                latencies.push(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("the spike of {service} was never listed as an anomaly");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(latencies)
}
