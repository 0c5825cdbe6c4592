//! One run: the network and processes set up, the workload and the nemesis running side
//! by side, every fault repaired, recovery measured, the final state read and checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sentinel_testkit::services::ALERT_EXCHANGE;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::alerts::{outbox_pending, Sinks};
use crate::checker::{
    check_alerts, check_events, check_reads, slice_for, Alerts, Events, Final, Reads,
};
use crate::history::History;
use crate::nemesis::Nemesis;
use crate::net::Network;
use crate::processes::{
    check_machine, node_member, router_member, Layout, Processes, BROKER, CLIENT, NODE_HTTP,
    ROUTER_GRPC, ROUTER_HTTP, TOPIC,
};
use crate::relay;
use crate::schedule::{plan, Schedule};
use crate::workload::{
    broker_ids, call_of, key_name, pages, producer, record_id, through_kafka, Api, Clients, Ledger,
    Outcome, LATENCY_CAP_MS, RESOLVE_AFTER_MS,
};

/// Partitions of the Kafka topic.
const PARTITIONS: i32 = 4;

/// What a run does.
pub struct Options {
    pub seed: u64,
    pub time_limit: Duration,
    pub schedule: Schedule,
    pub layout: Layout,
    /// Events per second, all clients together.
    pub rate: f64,
    /// Senders per API share (each waits for its answers, so more senders keep the rate
    /// up while answers are slow).
    pub clients: usize,
    pub keys: usize,
    /// Where the history, verdict, summary and logs go.
    pub out: PathBuf,
    /// The bound on every recovery step after the last repair.
    pub recovery_limit: Duration,
}

/// How the cluster came back after the last repair (seconds after it; none: not within the limit).
#[derive(Debug, Default, Serialize)]
pub struct Recovery {
    pub serving_s: Option<f64>,
    pub drained_s: Option<f64>,
    pub leadership_settled_s: Option<f64>,
    pub digests_equal_s: Option<f64>,
    /// Every shard's outbox empty (all notifications delivered and acknowledged).
    pub outbox_drained_s: Option<f64>,
}

impl Recovery {
    fn valid(&self) -> bool {
        [
            self.serving_s,
            self.drained_s,
            self.leadership_settled_s,
            self.digests_equal_s,
            self.outbox_drained_s,
        ]
        .iter()
        .all(Option::is_some)
    }
}

/// A run's verdict.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub valid: bool,
    pub schedule: String,
    pub seed: u64,
    pub seconds: f64,
    pub events: Events,
    pub reads: Reads,
    pub alerts: Alerts,
    pub recovery: Recovery,
    pub faults: BTreeMap<String, usize>,
    /// Processes that exited by themselves, and those whose log shows a panic.
    pub crashes: Vec<String>,
}

/// Runs `options` and writes the history, verdict and summary; the verdict.
pub fn run(options: &Options) -> Result<Verdict> {
    check_machine()?;
    std::fs::create_dir_all(&options.out)?;
    let prefix = format!("sj{}", std::process::id());
    let mut network = Network::create(&prefix)?;
    for n in 0..=options.layout.nodes {
        network.add(&node_member(n), 10 + n as u8)?;
    }
    for r in 0..options.layout.routers {
        network.add(&router_member(r), 100 + r as u8)?;
    }
    network.add("broker", 150)?;
    network.add(CLIENT, 200)?;
    let processes = Processes::new(&options.layout, &network, &options.out)?;
    sentinel_testkit::services::ensure_rabbitmq();
    let rabbitmq = sentinel_testkit::services::RABBITMQ_ADDR.parse()?;
    relay::host_side(&options.out.join("rabbitmq.sock"), rabbitmq)?;
    // Every socket the harness opens from here on is the clients'.
    network.enter(CLIENT)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let nemesis = Nemesis::new(network, processes, options.layout.nodes, options.seed);
    runtime.block_on(run_in_namespace(options, nemesis))
}

async fn run_in_namespace(options: &Options, mut nemesis: Nemesis) -> Result<Verdict> {
    let history = Arc::new(History::create(&options.out.join("history.jsonl"))?);
    let client_ip = nemesis.network.address(CLIENT);
    relay::namespace_side((client_ip, 5672).into(), options.out.join("rabbitmq.sock")).await?;
    let sinks = Sinks::start(
        client_ip.into(),
        &format!("amqp://guest:guest@{client_ip}:5672/%2f"),
        &format!("{ALERT_EXCHANGE}.{}", nemesis.network.prefix()),
    )
    .await;
    let mut node_env = sinks.node_env();
    node_env.extend([
        (
            "SENTINEL_DETECTION__INCIDENTS__LATENCY_CAP_MS".to_owned(),
            LATENCY_CAP_MS.to_string(),
        ),
        (
            "SENTINEL_DETECTION__INCIDENTS__RESOLVE_AFTER_MS".to_owned(),
            RESOLVE_AFTER_MS.to_string(),
        ),
    ]);
    nemesis.processes.add_node_env(&node_env);
    let router_urls = |port: u16| -> Vec<String> {
        (0..options.layout.routers)
            .map(|r| {
                format!(
                    "http://{}:{port}",
                    nemesis.network.address(&router_member(r))
                )
            })
            .collect()
    };
    let routers = router_urls(ROUTER_HTTP);
    let broker = format!("{}:{BROKER}", nemesis.network.address("broker"));
    let clients = Arc::new(Clients {
        routers: routers.clone(),
        grpc_routers: router_urls(ROUTER_GRPC),
        producer: producer(&broker)?,
        broker,
        keys: options.keys,
        seed: options.seed,
        ledger: Arc::new(Ledger::default()),
        history: history.clone(),
        stop: Arc::new(AtomicBool::new(false)),
    });
    setup(options, &mut nemesis, &clients).await.map_err(|e| {
        let logs = nemesis.processes.log_tails(15);
        e.context(format!("setting up the cluster\n{logs}"))
    })?;
    history.record("nemesis", json!({"type": "info", "f": "start", "schedule": options.schedule.to_string(), "seed": options.seed}));

    // The rate's shares: 40 % REST (two senders per unit), 30 % gRPC, 30 % Kafka.
    let k = options.clients;
    let senders = [
        (Api::Http, 2 * k, 0.4),
        (Api::Grpc, k, 0.3),
        (Api::Kafka, k, 0.3),
    ];
    let mut tasks: Vec<_> = senders
        .into_iter()
        .flat_map(|(api, count, part)| {
            let rate = options.rate * part / count as f64;
            let clients = clients.clone();
            (0..count).map(move |i| tokio::spawn(clients.clone().send(api, i, rate, TOPIC.into())))
        })
        .collect();
    tasks.push(tokio::spawn(clients.clone().read(Duration::from_secs(1))));

    let start = Instant::now();
    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    let mut crashes = Vec::new();
    // A step that overruns (a decommission waits for its shards to move) delays the rest
    // of the plan: each step keeps at least its planned distance from the one before,
    // so faults the plan spaces out (two wipes, say) are never applied back to back.
    let mut previous: Option<Previous> = None;
    for step in plan(
        options.schedule,
        options.seed,
        options.time_limit,
        options.layout.nodes,
    ) {
        let due = due(start, step.at, previous.as_ref());
        if due > start + options.time_limit {
            break;
        }
        tokio::time::sleep_until(due).await;
        let name = serde_json::to_value(step.fault)?["fault"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        history.record(
            "nemesis",
            json!({"type": "invoke", "f": name, "fault": step.fault}),
        );
        let done = nemesis.apply(step.fault).await;
        let value = done.unwrap_or_else(|e| json!({"error": format!("{e:#}")}));
        history.record(
            "nemesis",
            json!({"type": "info", "f": name, "value": value}),
        );
        *faults.entry(name).or_default() += 1;
        crashes.extend(exits(&mut nemesis, &history));
        previous = Some(Previous {
            at: step.at,
            due,
            finished: Instant::now(),
        });
    }
    tokio::time::sleep_until(start + options.time_limit).await;
    clients.stop.store(true, Ordering::Relaxed);
    for task in tasks.drain(..) {
        task.await??;
    }
    crashes.extend(exits(&mut nemesis, &history));
    for (fault, value) in nemesis.heal_all().await? {
        history.record(
            "nemesis",
            json!({"type": "info", "f": "final_repair", "fault": fault, "value": value}),
        );
    }
    let healed = Instant::now();
    let acknowledged = clients
        .ledger
        .lock()
        .events
        .values()
        .filter(|(_, o)| *o == Outcome::Acknowledged)
        .count();
    let recovery = recover(options, &nemesis, &clients, healed, acknowledged as u64).await;
    history.record(
        "nemesis",
        json!({"type": "info", "f": "recovered", "value": serde_json::to_value(&recovery)?}),
    );
    crashes.extend(exits(&mut nemesis, &history));

    let mut found = final_read(&routers, options.keys)
        .await
        .context("the final read")?;
    let members = (0..=options.layout.nodes)
        .map(|n| (node_member(n), false))
        .chain((0..options.layout.routers).map(|r| (router_member(r), true)));
    for (member, router) in members {
        let log =
            std::fs::read_to_string(options.out.join(format!("{member}.log"))).unwrap_or_default();
        if let Some(panicked) = panics(&log) {
            crashes.push(format!("{member}: {panicked}"));
        }
        if router {
            for (partition, ranges) in skipped_offsets(&log) {
                found.skipped.entry(partition).or_default().extend(ranges);
            }
        }
    }
    found.in_broker = match broker_ids(&clients.broker, TOPIC, PARTITIONS).await {
        Ok(ids) => ids,
        Err(e) => {
            // Unread, nothing is put down to the broker (positions unknown).
            let op = json!({"type": "info", "f": "broker_audit", "error": format!("{e:#}")});
            history.record("nemesis", op);
            let ledger = clients.ledger.lock();
            ledger
                .events
                .keys()
                .filter(|id| through_kafka(id))
                .map(|id| (id.clone(), None))
                .collect()
        }
    };
    let incidents = read_list(
        &routers,
        "/api/v1/incidents?hours=6&limit=1000",
        "incidents",
    )
    .await
    .context("reading the incidents")?;
    // Deliveries made just before the outboxes emptied may still be on their way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut alerts = check_alerts(
        &incidents,
        &sinks.deliveries(),
        &["webhook", "rabbitmq"],
        &found.calls,
    );
    alerts.outbox_pending = outbox_pending(&metrics_urls(&nemesis)).await;
    sinks.close().await;
    history.flush();
    let events = check_events(&clients.ledger.lock().events, &found);
    let text = std::fs::read_to_string(options.out.join("history.jsonl"))?;
    let reads = check_reads(&text);
    let valid =
        events.valid() && reads.valid() && alerts.valid() && recovery.valid() && crashes.is_empty();
    let verdict = Verdict {
        valid,
        schedule: options.schedule.to_string(),
        seed: options.seed,
        seconds: start.elapsed().as_secs_f64(),
        events,
        reads,
        alerts,
        recovery,
        faults,
        crashes,
    };
    std::fs::write(
        options.out.join("verdict.json"),
        serde_json::to_string_pretty(&verdict)?,
    )?;
    let summary = summary(&verdict, &text);
    std::fs::write(options.out.join("summary.txt"), &summary)?;
    print!("{summary}");
    if !verdict.valid {
        println!("process logs (ends):\n{}", nemesis.processes.log_tails(20));
    }
    Ok(verdict)
}

/// Starts the broker, the nodes and the routers and waits until the cluster serves.
async fn setup(options: &Options, nemesis: &mut Nemesis, clients: &Clients) -> Result<()> {
    let deadline = Instant::now() + options.recovery_limit;
    nemesis.processes.start_broker(&nemesis.network)?;
    let broker = clients.broker.clone();
    while tokio::net::TcpStream::connect(&broker).await.is_err() {
        if Instant::now() > deadline {
            bail!("the Kafka broker did not listen on {broker}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    clients.create_topic(TOPIC, PARTITIONS).await?;
    for n in 0..options.layout.nodes {
        nemesis.processes.start_node(n, &nemesis.network)?;
    }
    for r in 0..options.layout.routers {
        nemesis.processes.start_router(r, &nemesis.network)?;
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    loop {
        let mut ready = 0;
        for router in &clients.routers {
            let answer = http.get(format!("{router}/health/ready")).send().await;
            ready += usize::from(answer.is_ok_and(|a| a.status().is_success()));
        }
        let led = nemesis
            .status(false)
            .await
            .is_some_and(|s| !s.shards.is_empty() && s.shards.iter().all(|s| s.leader.is_some()));
        if ready == clients.routers.len() && led {
            return Ok(());
        }
        if let Some((member, status)) = nemesis.processes.exited().into_iter().next() {
            bail!("{member} exited during set-up: {status}");
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not form within {:?}",
                options.recovery_limit
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Processes that exited by themselves, recorded in the history; those not expected.
fn exits(nemesis: &mut Nemesis, history: &History) -> Vec<String> {
    let mut crashes = Vec::new();
    let exits = nemesis
        .exits()
        .unwrap_or_else(|e| vec![("nemesis".into(), format!("{e:#}"), false)]);
    for (member, status, expected) in exits {
        let op = json!({"type": "info", "f": "exited", "member": member, "status": status, "expected": expected});
        history.record("nemesis", op);
        if !expected {
            crashes.push(format!("{member}: {status}"));
        }
    }
    crashes
}

/// Waits, after the last repair, for the cluster to serve, the Kafka backlog to drain,
/// leadership to settle on the preferred nodes and every shard's replicas to agree.
async fn recover(
    options: &Options,
    nemesis: &Nemesis,
    clients: &Clients,
    healed: Instant,
    acknowledged: u64,
) -> Recovery {
    // Each step has the whole bound from when it starts, so one that never completes
    // (a Kafka backlog a broker will not hand out) does not hide the others.
    let bound = options.recovery_limit;
    let mut deadline = Instant::now() + bound;
    let since = |t: Instant| Some((t - healed).as_secs_f64());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client");
    let mut recovery = Recovery::default();
    // Serving: a linearizable read over every shard succeeds.
    while recovery.serving_s.is_none() && Instant::now() < deadline {
        let answer = http
            .get(format!(
                "{}/api/v1/telemetry?hours=1&limit=1",
                clients.routers[0]
            ))
            .send()
            .await;
        if answer.is_ok_and(|a| a.status().is_success()) {
            recovery.serving_s = since(Instant::now());
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    // Drained: the baselines count at least every acknowledged event and stop growing.
    let mut last = (0u64, Instant::now());
    deadline = Instant::now() + bound;
    while recovery.drained_s.is_none() && Instant::now() < deadline {
        let counted: u64 = match pages(
            &http,
            &clients.routers[0],
            "/api/v1/baselines?limit=1000",
            "baselines",
        )
        .await
        {
            Ok(baselines) => baselines.iter().filter_map(|b| b["events"].as_u64()).sum(),
            Err(_) => 0,
        };
        if counted != last.0 {
            last = (counted, Instant::now());
        } else if counted >= acknowledged && last.1.elapsed() >= Duration::from_secs(6) {
            recovery.drained_s = since(last.1);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Leadership: every shard led by its preferred node, with no change for 6 s.
    let mut stable: Option<(Leadership, Instant)> = None;
    deadline = Instant::now() + bound;
    while recovery.leadership_settled_s.is_none() && Instant::now() < deadline {
        if let Some(status) = nemesis.status(false).await {
            let preferred = status
                .shards
                .iter()
                .all(|s| s.leader.is_some() && s.leader == s.desired.first().copied());
            let leaders: Leadership = status.shards.iter().map(|s| (s.leader, s.term)).collect();
            match &stable {
                Some((seen, at)) if preferred && *seen == leaders => {
                    if at.elapsed() >= Duration::from_secs(6) {
                        recovery.leadership_settled_s = since(*at);
                    }
                }
                _ => stable = preferred.then(|| (leaders, Instant::now())),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Outboxes: every notification delivered and its delivery acknowledged.
    let urls = metrics_urls(nemesis);
    deadline = Instant::now() + bound;
    while recovery.outbox_drained_s.is_none() && Instant::now() < deadline {
        if outbox_pending(&urls).await == Some(0) {
            recovery.outbox_drained_s = since(Instant::now());
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // Digests: every shard's replicas, all voters, report one state digest.
    deadline = Instant::now() + bound;
    while recovery.digests_equal_s.is_none() && Instant::now() < deadline {
        if let Some(status) = nemesis.status(true).await {
            let size = status.replication_factor as usize;
            let agree = status.shards.iter().all(|s| {
                let digests: std::collections::BTreeSet<&str> =
                    s.replicas.iter().map(|r| r.digest.as_str()).collect();
                s.replicas.len() == size
                    && s.replicas.iter().all(|r| r.role == "voter")
                    && digests.len() == 1
                    && !digests.contains("")
            });
            if agree {
                recovery.digests_equal_s = since(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    recovery
}

/// The nemesis step applied last: when it was planned, when it was due, when it finished.
struct Previous {
    at: Duration,
    due: Instant,
    finished: Instant,
}

/// When a step planned `at` after `start` is due: its planned distance after the step
/// before was due, or, when that one ran past this, its planned distance after that
/// one finished (so an overrun delays the rest of the plan; a step's own time does not).
fn due(start: Instant, at: Duration, previous: Option<&Previous>) -> Instant {
    let Some(previous) = previous else {
        return start + at;
    };
    let gap = at.saturating_sub(previous.at);
    let on_plan = previous.due + gap;
    if previous.finished > on_plan {
        previous.finished + gap
    } else {
        on_plan
    }
}

/// Each shard's leader and term.
type Leadership = Vec<(Option<u64>, u64)>;

/// Every telemetry record and every key's baseline count, read through the routers.
async fn final_read(routers: &[String], keys: usize) -> Result<Final> {
    let records = read_list(routers, "/api/v1/telemetry?hours=6&limit=10000", "records").await?;
    let baselines = read_list(routers, "/api/v1/baselines?limit=1000", "baselines").await?;
    let index: BTreeMap<(String, String), usize> = (0..keys).map(|k| (key_name(k), k)).collect();
    let counts = baselines
        .iter()
        .filter_map(|b| {
            let name = (
                b["service_name"].as_str()?.to_owned(),
                b["model"].as_str()?.to_owned(),
            );
            Some((*index.get(&name)?, b["events"].as_u64()?))
        })
        .collect();
    Ok(Final {
        stored: records.iter().filter_map(record_id).collect(),
        baselines: counts,
        calls: records.iter().filter_map(call_of).collect(),
        in_broker: Default::default(),
        skipped: Default::default(),
    })
}

/// The offset ranges of each partition that a router's log (text format) says it read
/// past without receiving a message: `Kafka offsets skipped ... partition=P from=A to=B`.
fn skipped_offsets(log: &str) -> BTreeMap<i32, Vec<(i64, i64)>> {
    let mut skipped: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("Kafka offsets skipped")) {
        let field = |name: &str| -> Option<i64> {
            let start = line.find(&format!(" {name}="))? + name.len() + 2;
            let digits: String = line[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        if let (Some(partition), Some(from), Some(to)) =
            (field("partition"), field("from"), field("to"))
        {
            skipped
                .entry(partition as i32)
                .or_default()
                .push((from, to));
        }
    }
    skipped
}

/// The panics a process's log shows, how many and where the first was with its message:
/// a panicking task (a shard's Raft core, say) can leave its process running, so the exit
/// status does not tell.
fn panics(log: &str) -> Option<String> {
    const PANICKED: &str = " panicked at ";
    let mut lines = log.lines();
    let (mut count, mut first) = (0, None);
    while let Some(line) = lines.next() {
        if let Some(at) = line.find(PANICKED) {
            count += 1;
            if first.is_none() {
                let place = line[at + PANICKED.len()..].trim_end_matches(':');
                first = Some(format!("{place}: {}", lines.next().unwrap_or_default()));
            }
        }
    }
    first.map(|first| format!("{count} panics, the first at {first}"))
}

/// Every element of list `list` of the paged query `path`, asked of each router in turn
/// until one answers whole (six tries, 5 s apart).
async fn read_list(routers: &[String], path: &str, list: &str) -> Result<Vec<serde_json::Value>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let mut last = String::new();
    for attempt in 0..6 {
        match pages(&http, &routers[attempt % routers.len()], path, list).await {
            Ok(elements) => return Ok(elements),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    bail!("no router answered {path}: {last}")
}

/// The `/metrics` URL of every running node.
fn metrics_urls(nemesis: &Nemesis) -> Vec<String> {
    (0..=nemesis.nodes)
        .filter(|&n| nemesis.processes.node_running(n))
        .map(|n| {
            format!(
                "http://{}:{NODE_HTTP}/metrics",
                nemesis.network.address(&node_member(n))
            )
        })
        .collect()
}

/// The human summary of a verdict, with the history slice of the first anomaly.
fn summary(verdict: &Verdict, history: &str) -> String {
    let e = &verdict.events;
    let r = &verdict.reads;
    let a = &verdict.alerts;
    let seconds =
        |s: Option<f64>| s.map_or("not within the limit".to_owned(), |s| format!("{s:.1} s"));
    let mut out = format!(
        "schedule {} seed {}: {}\n\
         events: {} sent, {} acknowledged {}, {} unknown ({} of them applied), {} rejected\n\
         anomalies: {} lost, {} applied twice, {} invented, {} rejected yet applied, {} baseline mismatches \
         (and {} acknowledged by the broker but missing from its topic, {} in the topic but never delivered to a router)\n\
         reads: {} ok, {} failed retryably, {} failed otherwise, {} stale, {} invented\n\
         alerts: {} incidents, {} notifications, deliveries {}, {} repeats; anomalies: {} undelivered, {} conflicting, {} invented, {} without an applied call, {} left in outboxes\n\
         after the last repair: serving {}, Kafka drained {}, leadership settled {}, outboxes empty {}, digests equal {}\n\
         faults: {}\n",
        verdict.schedule,
        verdict.seed,
        if verdict.valid { "VALID" } else { "INVALID" },
        e.sent,
        e.acknowledged,
        serde_json::to_string(&e.acknowledged_via).unwrap_or_default(),
        e.unknown,
        e.unknown_applied,
        e.rejected,
        e.lost,
        e.applied_twice,
        e.invented,
        e.rejected_applied,
        e.baseline_mismatches,
        e.lost_by_broker,
        e.skipped_by_broker,
        r.ok,
        r.failed_retryable,
        r.failed_other,
        r.stale,
        r.invented,
        a.incidents,
        a.notifications,
        serde_json::to_string(&a.deliveries).unwrap_or_default(),
        a.repeats,
        a.undelivered,
        a.conflicting,
        a.invented,
        a.without_applied_call,
        a.outbox_pending.map_or("unknown".to_owned(), |n| n.to_string()),
        seconds(verdict.recovery.serving_s),
        seconds(verdict.recovery.drained_s),
        seconds(verdict.recovery.leadership_settled_s),
        seconds(verdict.recovery.outbox_drained_s),
        seconds(verdict.recovery.digests_equal_s),
        serde_json::to_string(&verdict.faults).unwrap_or_default(),
    );
    if !verdict.crashes.is_empty() {
        out += &format!(
            "processes that exited by themselves or panicked: {}\n",
            verdict.crashes.join("; ")
        );
    }
    for (anomaly, ids) in e.examples.iter().chain(&a.examples) {
        out += &format!("{anomaly}: {}\n", ids.join(", "));
    }
    // An example is an event id, maybe followed by where it was (` (partition …)`).
    if let Some(id) = ["lost", "applied_twice", "rejected_applied"]
        .iter()
        .find_map(|a| e.examples.get(a)?.first()?.split(' ').next())
    {
        out += &format!("history of {id} (its operations and the faults between them):\n");
        for line in slice_for(history, id) {
            out += &format!("  {line}\n");
        }
    }
    let lines: Vec<&str> = history.lines().collect();
    for &n in r.lines.iter().take(3) {
        out += &format!(
            "anomalous read, history line {n}: {}\n",
            lines.get(n - 1).unwrap_or(&"")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_names_the_first_lost_event_and_shows_its_history() {
        let mut events = Events {
            lost: 1,
            ..Events::default()
        };
        events.examples.insert("lost", vec!["http-0-7".into()]);
        let verdict = Verdict {
            valid: false,
            schedule: "smoke".into(),
            seed: 1,
            seconds: 1.0,
            events,
            reads: Reads::default(),
            alerts: Alerts::default(),
            recovery: Recovery::default(),
            faults: BTreeMap::new(),
            crashes: Vec::new(),
        };
        let history = "{\"process\":\"http-0\",\"type\":\"invoke\",\"ids\":[\"http-0-7\"]}\n";
        let text = summary(&verdict, history);
        assert!(
            text.contains("INVALID") && text.contains("1 lost"),
            "{text}"
        );
        assert!(
            text.contains("history of http-0-7") && text.contains("\"invoke\""),
            "{text}"
        );
    }

    #[test]
    fn a_step_keeps_its_distance_from_one_that_finished_late() {
        let start = Instant::now();
        let s = Duration::from_secs;
        let previous = |at, due, finished| Previous {
            at: s(at),
            due: start + s(due),
            finished: start + s(finished),
        };
        assert_eq!(due(start, s(10), None), start + s(10));
        // On time, or done within its gap: the plan holds.
        assert_eq!(
            due(start, s(20), Some(&previous(10, 10, 10))),
            start + s(20)
        );
        assert_eq!(
            due(start, s(20), Some(&previous(10, 10, 15))),
            start + s(20)
        );
        // The step at 10 s took until 100 s: the next, planned 10 s later, waits until 110 s.
        assert_eq!(
            due(start, s(20), Some(&previous(10, 10, 100))),
            start + s(110)
        );
        // ... and the one after keeps the delay.
        assert_eq!(
            due(start, s(30), Some(&previous(20, 110, 111))),
            start + s(120)
        );
        // A step planned together with the one before follows it at once.
        assert_eq!(
            due(start, s(10), Some(&previous(10, 10, 100))),
            start + s(100)
        );
    }

    #[test]
    fn panics_are_read_from_a_processs_log_with_the_first_place_and_message() {
        let log = "2026-12-07T19:44:34Z  INFO sentinel_node::elections: standing for election group=1\n\
                   \n\
                   thread 'tokio-rt-worker' (31006) panicked at openraft-0.9.25/src/raft_state/log_state_reader.rs:23:13:\n\
                   assertion failed: Some(log_id) <= self.committed()\n\
                   stack backtrace:\n\
                   thread 'tokio-rt-worker' (32271) panicked at node/src/host.rs:1:1:\n\
                   other\n";
        assert_eq!(
            panics(log).as_deref(),
            Some("2 panics, the first at openraft-0.9.25/src/raft_state/log_state_reader.rs:23:13: assertion failed: Some(log_id) <= self.committed()")
        );
        assert_eq!(
            panics("2026-12-07T19:44:34Z  INFO sentinel_node: started\n"),
            None
        );
    }

    #[test]
    fn skipped_offsets_are_read_from_a_routers_text_log() {
        let log = "2026-12-07T16:49:14Z  INFO sentinel_router::kafka::consumer: Kafka partitions assigned partitions=llm.telemetry/0\n\
                   2026-12-07T16:50:01Z  INFO sentinel_router::kafka::consumer: Kafka offsets skipped: the broker delivered no message at them topic=llm.telemetry partition=1 from=2943 to=2943\n\
                   2026-12-07T16:51:00Z  INFO sentinel_router::kafka::consumer: Kafka offsets skipped: the broker delivered no message at them topic=llm.telemetry partition=1 from=3000 to=3004\n";
        assert_eq!(
            skipped_offsets(log),
            BTreeMap::from([(1, vec![(2943, 2943), (3000, 3004)])])
        );
    }
}
