//! `sentinel produce` as a user runs it against a keyed `sentinel router` in front of a
//! real node: JSONL and CSV files with bad rows, the summary's counts and reasons, what
//! reached the baselines, resending, the replay, and exit statuses.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sentinel_testkit::process::{event_json, Cluster, RouterProcess};
use sentinel_testkit::sha256_hex;

const PATIENCE: Duration = Duration::from_secs(90);
const KEY: &str = "produce-test-key";

/// `sentinel produce <args>` to `router` with the key in the environment.
fn produce(router: &RouterProcess, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("produce")
        .args(["--to", &router.url("")])
        .args(args)
        .env("SENTINEL_API_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .expect("sentinel produce runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The summary line's counts (`sent 32 in 0.2 s (160/s): acknowledged 30 (0 duplicates),
/// rejected 2, failed 0`): sent, acknowledged, duplicates, rejected, failed.
fn counts(output: &Output) -> [u64; 5] {
    let text = stdout(output);
    let summary = text
        .lines()
        .find(|l| l.starts_with("sent "))
        .unwrap_or_else(|| panic!("no summary: {output:?}"));
    let words: Vec<&str> = summary
        .split_whitespace()
        .map(|w| w.trim_matches(|c| "(),:".contains(c)))
        .collect();
    let number_at = |word: &str, offset: isize| -> u64 {
        words
            .iter()
            .position(|w| *w == word)
            .and_then(|i| words.get(i.checked_add_signed(offset)?))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count for {word}: {summary}"))
    };
    [
        number_at("sent", 1),
        number_at("acknowledged", 1),
        number_at("duplicates", -1),
        number_at("rejected", 1),
        number_at("failed", 1),
    ]
}

/// The events of `service`/`model` the router's baselines hold.
async fn baseline_events(router: &RouterProcess, service: &str, model: &str) -> u64 {
    let (_, answer) = router
        .get(&format!(
            "/api/v1/baselines?service={service}&model={model}"
        ))
        .await;
    answer["baselines"]
        .as_array()
        .and_then(|b| b.first())
        .and_then(|b| b["events"].as_u64())
        .unwrap_or(0)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write input file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_sends_files_and_the_replay_and_reports_what_was_acknowledged_and_rejected() {
    let keys = format!("[sha256:{}]", sha256_hex(KEY));
    let cluster = Cluster::start(1, 4, 1);
    cluster.wait_converged(PATIENCE).await;
    let mut router = cluster
        .router(&[("SENTINEL_AUTH__API_KEYS", keys.as_str())])
        .await;
    router.api_key = Some(KEY.into());
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = cluster.t0;

    // JSONL: 30 good events, one with a negative latency, one that is not JSON, a blank line.
    let mut lines: Vec<String> = (0..30)
        .map(|n| {
            event_json(
                "jsonl",
                "gpt-4o",
                t0 + n * 1000,
                700.0 + n as f64,
                &format!("j-{n}"),
            )
            .to_string()
        })
        .collect();
    lines.insert(
        10,
        event_json("jsonl", "gpt-4o", t0, -3.0, "j-negative").to_string(),
    );
    lines.insert(20, "{not json".to_owned());
    lines.insert(5, String::new());
    let jsonl = dir.path().join("events.jsonl");
    write(&jsonl, &(lines.join("\n") + "\n"));
    let output = produce(&router, &["--file", jsonl.to_str().unwrap(), "--rate", "0"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(counts(&output), [32, 30, 0, 2, 0], "{output:?}");
    let summary = stdout(&output);
    assert!(
        summary
            .lines()
            .any(|l| l.contains("latency_ms") && l.trim_start().starts_with('1')),
        "the negative latency is named by field:\n{summary}"
    );
    assert_eq!(baseline_events(&router, "jsonl", "gpt-4o").await, 30);

    // CSV at a set rate, sent twice: the second time every event is a duplicate and the
    // baselines count each once.
    let mut csv = String::from(
        "timestamp,service_name,model_name,latency_ms,prompt_tokens,completion_tokens,request_id\n",
    );
    for n in 0..20 {
        csv.push_str(&format!(
            "{},csv,claude-3-5-sonnet,{},300,90,{}\n",
            sentinel_testkit::rfc3339(t0 + n * 1000),
            900 + n,
            1000 + n
        ));
    }
    let file = dir.path().join("calls.csv");
    write(&file, &csv);
    let args = ["--file", file.to_str().unwrap(), "--rate", "200"];
    let first = produce(&router, &args);
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    assert_eq!(counts(&first), [20, 20, 0, 0, 0], "{first:?}");
    let again = produce(&router, &args);
    assert_eq!(again.status.code(), Some(0), "{again:?}");
    assert_eq!(counts(&again), [20, 20, 20, 0, 0], "{again:?}");
    assert_eq!(
        baseline_events(&router, "csv", "claude-3-5-sonnet").await,
        20
    );

    // The replay generator, clean traffic as fast as it is acknowledged.
    let replay = produce(
        &router,
        &[
            "--replay",
            "--clean",
            "--duration",
            "20",
            "--replay-rate",
            "20",
            "--rate",
            "0",
        ],
    );
    assert_eq!(replay.status.code(), Some(0), "{replay:?}");
    let [sent, acknowledged, _, rejected, failed] = counts(&replay);
    assert!(sent > 100, "{replay:?}");
    assert_eq!((acknowledged, rejected, failed), (sent, 0, 0), "{replay:?}");

    // A wrong key: nothing is acknowledged, the reason says why, the exit status is 1.
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["produce", "--to", &router.url(""), "--file"])
        .arg(&file)
        .env("SENTINEL_API_KEY", "wrong")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(counts(&output)[1], 0, "{output:?}");
    assert!(stdout(&output).contains("HTTP 401"), "{output:?}");

    // Unusable arguments and files: exit status 2 and one error line.
    for args in [
        &["--file", "/nonexistent/events.jsonl"][..],
        &["--file", "events.txt"],
        &["--replay", "--duration", "60"],
        &["--file", "a.csv", "--replay"],
    ] {
        let output = produce(&router, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}
