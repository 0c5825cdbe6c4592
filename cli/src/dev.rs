//! `sentinel dev`: three nodes and a router in this process on loopback, fed the realistic
//! replay with injected incidents, and a live view of what Sentinel sees.

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sentinel_config::LogFormat;
use sentinel_core::incident::{Change, IncidentStatus, NotificationKind};
use sentinel_core::Anomaly;
use sentinel_local::cluster::{Layout, LocalCluster, LocalRouter};
use sentinel_local::replay::{Incident, ReplayConfig, ReplayError};
use sentinel_local::scoreboard::{incident_line, incident_table, Scoreboard};
use sentinel_router::kafka::KafkaSection;
use tokio::sync::watch;

use crate::feed::{
    replay_from, send_all, start_ending_now, Pace, Sender, Source, Tally, Target, Timed,
};

/// Prints a line; a closed stdout (`sentinel dev | head`) loses the output, not the
/// cluster.
macro_rules! out {
    () => {
        out!("")
    };
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints without a line end (the status line), likewise.
macro_rules! out_partial {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// Nodes of the local cluster.
const NODES: usize = 3;
/// Replicas of each shard.
const REPLICAS: u32 = 3;
/// How long the view waits for the router's answer before trying again next tick.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the view asks for incidents and anomalies and redraws the status line.
const TICK: Duration = Duration::from_secs(1);
/// The file of the data directory that says up to which event time earlier runs replayed.
const REPLAYED_UNTIL: &str = "replayed-until";
/// Without a terminal, a status line is printed this often while the replay runs.
const PLAIN_STATUS_EVERY: u32 = 5;

/// Options of `sentinel dev`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sentinel dev
  sentinel dev --data-dir ./sentinel-data          # keep the state for the next run
  sentinel dev --speed 60 --seed 7                 # a faster replay of other traffic
  sentinel dev --kafka 127.0.0.1:9092              # ingest through Kafka (llm.telemetry, llm-telemetry)
  sentinel dev --kafka 127.0.0.1:9092 --topic app.calls --no-replay   # only your own traffic

While it runs, another terminal can ask the cluster:
  sentinel anomalies --endpoint http://127.0.0.1:7500
  sentinel cluster status --endpoint http://127.0.0.1:7500
  curl 'http://127.0.0.1:8080/api/v1/anomalies?hours=1'")]
pub struct DevArgs {
    /// Keep the cluster's data (RocksDB of each node) and log here between runs [default:
    /// a temporary directory removed on exit].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Ingest through this Kafka cluster (bootstrap brokers) instead of HTTP: the router
    /// consumes the topics (the standalone router's defaults, `llm.telemetry` and
    /// `llm-telemetry`, unless `--topic` is given) and the feed produces to the first.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// A topic the router consumes with `--kafka` (repeat it for several), instead of the
    /// default topics.
    #[arg(long = "topic", value_name = "TOPIC", requires = "kafka")]
    topics: Vec<String>,
    /// Run the cluster without the replay, for your own traffic (as `--rate 0` does).
    #[arg(long)]
    no_replay: bool,
    /// The router's REST address (ingestion, queries, `/metrics`).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    http: String,
    /// The router's gRPC address (what `sentinel anomalies` and friends talk to).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7500")]
    grpc: String,
    /// gRPC port of node 0; node i listens on this port + i.
    #[arg(long, value_name = "PORT", default_value_t = 7400)]
    node_port: u16,
    /// Metrics and health port of node 0; node i listens on this port + i.
    #[arg(long, value_name = "PORT", default_value_t = 9400)]
    metrics_port: u16,
    /// Shards of a new cluster (an existing data directory keeps its own).
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// How many times faster than the clock event time runs (30 minutes of traffic take
    /// 2 minutes at 15).
    #[arg(long, default_value_t = 15.0)]
    speed: f64,
    /// Mean request rate of the replayed traffic, events per second of event time (0: no
    /// replay).
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Event time to replay, seconds (the five incidents need about 25 minutes; a shorter
    /// replay is clean traffic without them).
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Seed of the replay (traffic and incident placement).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Log level of the cluster's log file (`<data dir>/sentinel.log`).
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Runs the local cluster until `stop` resolves (Ctrl-C).
pub async fn run(args: DevArgs, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.speed > 0.0 && args.duration > 0.0 && args.rate >= 0.0,
        "--speed and --duration must be above 0, --rate at least 0"
    );
    let temporary = match &args.data_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().context("creating a temporary data directory")?),
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| temporary.as_ref().map(|t| t.path().to_owned()))
        .context("no data directory")?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let log = data_dir.join("sentinel.log");
    crate::init_logging(LogFormat::Text, &args.log_level, Some(&log))?;

    tokio::pin!(stop);
    let (cluster, router) = tokio::select! {
        started = start(&args, &data_dir, &log) => started?,
        _ = &mut stop => {
            say("interrupted while starting".to_owned());
            return Ok(());
        }
    };

    let start_ms = replay_start(&data_dir, args.duration);
    let feed = match args.replaying() {
        true => Some(open_replay(&args, start_ms)?),
        false => None,
    };
    let target = match &args.kafka {
        Some(brokers) => Target::Kafka {
            brokers: brokers.clone(),
            topic: args.kafka_topics()[0].clone(),
        },
        None => Target::Http {
            url: format!("http://{}", router.http),
            api_key: None,
        },
    };
    let sender = Sender::new(&target)?;
    let http = reqwest::Client::builder()
        .timeout(QUERY_TIMEOUT)
        .build()
        .context("creating the HTTP client")?;
    let urls = Urls::new(&router.http.to_string());
    let known = fetch(&http, &urls)
        .await
        .context("asking the router for incidents and anomalies")?;

    let (events, incidents, skipped) =
        feed.unwrap_or_else(|| (Box::new(std::iter::empty()), Vec::new(), None));
    print_banner(
        &args, &cluster, &router, &log, start_ms, &incidents, skipped,
    );
    let mut view = View::new(incidents, known, args.replaying().then_some(args.speed));

    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop_feed, feed_stopped) = watch::channel(false);
    let feed_started = Instant::now();
    let mut feed = tokio::spawn(send_all(events, sender, tally.clone(), feed_stopped));
    let mut ticks = tokio::time::interval(TICK);
    let mut feeding = args.replaying();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = &mut feed, if feeding => {
                feeding = false;
                view.replay_done(&tally.lock().expect("tally lock"));
            }
            _ = ticks.tick() => {
                match fetch(&http, &urls).await {
                    Ok(seen) => view.show(seen),
                    Err(e) => tracing::warn!(error = %e, "asking the router for incidents"),
                }
                view.status(&tally.lock().expect("tally lock"), feeding);
            }
        }
    }

    view.clear_status();
    say("stopping: the feed, then the router, then the nodes".to_owned());
    let _ = stop_feed.send(true);
    if feeding {
        let _ = feed.await;
    }
    if args.replaying() {
        let replayed_ms = (feed_started.elapsed().as_secs_f64() * args.speed * 1e3)
            .min(args.duration * 1e3) as i64;
        remember_replayed_until(&data_dir, start_ms + replayed_ms);
    }
    if let Ok(seen) = fetch(&http, &urls).await {
        view.show(seen);
    }
    view.summary(&tally.lock().expect("tally lock"));
    router.stop().await.context("stopping the router")?;
    cluster.stop().await;
    match &args.data_dir {
        Some(dir) => say(format!(
            "stopped cleanly; the state is kept in {}",
            dir.display()
        )),
        None => say("stopped cleanly".to_owned()),
    }
    Ok(())
}

/// Starts the nodes and the router, after checking that their ports are free.
async fn start(
    args: &DevArgs,
    data_dir: &Path,
    log: &Path,
) -> anyhow::Result<(LocalCluster, LocalRouter)> {
    let node_ports = (0..NODES as u16).flat_map(|i| [args.node_port + i, args.metrics_port + i]);
    let listeners: Vec<String> = node_ports
        .map(|port| format!("127.0.0.1:{port}"))
        .chain([args.http.clone(), args.grpc.clone()])
        .collect();
    for address in &listeners {
        std::net::TcpListener::bind(address).with_context(|| {
            format!("cannot listen on {address} (another `sentinel dev`? move it with the port options)")
        })?;
    }
    say(format!(
        "starting {NODES} nodes ({} shards, {REPLICAS} replicas each) in {}",
        args.shards,
        data_dir.display()
    ));
    let layout = Layout {
        data_dir: Some(data_dir.to_owned()),
        grpc_port: Some(args.node_port),
        http_port: Some(args.metrics_port),
    };
    let cluster = LocalCluster::start_in(layout, NODES, args.shards, REPLICAS)
        .await
        .with_context(|| format!("starting the nodes (their log: {})", log.display()))?;
    let router_env = args.kafka.iter().flat_map(|brokers| {
        [
            ("SENTINEL_KAFKA__BROKERS".to_owned(), brokers.clone()),
            (
                "SENTINEL_KAFKA__TOPICS".to_owned(),
                format!("[{}]", args.kafka_topics().join(", ")),
            ),
            (
                "SENTINEL_KAFKA__GROUP_ID".to_owned(),
                "sentinel-dev".to_owned(),
            ),
        ]
    });
    let router = cluster
        .start_router(Some(args.http.clone()), Some(args.grpc.clone()), router_env)
        .await
        .context("starting the router")?;
    Ok((cluster, router))
}

impl DevArgs {
    /// Whether the replay feeds the cluster.
    fn replaying(&self) -> bool {
        !self.no_replay && self.rate > 0.0
    }

    /// The topics the router consumes with `--kafka`: `--topic`, or the router's defaults.
    fn kafka_topics(&self) -> Vec<String> {
        match self.topics.is_empty() {
            true => KafkaSection::default().topics,
            false => self.topics.clone(),
        }
    }
}

/// The replay's events, its injected incidents, and why it has none when it is too short.
type Feed = (
    Box<dyn Iterator<Item = Timed> + Send>,
    Vec<Incident>,
    Option<String>,
);

/// The replay's events and injected incidents. A run too short for the incidents replays
/// clean traffic instead; the reason is returned with it.
fn open_replay(args: &DevArgs, start_ms: i64) -> anyhow::Result<Feed> {
    let replay = replay_from(
        ReplayConfig {
            seed: args.seed,
            duration_s: args.duration,
            base_rate_per_s: args.rate,
            ..ReplayConfig::default()
        },
        start_ms,
    )?;
    let pace = Pace::Speed(args.speed);
    match Source::Replay(replay.clone()).open(pace) {
        Ok((events, incidents)) => Ok((events, incidents, None)),
        Err(e)
            if matches!(
                e.downcast_ref::<ReplayError>(),
                Some(ReplayError::WarmupNotReached { .. } | ReplayError::IncidentsDoNotFit { .. })
            ) =>
        {
            let clean = ReplayConfig {
                incidents: false,
                ..replay
            };
            let (events, _) = Source::Replay(clean).open(pace)?;
            Ok((events, Vec::new(), Some(e.root_cause().to_string())))
        }
        Err(e) => Err(e),
    }
}

/// Where this run's replay starts in event time: so that it ends now, or, when an earlier
/// run on this data directory replayed past that, where the earlier run stopped (event
/// time then runs ahead of the clock, but the shards see it in order).
fn replay_start(data_dir: &Path, duration_s: f64) -> i64 {
    let ends_now = start_ending_now(duration_s);
    std::fs::read_to_string(data_dir.join(REPLAYED_UNTIL))
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .map_or(ends_now, |until| until.max(ends_now))
}

/// Records the event time this run replayed up to, for the next run on the directory.
fn remember_replayed_until(data_dir: &Path, until_ms: i64) {
    let path = data_dir.join(REPLAYED_UNTIL);
    if let Err(e) = std::fs::write(&path, until_ms.to_string()) {
        say(format!("could not write {}: {e}", path.display()));
    }
}

/// The router's query URLs the view polls.
struct Urls {
    incidents: String,
    anomalies: String,
}

impl Urls {
    fn new(http: &str) -> Urls {
        let query = "hours=24&limit=1000&consistency=stale";
        Urls {
            incidents: format!("http://{http}/api/v1/incidents?{query}"),
            anomalies: format!("http://{http}/api/v1/anomalies?{query}"),
        }
    }
}

/// What the router knows: incidents (oldest opening first) and anomalies.
struct Seen {
    incidents: Vec<sentinel_core::Incident>,
    anomalies: Vec<Anomaly>,
}

/// One list of the router's answer at `url`, under `field`.
async fn fetch_list<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
    field: &str,
) -> anyhow::Result<Vec<T>> {
    let response = http.get(url).send().await?.error_for_status()?;
    let mut answer: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
    Ok(serde_json::from_value(answer[field].take())?)
}

/// The router's incidents and anomalies.
async fn fetch(http: &reqwest::Client, urls: &Urls) -> anyhow::Result<Seen> {
    let mut incidents: Vec<sentinel_core::Incident> =
        fetch_list(http, &urls.incidents, "incidents").await?;
    incidents
        .sort_by(|a, b| (a.opened_at_ms, &a.incident_id).cmp(&(b.opened_at_ms, &b.incident_id)));
    let anomalies = fetch_list(http, &urls.anomalies, "anomalies").await?;
    Ok(Seen {
        incidents,
        anomalies,
    })
}

/// The changes that take an incident from what the view last showed (`shown`: severity
/// and status) to `now`.
fn changes_since(
    shown: Option<(sentinel_core::Severity, IncidentStatus)>,
    now: &sentinel_core::Incident,
) -> Vec<NotificationKind> {
    let mut kinds = Vec::new();
    let open_shown = match shown {
        None => {
            kinds.push(NotificationKind::Opened);
            None
        }
        Some((severity, IncidentStatus::Open)) => Some(severity),
        Some((_, IncidentStatus::Resolved)) => return kinds,
    };
    if open_shown.is_some_and(|s| now.severity > s) && now.status == IncidentStatus::Open {
        kinds.push(NotificationKind::Escalated);
    }
    if now.status == IncidentStatus::Resolved {
        kinds.push(NotificationKind::Resolved);
    }
    kinds
}

fn say(line: String) {
    out!("{line}");
}

fn print_banner(
    args: &DevArgs,
    cluster: &LocalCluster,
    router: &LocalRouter,
    log: &Path,
    start_ms: i64,
    incidents: &[Incident],
    skipped: Option<String>,
) {
    let (http, grpc) = (&router.http, &router.grpc);
    let node_metrics: Vec<String> = cluster
        .http_addresses
        .iter()
        .map(|a| format!("http://{a}/metrics"))
        .collect();
    out!();
    out!("Sentinel is running: {NODES} nodes and a router on this machine.");
    out!("  REST API     http://{http}/api/v1/   (OpenAPI: http://{http}/api/v1/openapi.json)");
    out!("  gRPC API     http://{grpc}   (sentinel anomalies --endpoint http://{grpc})");
    out!(
        "  metrics      http://{http}/metrics (router), {}",
        node_metrics.join(", ")
    );
    out!("  node gRPC    {}", cluster.addresses.join(", "));
    out!("  log          {}", log.display());
    let topics = args.kafka_topics();
    match &args.kafka {
        Some(brokers) => out!(
            "  ingestion    Kafka {brokers}, topics {} (consumed by the router); POST http://{http}/api/v1/events",
            topics.join(", ")
        ),
        None => out!("  ingestion    POST http://{http}/api/v1/events"),
    }
    if !args.replaying() {
        out!("  feed         none (--no-replay): the cluster sees only the events you send");
        out!();
        out!("Press Ctrl-C to stop. Incidents as they open, escalate and resolve:");
        out!();
        return;
    }
    let through = match &args.kafka {
        Some(_) => format!("Kafka topic {}", topics[0]),
        None => "HTTP".to_owned(),
    };
    out!(
        "  feed         {:.0} min of realistic LLM traffic at {}x speed through {through}",
        args.duration / 60.0,
        args.speed
    );
    let ahead_ms = start_ms + (args.duration * 1e3) as i64 - chrono::Utc::now().timestamp_millis();
    if ahead_ms > 0 {
        out!(
            "               (continuing after the previous run's traffic: event time runs up to {:.0} min ahead of the clock)",
            ahead_ms as f64 / 60_000.0
        );
    }
    out!();
    if let Some(reason) = skipped {
        out!("No injected incidents, the replay is too short for them ({reason}): a longer");
        out!("--duration (1800 s at the default --rate) makes room for all five.");
        out!();
    }
    if !incidents.is_empty() {
        out!("Injected incidents (what Sentinel should catch):");
    }
    for incident in incidents {
        let due_s = (incident.start_ms - start_ms) as f64 / 1000.0 / args.speed;
        out!(
            "  incident {} {:<13} {:<36} in ~{:.0} s: {}",
            incident.id,
            format!("{:?}", incident.kind),
            format!("{}/{}", incident.service, incident.model),
            due_s.max(0.0),
            incident.description,
        );
    }
    out!();
    out!("Press Ctrl-C to stop. Incidents as they open, escalate and resolve (event time, what");
    out!("happened, severity, type, service/model, share of calls affected, [injected incident],");
    out!("signals; * marks a change no notification was sent for):");
    out!();
}

/// What the terminal shows: incidents as they change, and a status line.
struct View {
    scoreboard: Scoreboard,
    /// Anomalies counted so far, by id.
    seen: HashSet<String>,
    /// Incidents shown so far: their severity and status as last shown.
    shown: HashMap<String, (sentinel_core::Severity, IncidentStatus)>,
    /// Incidents that were there before this run.
    earlier: HashSet<String>,
    /// The replay's speed; `None` without a replay.
    speed: Option<f64>,
    started: Instant,
    terminal: bool,
    status_shown: bool,
    ticks: u32,
    last_sent: (Instant, u64),
}

impl View {
    fn new(incidents: Vec<Incident>, known: Seen, speed: Option<f64>) -> View {
        View {
            scoreboard: Scoreboard::new(&incidents),
            seen: known.anomalies.into_iter().map(|a| a.alert_id).collect(),
            shown: HashMap::new(),
            earlier: known.incidents.into_iter().map(|i| i.incident_id).collect(),
            speed,
            started: Instant::now(),
            terminal: std::io::stdout().is_terminal(),
            status_shown: false,
            ticks: 0,
            last_sent: (Instant::now(), 0),
        }
    }

    /// Prints each change of an incident since the last look, and counts new anomalies.
    fn show(&mut self, seen: Seen) {
        for anomaly in seen.anomalies {
            if self.seen.insert(anomaly.alert_id.clone()) {
                self.scoreboard.record(anomaly);
            }
        }
        for incident in seen.incidents {
            if self.earlier.contains(&incident.incident_id) {
                continue;
            }
            let shown = self.shown.get(&incident.incident_id).copied();
            for kind in changes_since(shown, &incident) {
                let change = Change {
                    kind,
                    notify: incident.silenced_by.is_none(),
                    incident: incident.clone(),
                };
                self.clear_status();
                let injected = self.scoreboard.record_incident(&change);
                out!("{}", incident_line(&change, injected));
            }
            self.shown.insert(
                incident.incident_id.clone(),
                (incident.severity, incident.status),
            );
        }
    }

    /// Redraws the status line (a terminal) or prints one now and then (a pipe).
    fn status(&mut self, tally: &Tally, feeding: bool) {
        self.ticks += 1;
        let now = Instant::now();
        let rate = (tally.sent - self.last_sent.1) as f64
            / now.duration_since(self.last_sent.0).as_secs_f64().max(1e-3);
        self.last_sent = (now, tally.sent);
        let replayed = match (self.speed, feeding) {
            (Some(speed), true) => format!(
                "replay at +{:.0} min",
                self.started.elapsed().as_secs_f64() * speed / 60.0
            ),
            (Some(_), false) => "replay done".to_owned(),
            (None, _) => "no replay".to_owned(),
        };
        let line = format!(
            "events {} ({:.0}/s) | acknowledged {} | rejected {} | failed {} | incidents {} | anomalies {} | {replayed}",
            tally.sent,
            rate,
            tally.acknowledged,
            tally.rejected,
            tally.failed,
            self.shown.len(),
            self.seen_this_run(),
        );
        if self.terminal {
            out_partial!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
            self.status_shown = true;
        } else if feeding && self.ticks % PLAIN_STATUS_EVERY == 0 {
            out!("{line}");
        }
    }

    fn seen_this_run(&self) -> usize {
        self.scoreboard
            .incidents
            .iter()
            .map(|o| o.alerts)
            .sum::<usize>()
            + self.scoreboard.false_alerts.len()
    }

    /// Removes the status line so other output starts on a clean line.
    fn clear_status(&mut self) {
        if self.status_shown {
            out_partial!("\r\x1b[2K");
            let _ = std::io::stdout().flush();
            self.status_shown = false;
        }
    }

    /// Says the replay ended, with what it caught so far.
    fn replay_done(&mut self, tally: &Tally) {
        self.clear_status();
        out!();
        out!(
            "replay finished: {} events sent; the cluster keeps serving until Ctrl-C",
            tally.sent
        );
        out_partial!("{}", incident_table(&self.scoreboard.incidents));
        out!();
    }

    /// The closing summary: incidents caught, traffic sent, reasons for refusals.
    fn summary(&self, tally: &Tally) {
        out!();
        out_partial!("{}", incident_table(&self.scoreboard.incidents));
        out!(
            "clean traffic: {} incidents, {} anomalies; events sent {}, acknowledged {} ({} duplicates), rejected {}, failed {}",
            self.scoreboard.false_incidents.len(),
            self.scoreboard.false_alerts.len(),
            tally.sent,
            tally.acknowledged,
            tally.duplicates,
            tally.rejected,
            tally.failed
        );
        for line in tally.reason_lines() {
            out!("{line}");
        }
    }
}
