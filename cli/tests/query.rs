//! The query client (`sentinel anomalies|baselines|telemetry|cluster`) as a user runs it,
//! against a keyed `sentinel router` in front of three real `sentinel node` processes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use reqwest::StatusCode;
use sentinel_core::anomaly::now_ms;
use sentinel_testkit::process::{event_json, Cluster, RouterProcess};
use sentinel_testkit::{sha256_hex, wait_for};
use serde_json::{json, Value};

/// Generous bound for anything that waits on the cluster (2-core CI machines).
const PATIENCE: Duration = Duration::from_secs(90);
const SHARDS: u32 = 4;
const KEY: &str = "cli-test-key";

/// `sentinel <args>` against `endpoint` with the test's key; its output.
fn sentinel(endpoint: &str, key: Option<&str>, args: &[&str]) -> Output {
    command(endpoint, key, args)
        .output()
        .expect("sentinel runs")
}

/// The command line of `sentinel <args>`, with the endpoint and key given by environment.
fn command(endpoint: &str, key: Option<&str>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    command
        .args(args)
        .env("SENTINEL_ENDPOINT", endpoint)
        .env_remove("SENTINEL_API_KEY")
        .stdin(Stdio::null());
    if let Some(key) = key {
        command.env("SENTINEL_API_KEY", key);
    }
    command
}

/// Stdout of a run that must succeed.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "{:?}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Stdout of a successful run, as JSON.
fn json(output: Output) -> Value {
    let text = ok(output);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The exit status and stderr of a run that must fail, with one line on stderr.
fn failed(output: Output) -> (i32, String) {
    let stderr = String::from_utf8(output.stderr).expect("UTF-8");
    assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    (output.status.code().expect("exited"), stderr)
}

/// Posts 40 ordinary calls of `service`/`model` starting at `t0`.
async fn post_baseline(router: &RouterProcess, service: &str, model: &str, t0: i64) {
    let events: Vec<Value> = (0..40)
        .map(|n| {
            let latency = 800.0 + ((n * 37) % 23) as f64 * 10.0;
            let id = format!("{service}-{model}-{n}");
            event_json(service, model, t0 + 1000 * n, latency, &id)
        })
        .collect();
    let (status, answer) = router.post_events(&Value::Array(events)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Posts a 40-second call of `service`/`model` at `t`: a latency spike.
async fn post_spike(router: &RouterProcess, service: &str, model: &str, t: i64) {
    let spike = event_json(
        service,
        model,
        t,
        40_000.0,
        &format!("{service}-{model}-spike"),
    );
    let (status, answer) = router.post_events(&spike).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_client_prints_tables_json_and_exit_statuses_scripts_can_use() {
    let keys = format!("[sha256:{}]", sha256_hex(KEY));
    let cluster = Cluster::start(3, SHARDS, 3);
    cluster.wait_converged(PATIENCE).await;
    let mut router = cluster
        .router(&[("SENTINEL_AUTH__API_KEYS", keys.as_str())])
        .await;
    router.api_key = Some(KEY.into());
    let endpoint = format!("http://{}", router.grpc);
    let run = |args: &[&str]| sentinel(&endpoint, Some(KEY), args);
    let t0 = cluster.t0;

    for (service, model) in [
        ("checkout", "gpt-4o"),
        ("billing", "gpt-4o"),
        ("billing", "gpt-4o-mini"),
    ] {
        post_baseline(&router, service, model, t0).await;
    }
    post_spike(&router, "checkout", "gpt-4o", t0 + 41_000).await;
    let is_spike = |a: &Value, service: &str| {
        a["anomaly_type"] == "latency_spike" && a["service_name"] == service
    };
    let listed = wait_for(PATIENCE, async || {
        let answer = json(run(&["anomalies", "--since", "2d", "--output", "json"]));
        answer["anomalies"]
            .as_array()?
            .iter()
            .any(|a| is_spike(a, "checkout"))
            .then_some(answer)
    })
    .await
    .expect("the spike among the anomalies");
    assert_eq!(
        listed["count"].as_u64(),
        listed["anomalies"].as_array().map(|a| a.len() as u64)
    );
    let alert = listed["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| is_spike(a, "checkout"))
        .unwrap()
        .clone();
    for field in ["alert_id", "timestamp", "severity", "model", "confidence"] {
        assert!(!alert[field].is_null(), "{field} in {alert}");
    }
    assert_eq!(alert["details"]["metric"], "latency_ms");
    assert_eq!(
        alert["details"]["value"], 40_000,
        "whole numbers stay whole"
    );

    // The table: a header and the spike's row with its service, model and metric.
    let table = ok(run(&["anomalies", "--since", "2d"]));
    let header = table.lines().next().expect("a header");
    for column in [
        "TIME", "SEVERITY", "TYPE", "SERVICE", "MODEL", "METRIC", "VALUE", "BASELINE",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.contains("checkout") && l.contains("latency_spike"))
        .unwrap_or_else(|| panic!("the spike's row: {table}"));
    for cell in ["gpt-4o", "latency_ms", "40000"] {
        assert!(row.contains(cell), "{cell} in {row}");
    }
    assert_eq!(row.find("checkout"), header.find("SERVICE"), "{table}");

    // Filters: by severity at the router, by service and model in the client.
    let severity = alert["severity"].as_str().unwrap();
    let same = json(run(&[
        "anomalies",
        "--since",
        "2d",
        "--severity",
        severity,
        "-o",
        "json",
    ]));
    assert!(same["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["severity"] == severity));
    let mine = json(run(&[
        "anomalies",
        "--since",
        "2d",
        "--service",
        "checkout",
        "--model",
        "gpt-4o",
        "--limit",
        "1",
        "-o",
        "json",
    ]));
    assert_eq!(mine["count"], 1, "{mine}");
    assert_eq!(mine["anomalies"][0]["service_name"], "checkout");
    let none = json(run(&[
        "anomalies",
        "--since",
        "2d",
        "--service",
        "nothing",
        "-o",
        "json",
    ]));
    assert_eq!(none["count"], 0);
    assert_eq!(
        ok(run(&["anomalies", "--since", "2d", "--service", "nothing"])).trim(),
        "no anomalies"
    );

    // --follow prints what is there, then each new anomaly once, until SIGINT.
    let mut follower = command(
        &endpoint,
        Some(KEY),
        &[
            "anomalies",
            "--follow",
            "--since",
            "2d",
            "--service",
            "billing",
            "-o",
            "json",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("sentinel anomalies --follow starts");
    let (lines, received) = mpsc::channel();
    let stdout = follower.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut followed: Vec<Value> = Vec::new();
    let mut follow_until = |model: &str| loop {
        let line = received
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the {model} spike followed; got {followed:#?}"));
        let alert: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(alert["service_name"], "billing", "{alert}");
        followed.push(alert.clone());
        if is_spike(&alert, "billing") && alert["model"] == model {
            return;
        }
    };
    post_spike(&router, "billing", "gpt-4o", t0 + 41_000).await;
    follow_until("gpt-4o");
    post_spike(&router, "billing", "gpt-4o-mini", t0 + 41_000).await;
    follow_until("gpt-4o-mini");
    let ids: BTreeSet<&str> = followed
        .iter()
        .map(|a| a["alert_id"].as_str().expect("an alert id"))
        .collect();
    assert_eq!(
        ids.len(),
        followed.len(),
        "each anomaly once: {followed:#?}"
    );
    let interrupted = Command::new("kill")
        .args(["-INT", &follower.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let stopped = follower.wait_with_output().expect("the follower exits");
    assert!(stopped.status.success(), "{stopped:?}");

    // Baselines of one key.
    let baselines = json(run(&[
        "baselines",
        "--service",
        "checkout",
        "--model",
        "gpt-4o",
        "--consistency",
        "stale",
        "--output",
        "json",
    ]));
    assert_eq!(baselines["count"], 1, "{baselines}");
    assert_eq!(baselines["baselines"][0]["events"], 41);
    let table = ok(run(&[
        "baselines",
        "--service",
        "checkout",
        "--model",
        "gpt-4o",
    ]));
    assert!(
        table.contains("SAMPLES") && table.contains("latency_ms"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("checkout") && l.contains("41")),
        "{table}"
    );

    // Telemetry, a page at a time through the cursor.
    let key_args = [
        "telemetry",
        "--service",
        "checkout",
        "--model",
        "gpt-4o",
        "--since",
        "2d",
    ];
    let page = json(run(
        &[&key_args[..], &["--limit", "30", "-o", "json"]].concat()
    ));
    assert_eq!(page["count"], 30, "{page}");
    assert_eq!(page["records"][0]["event"]["event_id"], "checkout-gpt-4o-0");
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest = json(run(
        &[&key_args[..], &["--cursor", cursor, "-o", "json"]].concat()
    ));
    assert_eq!(rest["count"], 11, "{rest}");
    assert!(rest["next_cursor"].is_null());
    let table = run(&[&key_args[..], &["--limit", "5"]].concat());
    assert!(String::from_utf8_lossy(&table.stderr).contains("more records: --cursor "));
    let table = ok(table);
    assert_eq!(table.lines().count(), 6, "{table}");
    assert!(
        table.contains("LATENCY MS") && table.contains("checkout-gpt-4o-4"),
        "{table}"
    );

    // Baselines and anomalies, a page at a time through the cursor too.
    let first = json(run(&["baselines", "--limit", "2", "-o", "json"]));
    assert_eq!(first["count"], 2, "{first}");
    let cursor = first["next_cursor"].as_str().expect("a third key");
    let last = json(run(&[
        "baselines",
        "--limit",
        "2",
        "--cursor",
        cursor,
        "-o",
        "json",
    ]));
    assert_eq!(last["count"], 1, "{last}");
    assert_eq!(last["baselines"][0]["service_name"], "checkout");
    assert!(last["next_cursor"].is_null());
    let table = run(&["baselines", "--limit", "1"]);
    assert!(String::from_utf8_lossy(&table.stderr).contains("more baselines: --cursor "));
    let newest = json(run(&[
        "anomalies",
        "--since",
        "2d",
        "--limit",
        "1",
        "-o",
        "json",
    ]));
    let cursor = newest["next_cursor"].as_str().expect("a second anomaly");
    let next = json(run(&[
        "anomalies",
        "--since",
        "2d",
        "--limit",
        "1",
        "--cursor",
        cursor,
        "-o",
        "json",
    ]));
    assert_eq!(next["count"], 1, "{next}");
    assert_ne!(
        next["anomalies"][0]["alert_id"],
        newest["anomalies"][0]["alert_id"]
    );

    // The cluster: three nodes, every shard with a leader.
    let status = json(run(&["cluster", "status", "--output", "json"]));
    assert_eq!(
        status["nodes"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let shards = status["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), SHARDS as usize);
    assert!(shards.iter().all(|s| s["leader"].is_u64()), "{status}");
    let table = ok(run(&["cluster", "status"]));
    for node in status["nodes"].as_array().unwrap() {
        let address = node["address"].as_str().unwrap();
        assert!(
            table
                .lines()
                .any(|l| l.contains(address) && l.contains("active")),
            "{table}"
        );
    }
    for shard in shards {
        let prefix = format!("{}  ", shard["shard"]);
        let line = table
            .lines()
            .skip_while(|l| !l.starts_with("SHARD"))
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("shard {} in {table}", shard["shard"]));
        let leader = line.split_whitespace().nth(1);
        assert_eq!(leader, Some(shard["leader"].to_string().as_str()), "{line}");
        assert!(line.contains("lag "), "{line}");
    }

    // Exit statuses: 5 not found, 3 unreachable, 4 refused key, 2 bad arguments.
    let (code, stderr) = failed(run(&["cluster", "decommission", "99"]));
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("node 99 is not registered"), "{stderr}");
    let nowhere = format!("http://{}", sentinel_testkit::closed_port_addr());
    let (code, stderr) = failed(sentinel(&nowhere, Some(KEY), &["cluster", "status"]));
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("cannot reach the router"), "{stderr}");
    let (code, stderr) = failed(sentinel(&endpoint, None, &["anomalies"]));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("API key is required"), "{stderr}");
    let (code, stderr) = failed(sentinel(&endpoint, Some("wrong"), &["baselines"]));
    assert_eq!(code, 4, "{stderr}");
    let keyed = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args([
            "cluster",
            "status",
            "--endpoint",
            &router.grpc,
            "--api-key",
            KEY,
        ])
        .env_remove("SENTINEL_ENDPOINT")
        .env_remove("SENTINEL_API_KEY")
        .output()
        .expect("sentinel runs");
    assert!(ok(keyed).contains("metadata leader"));
    let (code, stderr) = failed(run(&["anomalies", "--since", "400d"]));
    assert_eq!(
        code, 2,
        "the router refuses a look-back over a year: {stderr}"
    );
    assert!(stderr.contains("hours"), "{stderr}");
    for bad in [
        &["anomalies", "--limit", "0"][..],
        &["anomalies", "--since", "yesterday"],
        &["telemetry", "--model", "gpt-4o"],
    ] {
        let output = run(bad);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {output:?}");
    }
    assert_eq!(
        run(&["anomalies", "--since", "2099-01-01T00:00:00Z"])
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_acknowledge_resolve_incidents_and_silence_them_from_the_command_line() {
    let keys = format!("[sha256:{}]", sha256_hex(KEY));
    let cluster = Cluster::start(1, 2, 1);
    cluster.wait_converged(PATIENCE).await;
    let mut router = cluster
        .router(&[("SENTINEL_AUTH__API_KEYS", keys.as_str())])
        .await;
    router.api_key = Some(KEY.into());
    let endpoint = format!("http://{}", router.grpc);
    let run = |args: &[&str]| sentinel(&endpoint, Some(KEY), args);
    let opened = router.open_incident("checkout", "gpt-4o", cluster.t0).await;
    let id = opened["incident_id"].as_str().unwrap().to_owned();

    let listed = json(run(&["incidents", "--status", "open", "--output", "json"]));
    assert_eq!(listed["count"], 1, "{listed}");
    assert_eq!(listed["incidents"][0]["incident_id"], id.as_str());
    let table = ok(run(&["incidents", "--service", "checkout", "--hours", "2"]));
    assert!(table.starts_with("OPENED"), "{table}");
    assert!(
        table.contains(&id) && table.contains("latency_spike"),
        "{table}"
    );
    let none = ok(run(&["incidents", "--status", "resolved"]));
    assert_eq!(none.trim(), "no incidents");
    let shown = ok(run(&["incidents", "show", &id]));
    assert!(shown.contains("status:       open"), "{shown}");
    assert!(
        shown.contains("EVIDENCE"),
        "the signals are listed: {shown}"
    );
    // The client's options may follow the subcommand.
    let shown = json(run(&["incidents", "show", &id, "--output", "json"]));
    assert_eq!(shown["incident_id"], id.as_str());

    // A comment holding a terminal escape is printed escaped.
    let acknowledged = ok(run(&[
        "incidents",
        "ack",
        &id,
        "--by",
        "alice",
        "--comment",
        "on it\u{1b}[2J",
    ]));
    assert!(!acknowledged.contains('\u{1b}'), "{acknowledged}");
    assert!(
        acknowledged.contains("alice at ") && acknowledged.contains("on it\\u{1b}[2J"),
        "{acknowledged}"
    );
    let resolved = json(run(&[
        "incidents",
        "resolve",
        &id,
        "--by",
        "alice",
        "--output",
        "json",
    ]));
    assert_eq!(
        (&resolved["status"], &resolved["resolution"]),
        (&json!("resolved"), &json!("manual")),
        "{resolved}"
    );
    let (code, stderr) = failed(run(&["incidents", "ack", &id, "--by", "alice"]));
    assert_eq!(code, 5, "no longer open: {stderr}");
    let (code, stderr) = failed(run(&["incidents", "show", "no-such-incident"]));
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(
        run(&["incidents", "ack", &id]).status.code(),
        Some(2),
        "--by is required"
    );
    let (code, stderr) = failed(sentinel(&endpoint, None, &["incidents"]));
    assert_eq!(code, 4, "{stderr}");

    let added = json(run(&[
        "silence",
        "add",
        "--service",
        "checkout",
        "--duration",
        "2h",
        "--by",
        "bob",
        "--comment",
        "deploy",
        "--output",
        "json",
    ]));
    let silence_id = added["silence_id"].as_str().expect("an id").to_owned();
    let span = added["ends_at_ms"].as_i64().unwrap() - added["starts_at_ms"].as_i64().unwrap();
    assert_eq!(span, 7_200_000, "{added}");
    assert_eq!(
        run(&[
            "silence",
            "add",
            "--duration",
            "2h",
            "--until",
            "2030-01-01T00:00:00Z",
            "--by",
            "b"
        ])
        .status
        .code(),
        Some(2),
        "--duration or --until, not both"
    );
    let (code, stderr) = failed(run(&[
        "silence",
        "add",
        "--until",
        "2020-01-01T00:00:00Z",
        "--type",
        "outage",
        "--by",
        "bob",
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("ends_at: must be after starts_at") && stderr.contains("anomaly_type: "),
        "{stderr}"
    );
    let active = ok(run(&["silence", "list", "--active"]));
    assert!(
        active.starts_with("ID") && active.contains(&silence_id),
        "{active}"
    );
    assert!(
        active.contains("deploy") && active.contains("yes"),
        "{active}"
    );
    let expired = json(run(&["silence", "expire", &silence_id, "--output", "json"]));
    assert!(
        expired["ends_at_ms"].as_i64() <= Some(now_ms()),
        "{expired}"
    );
    let active = json(run(&["silence", "list", "--active", "--output", "json"]));
    assert_eq!(active["count"], 0, "{active}");
    let all = json(run(&["silence", "list", "--output", "json"]));
    assert_eq!(all["count"], 1, "{all}");
    let (code, stderr) = failed(run(&["silence", "expire", "no-such-silence"]));
    assert_eq!(code, 5, "{stderr}");
}
