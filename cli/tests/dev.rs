//! `sentinel dev` as a newcomer runs it: a process that starts a local cluster, feeds it
//! the realistic replay, and raises anomalies for the injected incidents, which the query
//! client then finds; Ctrl-C (SIGINT) stops it cleanly. A short replay runs without the
//! incidents; with `--kafka` and no replay, it reads the topics the original SDKs write.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sentinel_testkit::free_port;
use sentinel_testkit::kafka;
use serde_json::Value;

/// Bound on anything the test waits for (a 2-core CI machine running other tests).
const PATIENCE: Duration = Duration::from_secs(240);
/// Replay speed: the first two incidents are due within about a minute.
const SPEED: &str = "30";

/// The ports of one `sentinel dev`.
struct Ports {
    http: u16,
    grpc: u16,
    node: u16,
    metrics: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            http: free_port(),
            grpc: free_port(),
            node: consecutive_free_ports(3),
            metrics: consecutive_free_ports(3),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }
}

/// The first of `n` consecutive free ports (node i of `sentinel dev` uses port + i).
fn consecutive_free_ports(n: u16) -> u16 {
    loop {
        let first = free_port();
        if (1..n).all(|i| free_port() == first + i) {
            return first;
        }
    }
}

/// A running `sentinel dev` and the lines it printed so far.
struct Dev {
    child: Child,
    data_dir: PathBuf,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Dev {
    fn start(data_dir: &Path, ports: &Ports, options: &[&str]) -> Dev {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--http", &format!("127.0.0.1:{}", ports.http)])
            .args(["--grpc", &format!("127.0.0.1:{}", ports.grpc)])
            .args(["--node-port", &ports.node.to_string()])
            .args(["--metrics-port", &ports.metrics.to_string()])
            .args(["--speed", SPEED, "--shards", "8"])
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sentinel dev starts");
        let stdout = child.stdout.take().expect("stdout");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            data_dir: data_dir.to_owned(),
            lines,
            output: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `done`, or the process ends, or `PATIENCE` passes.
    fn read_until(&mut self, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = done(&line);
                    self.output.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// What it printed.
    fn said(&self) -> String {
        self.output.join("\n")
    }

    /// What it printed, and Sentinel's own lines of its log with the log's last lines,
    /// for failure messages.
    fn report(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("sentinel.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let own: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.contains(" sentinel_"))
            .collect();
        format!(
            "{}\n--- Sentinel's lines of sentinel.log:\n{}\n--- its end:\n{}",
            self.said(),
            own[own.len().saturating_sub(60)..].join("\n"),
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for the exit; then reads the last lines.
    fn interrupt(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        let exit = loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                break exit;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sentinel dev did not stop after SIGINT:\n{}", self.report());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread sees end of file once the process is gone.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.output.push(line);
        }
        exit
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An injected incident as the banner announces it.
#[derive(Debug, Clone, PartialEq)]
struct Planned {
    id: String,
    kind: String,
    service: String,
    model: String,
}

/// The incidents of the banner's plan, from lines like
/// `  incident 1 LatencySpike  support-bot/llama-2-13b-chat  in ~41 s: …`.
fn planned_incidents(output: &[String]) -> Vec<Planned> {
    output
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let ["incident", id, kind, key, "in", ..] = words[..] else {
                return None;
            };
            let (service, model) = key.split_once('/')?;
            Some(Planned {
                id: id.to_owned(),
                kind: kind.to_owned(),
                service: service.to_owned(),
                model: model.to_owned(),
            })
        })
        .collect()
}

/// `sentinel incidents --output json` through the router's gRPC API.
fn incidents(ports: &Ports) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["incidents", "--output", "json", "--limit", "1000"])
        .args(["--endpoint", &ports.endpoint()])
        .env_remove("SENTINEL_API_KEY")
        .stdin(Stdio::null())
        .output()
        .expect("sentinel incidents runs");
    if !output.status.success() {
        return Vec::new();
    }
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON answer");
    answer["incidents"].as_array().cloned().unwrap_or_default()
}

/// Whether `incidents` hold one of `anomaly_type` on the injected incident's key.
fn opened(incidents: &[Value], incident: &Planned, anomaly_type: &str) -> bool {
    incidents.iter().any(|i| {
        i["service_name"] == incident.service.as_str()
            && i["model"] == incident.model.as_str()
            && i["anomaly_type"] == anomaly_type
    })
}

#[test]
fn sentinel_dev_raises_anomalies_for_the_injected_incidents_and_stops_cleanly_on_ctrl_c() {
    let data = tempfile::tempdir().expect("temp dir");
    let ports = Ports::new();
    let mut dev = Dev::start(data.path(), &ports, &[]);
    assert!(
        dev.read_until(|line| line.contains("Press Ctrl-C to stop")),
        "no banner:\n{}",
        dev.report()
    );
    let banner = dev.said();
    for url in [
        format!("http://127.0.0.1:{}/api/v1/", ports.http),
        ports.endpoint(),
        format!("http://127.0.0.1:{}/metrics", ports.metrics),
    ] {
        assert!(banner.contains(&url), "{url} not in the banner:\n{banner}");
    }
    let plan = planned_incidents(&dev.output);
    assert_eq!(plan.len(), 5, "{banner}");
    let spike = plan
        .iter()
        .find(|p| p.kind == "LatencySpike")
        .expect("spike");
    let burst = plan.iter().find(|p| p.kind == "ErrorBurst").expect("burst");

    // The query client finds an incident of each kind on its key.
    let deadline = Instant::now() + PATIENCE;
    let mut seen = Vec::new();
    while !(opened(&seen, spike, "latency_spike") && opened(&seen, burst, "error_rate_increase")) {
        assert!(
            Instant::now() < deadline,
            "incidents not caught; incidents: {seen:#?}\noutput:\n{}",
            dev.report()
        );
        std::thread::sleep(Duration::from_secs(2));
        seen = incidents(&ports);
    }

    // The live view tagged them with the incident they belong to.
    for incident in [spike, burst] {
        let tag = format!("[{} {}]", incident.id, incident.kind);
        assert!(
            dev.said().contains(&tag) || dev.read_until(|line| line.contains(&tag)),
            "{tag} not printed:\n{}",
            dev.report()
        );
    }

    let exit = dev.interrupt();
    let printed = dev.said();
    assert!(exit.success(), "{exit:?}\n{printed}");
    assert!(printed.contains("stopped cleanly"), "{printed}");
    // Each opened a Sentinel incident: the summary's `opened` and `to open` columns (the
    // point-anomaly columns after them may say `none` while a baseline is young).
    for incident in [spike, burst] {
        let key = format!("{}/{}", incident.service, incident.model);
        let row: Option<Vec<&str>> = printed
            .lines()
            .rev()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|words| {
                words
                    .iter()
                    .take(3)
                    .eq([&&*incident.id, &&*incident.kind, &&*key])
            });
        assert!(
            row.is_some_and(|words| words.len() > 4 && words[3] != "0" && words[4] != "MISSED"),
            "incident {} not reported as opened in the summary:\n{printed}",
            incident.id
        );
    }
}

#[test]
fn a_replay_too_short_for_the_incidents_runs_clean_traffic() {
    let data = tempfile::tempdir().expect("temp dir");
    let ports = Ports::new();
    let mut dev = Dev::start(data.path(), &ports, &["--duration", "120"]);
    assert!(
        dev.read_until(|line| line.contains("Press Ctrl-C to stop")),
        "no banner:\n{}",
        dev.report()
    );
    assert!(
        dev.said().contains("No injected incidents"),
        "{}",
        dev.report()
    );
    assert!(
        planned_incidents(&dev.output).is_empty(),
        "{}",
        dev.report()
    );
    assert!(
        dev.read_until(|line| line.starts_with("replay finished")),
        "the replay did not finish:\n{}",
        dev.report()
    );
    let exit = dev.interrupt();
    let printed = dev.said();
    assert!(exit.success(), "{exit:?}\n{printed}");
    let totals = printed
        .lines()
        .find(|line| line.starts_with("clean traffic:"))
        .unwrap_or_else(|| panic!("no summary:\n{printed}"));
    assert!(totals.contains("rejected 0, failed 0"), "{totals}");
    assert!(!totals.contains("acknowledged 0 "), "{totals}");
}

#[test]
fn with_kafka_and_no_replay_it_reads_the_topic_the_python_sdk_writes_to() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let kafka = runtime.block_on(async {
        let kafka = kafka::Broker::start().await;
        for topic in ["llm.telemetry", "llm-telemetry"] {
            kafka.create_topic(topic, 1).await.expect("topic created");
        }
        kafka
    });
    let data = tempfile::tempdir().expect("temp dir");
    let ports = Ports::new();
    let mut dev = Dev::start(
        data.path(),
        &ports,
        &["--kafka", &kafka.address, "--no-replay"],
    );
    assert!(
        dev.read_until(|line| line.contains("Press Ctrl-C to stop")),
        "no banner:\n{}",
        dev.report()
    );
    let banner = dev.said();
    assert!(
        banner.contains("topics llm.telemetry, llm-telemetry"),
        "{banner}"
    );
    assert!(banner.contains("none (--no-replay)"), "{banner}");

    // The nested shape the SDKs send, to the Python SDK's default topic.
    let event = serde_json::json!({
        "event_id": "5b0e6f8e-3f41-4b2a-9d3c-2f6f3c1d9a01",
        "timestamp": sentinel_testkit::rfc3339(sentinel_testkit::t0()),
        "service_name": "sdk-python",
        "model": "gpt-4o-mini",
        "prompt": {"text": "hello", "tokens": 12},
        "response": {"text": "hi", "tokens": 3, "finish_reason": "stop"},
        "latency_ms": 420.0,
        "cost_usd": 0.0001,
        "metadata": {"region": "eu-west-1"},
        "errors": []
    });
    let url = format!(
        "http://127.0.0.1:{}/api/v1/telemetry?service=sdk-python&model=gpt-4o-mini&hours=1",
        ports.http
    );
    let found = runtime.block_on(async {
        kafka::produce(
            &kafka.producer(),
            "llm-telemetry",
            0,
            "sdk-python/gpt-4o-mini",
            event.to_string().as_bytes(),
            &[],
        )
        .await;
        sentinel_testkit::wait_for(PATIENCE, async || {
            let answer: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
            (answer["count"] == 1).then_some(answer)
        })
        .await
    });
    assert!(
        found.is_some(),
        "the event on llm-telemetry was never read:\n{}\n{}",
        dev.report(),
        kafka.log()
    );
    assert!(dev.interrupt().success(), "{}", dev.said());
}
