//! `docs/migrating.md` against a real cluster: every request the guide shows is sent, in
//! order, to a router started with the original single-process Sentinel's environment
//! variables, and every answer must hold what the guide says it does.
//!
//! A request is an `http` block whose first line is `METHOD /path`, then header lines, a
//! blank line and the body; the `http` block after it that starts with `HTTP/1.1 <status>`
//! is its answer: the status, and a JSON body the real one must contain. An object holds
//! at least the keys shown, with matching values; a list holds the elements shown, in
//! order and no more; a string ending in `...` matches any string that starts with the
//! rest; numbers match to 0.1 %.

use std::time::Duration;

use reqwest::StatusCode;
use sentinel_testkit::process::{Cluster, RouterProcess};
use serde_json::Value;

/// The guide, relative to this crate.
const GUIDE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/migrating.md");

/// Bound on the cluster's start and on a query's wait for ingested events.
const PATIENCE: Duration = Duration::from_secs(90);

/// One documented request and the answer the guide promises.
#[derive(Debug)]
struct Example {
    line: usize,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    status: u16,
    answer: Value,
}

/// The `http` blocks of the guide: (line of the block, its lines).
fn http_blocks(text: &str) -> Vec<(usize, Vec<&str>)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, Vec<&str>)> = None;
    for (index, line) in text.lines().enumerate() {
        match &mut open {
            None if line.trim() == "```http" => open = Some((index + 1, Vec::new())),
            Some(_) if line.trim() == "```" => blocks.extend(open.take()),
            Some((_, lines)) => lines.push(line),
            None => {}
        }
    }
    blocks
}

/// Header lines, then the body after the first blank line.
fn split_message(lines: &[&str]) -> (Vec<(String, String)>, String) {
    let blank = lines
        .iter()
        .position(|l| l.trim().is_empty())
        .unwrap_or(lines.len());
    let headers = lines[..blank]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = lines.get(blank + 1..).unwrap_or_default().join("\n");
    (headers, body)
}

/// The guide's examples, in order.
fn examples() -> Vec<Example> {
    let text = std::fs::read_to_string(GUIDE).expect("docs/migrating.md is readable");
    let blocks = http_blocks(&text);
    let mut examples = Vec::new();
    let mut blocks = blocks.iter().peekable();
    while let Some((line, lines)) = blocks.next() {
        let (method, path) = lines[0]
            .split_once(' ')
            .unwrap_or_else(|| panic!("line {line}: `METHOD /path` expected"));
        assert!(
            !method.starts_with("HTTP/"),
            "line {line}: an answer without a request"
        );
        let (headers, body) = split_message(&lines[1..]);
        let (answer_line, answer) = blocks
            .next()
            .unwrap_or_else(|| panic!("line {line}: the request has no answer"));
        let status = answer[0]
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("line {answer_line}: `HTTP/1.1 <status>` expected"));
        let (_, answer_body) = split_message(&answer[1..]);
        let answer = serde_json::from_str(&answer_body)
            .unwrap_or_else(|e| panic!("line {answer_line}: the answer is not JSON: {e}"));
        examples.push(Example {
            line: *line,
            method: method.to_owned(),
            path: path.trim().to_owned(),
            headers,
            body,
            status,
            answer,
        });
    }
    examples
}

/// Where `actual` lacks what `expected` shows (see the module's rules), at `at`.
fn mismatch(expected: &Value, actual: &Value, at: &str) -> Option<String> {
    let differ = || {
        Some(format!(
            "{at}: the guide says {expected}, the router {actual}"
        ))
    };
    match (expected, actual) {
        (Value::Object(want), Value::Object(have)) => want.iter().find_map(|(key, value)| {
            let path = format!("{at}.{key}");
            match have.get(key) {
                Some(found) => mismatch(value, found, &path),
                None => Some(format!("{path}: missing from {actual}")),
            }
        }),
        (Value::Array(want), Value::Array(have)) if want.len() == have.len() => want
            .iter()
            .zip(have)
            .enumerate()
            .find_map(|(i, (w, h))| mismatch(w, h, &format!("{at}[{i}]"))),
        (Value::String(want), Value::String(have)) => match want.strip_suffix("...") {
            Some(prefix) if have.starts_with(prefix) => None,
            None if want == have => None,
            _ => differ(),
        },
        (Value::Number(want), Value::Number(have)) => {
            let (want, have) = (want.as_f64()?, have.as_f64()?);
            ((want - have).abs() > 1e-3 * want.abs().max(1e-9)).then(differ)?
        }
        _ if expected == actual => None,
        _ => differ(),
    }
}

/// Sends one example; its status and JSON answer.
async fn send(router: &RouterProcess, example: &Example) -> (StatusCode, Value) {
    match example.method.as_str() {
        "GET" => router.get(&example.path).await,
        "POST" => {
            let headers: Vec<(&str, &str)> = example
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            router
                .post(&example.path, example.body.clone().into_bytes(), &headers)
                .await
        }
        other => panic!("line {}: method {other} is not supported", example.line),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_guide_examples_answer_as_documented_through_a_real_router() {
    let examples = examples();
    assert!(examples.len() >= 6, "the guide shows {examples:#?}");
    // The examples carry fixed dates: keep what they raise whatever today is.
    let keep = vec![
        (
            "SENTINEL_RETENTION__TELEMETRY_HOURS".to_owned(),
            "876000".to_owned(),
        ),
        (
            "SENTINEL_RETENTION__ANOMALIES_DAYS".to_owned(),
            "36500".to_owned(),
        ),
    ];
    let cluster = Cluster::start_with(1, 4, 1, keep);
    cluster.wait_converged(PATIENCE).await;
    // The original project's variables, as its README and SDKs set them.
    let router = cluster
        .router(&[
            ("SENTINEL_LOG_JSON", "true"),
            ("SENTINEL_LOG_LEVEL", "INFO"),
            ("SENTINEL_BROKERS", "localhost:9092"),
            ("SENTINEL_KAFKA_BROKERS", "localhost:9092"),
            ("SENTINEL_TOPIC", "llm-telemetry"),
        ])
        .await;
    let log = router.log();
    let warning = log
        .lines()
        .find(|l| l.contains("not configuration"))
        .unwrap_or_else(|| panic!("no warning about the ignored variables:\n{log}"));
    let warning: Value = serde_json::from_str(warning)
        .unwrap_or_else(|e| panic!("SENTINEL_LOG_JSON=true logs JSON ({e}): {warning}"));
    assert_eq!(
        warning["fields"]["variables"],
        "SENTINEL_BROKERS, SENTINEL_KAFKA_BROKERS, SENTINEL_TOPIC"
    );

    for example in &examples {
        let mut last = String::new();
        let mut check = async || {
            let (status, answer) = send(&router, example).await;
            let problem = match status.as_u16() == example.status {
                true => mismatch(&example.answer, &answer, "answer"),
                false => Some(format!(
                    "status {status}, the guide says {}",
                    example.status
                )),
            };
            last = format!("{}\n{answer:#}", problem.clone().unwrap_or_default());
            problem.is_none().then_some(())
        };
        // A POST is sent once (again, it would be a duplicate); a query right after
        // ingestion may see the cluster a moment behind, so it is asked until it agrees.
        let agreed = match example.method.as_str() {
            "POST" => check().await,
            _ => sentinel_testkit::wait_for(PATIENCE, check).await,
        };
        assert!(
            agreed.is_some(),
            "docs/migrating.md line {}: {} {}: {last}\n{}",
            example.line,
            example.method,
            example.path,
            router.log()
        );
    }
}
