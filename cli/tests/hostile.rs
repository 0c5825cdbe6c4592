//! A `sentinel router` in front of a real `sentinel node`, probed as an attacker and an
//! unlucky operator would: hostile bodies measured against the router's peak memory,
//! malformed HTTP and gRPC, every list answer paged, schemathesis fuzzing of the OpenAPI
//! document with response-schema conformance, and readiness while the nodes are down.
//!
//! schemathesis is installed by `scripts/setup --tests` at [`DEFAULT_SCHEMATHESIS`];
//! `TEST_SCHEMATHESIS_BIN` names another `schemathesis` executable.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use prost::bytes::{Buf, BufMut};
use reqwest::StatusCode;
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::{
    AnomaliesQuery, BaselinesQuery, IngestEventsRequest, RecentAnomaliesQuery,
};
use sentinel_testkit::process::{event_json as flat, Cluster, RouterProcess};
use sentinel_testkit::wait_for;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

/// Generous bound for anything that waits on the cluster (2-core CI machines).
const PATIENCE: Duration = Duration::from_secs(90);
/// Where `scripts/setup --tests` installs schemathesis.
const DEFAULT_SCHEMATHESIS: &str = "/var/cache/sentinel/tools/schemathesis/bin/schemathesis";
/// Test cases schemathesis generates per operation.
const FUZZ_EXAMPLES: &str = "50";

/// One node (two shards) that converged.
async fn one_node() -> Cluster {
    let cluster = Cluster::start(1, 2, 1);
    cluster.wait_converged(PATIENCE).await;
    cluster
}

/// A field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`) in bytes.
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib = status
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix(field)?.strip_prefix(':')?;
            value.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("{field} in {status}"));
    kib * 1024
}

/// How much a process's resident memory rose above its level at the start while
/// `work` ran (its peak, `VmHWM`, is reset to the current size first).
async fn peak_growth<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (u64, T) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the peak of the router");
    let before = memory(pid, "VmRSS");
    let output = work.await;
    (memory(pid, "VmHWM").saturating_sub(before), output)
}

/// A JSON array of `n` empty objects: `[{},{},…]`, 3 bytes an event.
fn empty_events(n: usize) -> Vec<u8> {
    format!("[{}]", vec!["{}"; n].join(",")).into_bytes()
}

const MIB: u64 = 1 << 20;

/// The bound a hostile request's memory must stay within: a small multiple of its body.
fn allowed(body_bytes: usize) -> u64 {
    16 * MIB + 16 * body_bytes as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_cost_the_router_a_small_multiple_of_their_size() {
    let cluster = one_node().await;
    let h = cluster.router(&[]).await;
    let pid = h.pid();
    let (status, answer) = h
        .post_events(&json!([flat("warm", "m", cluster.t0, 100.0, "w-1")]))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let json_type = [("content-type", "application/json")];
    let mut figures = Vec::new();

    // 200,000 `{}` events in 0.6 MB: refused whole once the count passes the bound.
    let body = empty_events(200_000);
    let size = body.len();
    let (growth, (status, answer)) =
        peak_growth(pid, h.post("/api/v1/events", body.clone(), &json_type)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["code"], "too_many_events");
    figures.push(("REST array of 200,000 {}", size, growth));

    // The same as NDJSON.
    let lines = vec!["{}"; 200_000].join("\n").into_bytes();
    let ndjson = [("content-type", "application/x-ndjson")];
    let (growth, (status, answer)) =
        peak_growth(pid, h.post("/api/v1/events", lines.clone(), &ndjson)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    figures.push(("REST NDJSON of 200,000 {}", lines.len(), growth));

    // Three such requests at once.
    let three = async {
        futures::join!(
            h.post("/api/v1/events", body.clone(), &json_type),
            h.post("/api/v1/events", body.clone(), &json_type),
            h.post("/api/v1/events", body.clone(), &json_type),
        )
    };
    let (growth, answers) = peak_growth(pid, three).await;
    for (status, _) in [answers.0, answers.1, answers.2] {
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }
    figures.push(("3 concurrent REST arrays of 200,000 {}", 3 * size, growth));

    // 10,000 `{}` (the bound): each has a report, only 100 problems are listed.
    let bounded = empty_events(10_000);
    let (growth, (status, answer)) =
        peak_growth(pid, h.post("/api/v1/events", bounded.clone(), &json_type)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["rejected"], 10_000);
    assert_eq!(answer["results"].as_array().expect("results").len(), 10_000);
    assert_eq!(answer["details"].as_array().expect("details").len(), 100);
    assert!(answer["omitted_problems"].as_u64().expect("a count") > 10_000);
    figures.push(("REST array of 10,000 {}", bounded.len(), growth));

    // gRPC: 250,000 `{}` events in 1 MB, then 10,000.
    let mut grpc = SentinelClient::connect(format!("http://{}", h.grpc))
        .await
        .expect("the router's gRPC API");
    let many = IngestEventsRequest {
        events: vec!["{}".to_owned(); 250_000],
    };
    let wire = prost::Message::encoded_len(&many);
    let (growth, refused) = peak_growth(pid, grpc.ingest_events(many)).await;
    assert_eq!(
        refused.expect_err("too many events").code(),
        tonic::Code::ResourceExhausted
    );
    figures.push(("gRPC IngestEvents of 250,000 {}", wire, growth));
    let some = IngestEventsRequest {
        events: vec!["{}".to_owned(); 10_000],
    };
    let wire = prost::Message::encoded_len(&some);
    let (growth, reply) = peak_growth(pid, grpc.ingest_events(some)).await;
    let reply = reply.expect("answered").into_inner();
    assert_eq!((reply.rejected, reply.results.len()), (10_000, 10_000));
    let listed: usize = reply.results.iter().map(|r| r.errors.len()).sum();
    assert_eq!(listed, 100);
    assert!(reply.omitted_problems > 10_000);
    figures.push(("gRPC IngestEvents of 10,000 {}", wire, growth));

    for (case, body, growth) in &figures {
        eprintln!(
            "{case}: body {:.2} MB, router peak +{:.1} MB",
            *body as f64 / 1e6,
            *growth as f64 / 1e6
        );
    }
    for (case, body, growth) in figures {
        assert!(
            growth <= allowed(body),
            "{case}: the router's peak grew by {growth} bytes for a body of {body}"
        );
    }
}

/// Sends `request` as raw bytes on a new connection and reads the whole answer: its
/// status, `content-type` and body.
async fn raw_http(address: &str, request: &[u8]) -> (u16, String, Value) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (
        status,
        content_type,
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A gRPC codec sending and receiving raw message bytes.
#[derive(Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// The gRPC status of `IngestEvents` called with `message` as its encoded request.
async fn ingest_raw(address: &str, message: Vec<u8>) -> Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("the router's gRPC API");
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.expect("ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/sentinel.v1.Sentinel/IngestEvents");
    client
        .unary(tonic::Request::new(message), path, RawCodec)
        .await
        .expect_err("refused")
}

/// Every page of a list query, following `next_cursor`.
async fn pages(h: &RouterProcess, path: &str, list: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_owned(),
        };
        let (status, page) = h.get(&url).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        pages.push(page[list].as_array().expect("a list").clone());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 100, "{path} never ends");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_json_lists_are_paged_and_readiness_follows_the_nodes() {
    let mut cluster = one_node().await;
    let t0 = cluster.t0;
    let h = cluster
        .router(&[
            ("SENTINEL_ROUTER__REFRESH_MS", "300"),
            ("SENTINEL_ROUTER__RPC_TIMEOUT_MS", "1000"),
            ("SENTINEL_ROUTER__RETRY_FOR_MS", "1000"),
            ("SENTINEL_ROUTER__READY_MAX_AGE_MS", "3000"),
        ])
        .await;

    // hyper's own refusals of a request head come back as the API's JSON errors.
    let long_uri = format!(
        "GET /api/v1/telemetry?service={} HTTP/1.1\r\nhost: x\r\n\r\n",
        "s".repeat(70_000)
    );
    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (request, status, code) in [
        (long_uri, 414, "uri_too_long"),
        (
            format!("GET /health/live HTTP/1.1\r\nhost: x\r\n{many_headers}\r\n"),
            431,
            "headers_too_large",
        ),
        (
            "NOT A\x01REQUEST\r\n\r\n".to_owned(),
            400,
            "invalid_request",
        ),
    ] {
        let (got, content_type, body) = raw_http(&h.http, request.as_bytes()).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
        assert_eq!(content_type, "application/json");
        assert!(body["message"].is_string() && body["details"].is_array());
    }

    // A gRPC request that does not decode is the caller's fault.
    for message in [vec![0xff, 0xff, 0xff, 0x07], vec![0x0a, 0x02, 0xff, 0xfe]] {
        let status = ingest_raw(&h.grpc, message).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // Reflection v1alpha answers and lists the public service only.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.grpc))
        .expect("an endpoint")
        .connect()
        .await
        .expect("the router's gRPC API");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("a service list: {answer:?}");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["sentinel.v1.Sentinel"]);

    // Unknown parameters, empty bodies, control characters in names.
    let (status, answer) = h.get("/api/v1/cluster/status?verbose=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["details"][0]["field"], "verbose");
    let (status, answer) = h.post("/api/v1/events", Vec::new(), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    for field in [
        "accepted",
        "applied",
        "duplicates",
        "rejected",
        "failed",
        "omitted_problems",
    ] {
        assert_eq!(answer[field], 0, "{field} in {answer}");
    }
    assert_eq!(
        (answer["code"].as_str(), answer["results"].clone()),
        (Some("invalid_events"), json!([]))
    );
    let (status, answer) = h
        .post_events(&json!([
            flat("chat\u{1b}[2J", "gpt-4o", t0, 100.0, "esc"),
            flat("chat", "gpt\u{202e}4o", t0, 100.0, "bidi"),
        ]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let fields: BTreeSet<&str> = answer["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, BTreeSet::from(["model", "service_name"]));

    // Baselines and anomalies of five keys, read a page at a time.
    let services: Vec<String> = (0..5).map(|n| format!("svc-{n}")).collect();
    for service in &services {
        let mut events: Vec<Value> = (0..40)
            .map(|n| {
                let latency = 800.0 + ((n * 37) % 23) as f64 * 10.0;
                flat(
                    service,
                    "gpt-4o",
                    t0 + 1000 * n,
                    latency,
                    &format!("{service}-{n}"),
                )
            })
            .collect();
        events.push(flat(
            service,
            "gpt-4o",
            t0 + 41_000,
            40_000.0,
            &format!("{service}-spike"),
        ));
        let (status, answer) = h.post_events(&Value::Array(events)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    let baselines = pages(&h, "/api/v1/baselines?limit=2", "baselines").await;
    let sizes: Vec<usize> = baselines.iter().map(Vec::len).collect();
    assert_eq!(sizes, [2, 2, 1]);
    let keys: Vec<&str> = baselines
        .iter()
        .flatten()
        .map(|b| b["service_name"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        services.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let mut grpc = SentinelClient::connect(format!("http://{}", h.grpc))
        .await
        .expect("the router's gRPC API");
    let first = grpc
        .baselines(BaselinesQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("baselines")
        .into_inner();
    let second = grpc
        .baselines(BaselinesQuery {
            limit: Some(2),
            cursor: first.next_cursor.clone(),
            ..Default::default()
        })
        .await
        .expect("baselines")
        .into_inner();
    assert_eq!((first.count, second.count), (2, 2));
    assert!(!second.next_cursor.is_empty());

    let all = wait_for(PATIENCE, async || {
        let (_, answer) = h.get("/api/v1/anomalies?hours=48&limit=1000").await;
        let anomalies = answer["anomalies"].as_array()?.clone();
        let spiked: BTreeSet<&str> = anomalies
            .iter()
            .filter(|a| a["anomaly_type"] == "latency_spike")
            .filter_map(|a| a["service_name"].as_str())
            .collect();
        (spiked.len() == services.len()).then_some(anomalies)
    })
    .await
    .expect("a latency spike of every service");
    let paged: Vec<Value> = pages(&h, "/api/v1/anomalies?hours=48&limit=2", "anomalies")
        .await
        .concat();
    let ids = |list: &[Value]| -> Vec<String> {
        list.iter()
            .map(|a| a["alert_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&paged),
        ids(&all),
        "pages are the whole list, newest first"
    );
    let recent: Vec<Value> = pages(&h, "/api/v1/anomalies/recent?limit=3", "anomalies")
        .await
        .concat();
    assert_eq!(ids(&recent), ids(&all));
    let grpc_page = grpc
        .anomalies(AnomaliesQuery {
            hours: Some(48.0),
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("anomalies")
        .into_inner();
    assert!(!grpc_page.next_cursor.is_empty());
    let recent_page = grpc
        .recent_anomalies(RecentAnomaliesQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("recent anomalies")
        .into_inner();
    assert_eq!(recent_page.count, 2);

    // schemathesis: generated requests to every operation, every answer checked against
    // the OpenAPI document.
    let schemathesis =
        std::env::var("TEST_SCHEMATHESIS_BIN").unwrap_or_else(|_| DEFAULT_SCHEMATHESIS.into());
    let workdir = tempfile::tempdir().expect("a directory for schemathesis's files");
    let fuzzed = Command::new(&schemathesis)
        .current_dir(workdir.path())
        .args([
            "run",
            &h.url("/api/v1/openapi.json"),
            "--url",
            &h.url(""),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            FUZZ_EXAMPLES,
            "--seed",
            "13",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .output()
        .unwrap_or_else(|e| panic!("{schemathesis} runs (scripts/setup --tests installs it): {e}"));
    let report = String::from_utf8_lossy(&fuzzed.stdout);
    let generated = report.lines().find(|line| line.contains(" generated"));
    eprintln!("schemathesis: {}", generated.unwrap_or("no summary").trim());
    assert!(
        fuzzed.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&fuzzed.stderr)
    );

    // Every node down: the router says it is not ready within its bound, then ready
    // again once the node is back.
    cluster.kill(0);
    let killed = Instant::now();
    let reason = wait_for(Duration::from_secs(20), async || {
        let (status, answer) = h.get("/health/ready").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
    })
    .await
    .expect("not ready once every node is down");
    assert_eq!(reason["code"], "not_ready", "{reason}");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "readiness followed the nodes within {:?}",
        killed.elapsed()
    );
    cluster.spawn(0);
    h.wait_ready().await;
}
