//! The router in front of a cluster of real processes: `sentinel node` ×3 and
//! `sentinel router` on loopback, driven over HTTP as a user would.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use prost::Message;
use reqwest::StatusCode;
use sentinel_core::anomaly::now_ms;
use sentinel_proto::json::from_struct;
use sentinel_proto::otlp::{
    any_value, AnyValue, ExportTraceServiceRequest, KeyValue, Resource, ResourceSpans, ScopeSpans,
    Span,
};
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::{
    AnomaliesQuery, BaselinesQuery, ClusterStatusQuery, IncidentChange, IncidentRef,
    IncidentsQuery, IngestEventsRequest, NewSilence, QueryReply, RecentAnomaliesQuery, SilenceRef,
    SilencesQuery, TelemetryQuery,
};
use sentinel_testkit::process::{
    assert_replicas_agree, event_json as flat, Cluster, RouterProcess,
};
use sentinel_testkit::services;
use sentinel_testkit::{rfc3339, sha256_hex, wait_for};
use serde_json::{json, Value};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// Generous bound for anything that waits on the cluster (2-core CI machines).
const PATIENCE: Duration = Duration::from_secs(90);
const SHARDS: u32 = 4;

/// Three nodes (R = 3) that converged, and a ready router with `env` in front of them.
async fn start(env: &[(&str, &str)]) -> (Cluster, RouterProcess) {
    let cluster = Cluster::start(3, SHARDS, 3);
    cluster.wait_converged(PATIENCE).await;
    let router = cluster.router(env).await;
    (cluster, router)
}

/// Every telemetry record of the query, read page by page through the cursor.
async fn telemetry(router: &RouterProcess, query: &str) -> Vec<Value> {
    let mut records = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/telemetry?{query}&cursor={c}"),
            None => format!("/api/v1/telemetry?{query}"),
        };
        let (status, page) = router.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        records.extend(page["records"].as_array().expect("records").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return records,
        }
    }
}

/// An OTLP export of one GenAI span (420 ms) of `service`/`model` ending at `t`, and one
/// plain HTTP span.
fn otlp_request(t: i64, service: &str, model: &str) -> ExportTraceServiceRequest {
    let text = |key: &str, value: &str| KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    };
    let end = t as u64 * 1_000_000;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![text("service.name", service)],
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    Span {
                        trace_id: vec![7; 16],
                        span_id: vec![9; 8],
                        name: format!("chat {model}"),
                        start_time_unix_nano: end - 420_000_000,
                        end_time_unix_nano: end,
                        attributes: vec![
                            text("gen_ai.system", "openai"),
                            text("gen_ai.request.model", model),
                        ],
                        ..Span::default()
                    },
                    Span {
                        name: "GET /health".into(),
                        ..Span::default()
                    },
                ],
            }],
        }],
    }
}

/// A nested-shape (SDK) event.
fn nested(service: &str, model: &str, t: i64, id: &str, prompt: &str) -> Value {
    json!({
        "event_id": id,
        "timestamp": rfc3339(t),
        "service_name": service,
        "model": model,
        "prompt": {"text": prompt, "tokens": 12},
        "response": {"text": "sure", "tokens": 30, "finish_reason": "stop"},
        "latency_ms": 240.0,
        "cost_usd": 0.001,
        "metadata": {"team": "search"},
        "errors": [],
    })
}

fn ids(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| r["event"]["event_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// The `field` of every `{field, problem}` of an error's details.
fn fields(details: &Value) -> BTreeSet<&str> {
    details
        .as_array()
        .expect("details")
        .iter()
        .map(|d| d["field"].as_str().expect("a field"))
        .collect()
}

/// One counter of a Prometheus text page (0 when absent).
fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_posted_over_rest_become_telemetry_baselines_and_anomalies() {
    let (cluster, h) = start(&[("SENTINEL_HTTP__MAX_BODY_BYTES", "65536")]).await;
    let t0 = cluster.t0;

    // One nested event; its PII is redacted before it is stored.
    let (status, answer) = h
        .post_events(&nested(
            "search",
            "gpt-4o",
            t0,
            "n-1",
            "mail ann@example.com please",
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 1);
    assert_eq!(answer["results"][0]["status"], "applied");

    // A JSON array of flat events.
    let array: Vec<Value> = (0..5)
        .map(|n| {
            flat(
                "search",
                "gpt-4o",
                t0 + 1000 * (n + 1),
                200.0,
                &format!("a-{n}"),
            )
        })
        .collect();
    let (status, answer) = h.post_events(&Value::Array(array)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 5);

    // NDJSON.
    let ndjson: Vec<String> = (0..4)
        .map(|n| flat("chat", "claude-3", t0 + 1000 * n, 300.0, &format!("j-{n}")).to_string())
        .collect();
    let (status, answer) = h
        .post(
            "/api/v1/events",
            ndjson.join("\n").into_bytes(),
            &[("content-type", "application/x-ndjson")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 4);

    // A gzip-compressed array.
    let packed: Vec<Value> = (0..3)
        .map(|n| {
            flat(
                "chat",
                "claude-3",
                t0 + 10_000 + 1000 * n,
                310.0,
                &format!("g-{n}"),
            )
        })
        .collect();
    let (status, answer) = h
        .post(
            "/api/v1/events",
            gzip(Value::Array(packed).to_string().as_bytes()),
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 3);

    // The same event again: acknowledged, not applied twice.
    let (status, answer) = h
        .post_events(&nested(
            "search",
            "gpt-4o",
            t0,
            "n-1",
            "mail ann@example.com please",
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["duplicates"], 1);
    assert_eq!(answer["results"][0]["status"], "duplicate");

    // Telemetry of one key (one shard), then of every key (fan-out, paged by 2).
    let search = telemetry(&h, "service=search&model=gpt-4o").await;
    let mut search_ids = ids(&search);
    search_ids.sort();
    assert_eq!(search_ids, ["a-0", "a-1", "a-2", "a-3", "a-4", "n-1"]);
    let stored = search
        .iter()
        .find(|r| r["event"]["event_id"] == "n-1")
        .expect("the nested event");
    let prompt = stored["event"]["prompt_text"]
        .as_str()
        .expect("prompt text");
    assert!(!prompt.contains("ann@example.com"), "redacted: {prompt}");
    let everything = telemetry(&h, "limit=2&hours=48").await;
    assert_eq!(everything.len(), 13, "{everything:#?}");
    assert_eq!(
        ids(&everything).into_iter().collect::<BTreeSet<_>>().len(),
        13,
        "no record twice across pages"
    );

    // Baselines of one key and of all keys.
    let (status, answer) = h.get("/api/v1/baselines?service=chat&model=claude-3").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["baselines"][0]["events"], 7);
    let (status, answer) = h.get("/api/v1/baselines?consistency=stale").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["count"].as_u64().unwrap() >= 1);
    let (_, answer) = h.get("/api/v1/baselines").await;
    assert_eq!(answer["count"], 2, "{answer}");

    // OTLP/HTTP protobuf, as a collector exports it: the GenAI span becomes an event.
    let (status, answer) = h
        .post(
            "/v1/traces",
            otlp_request(t0 + 5_000, "otel-svc", "gpt-4o").encode_to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["applied"], 1, "{answer}");
    let otel = telemetry(&h, "service=otel-svc&model=gpt-4o").await;
    assert_eq!(otel.len(), 1);
    assert_eq!(otel[0]["event"]["latency_ms"], 420.0);
    let (status, answer) = h
        .post(
            "/v1/traces",
            b"\xff\xff\xff".to_vec(),
            &[("content-type", "application/x-protobuf")],
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );

    // Bad events get 400 listing each problem; the good ones in the body are applied.
    let mut bad = flat("search", "gpt-4o", t0 + 20_000, -5.0, "bad-latency");
    bad["prompt_tokens"] = json!("many");
    let body = json!([
        flat("search", "gpt-4o", t0 + 21_000, 210.0, "good-1"),
        bad,
        "not an event",
        flat("search", "gpt-4o", t0 + 22_000, 220.0, "good-2"),
    ]);
    let (status, answer) = h.post_events(&body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["code"], "invalid_events");
    assert_eq!(
        (answer["applied"].clone(), answer["rejected"].clone()),
        (json!(2), json!(2))
    );
    let problems: BTreeSet<(u64, String)> = answer["details"]
        .as_array()
        .expect("details")
        .iter()
        .map(|d| {
            (
                d["index"].as_u64().unwrap(),
                d["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(problems.contains(&(1, "prompt_tokens".into())), "{answer}");
    assert!(problems.iter().any(|(i, _)| *i == 2), "{answer}");
    assert_eq!(answer["results"][0]["status"], "applied");
    assert_eq!(answer["results"][3]["status"], "applied");
    let search = telemetry(&h, "service=search&model=gpt-4o").await;
    assert!(ids(&search).contains(&"good-2".to_string()));

    // Bad query parameters get 400 listing each problem.
    let (status, answer) = h
        .get("/api/v1/telemetry?model=x&limit=abc&hours=-1&colour=red")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["code"], "invalid_parameters");
    assert_eq!(
        fields(&answer["details"]),
        BTreeSet::from(["colour", "hours", "limit", "model"])
    );
    let (status, answer) = h.get("/api/v1/anomalies?severity=urgent").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["details"][0]["field"], "severity");
    let (status, answer) = h.get("/api/v1/nothing").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, answer) = h.post("/api/v1/events", vec![b' '; 70_000], &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");

    // A latency spike becomes an anomaly, in /anomalies and /anomalies/recent.
    let baseline: Vec<Value> = (0..40)
        .map(|n| {
            let latency = 800.0 + ((n * 37) % 23) as f64 * 10.0;
            flat(
                "checkout",
                "gpt-4o",
                t0 + 1000 * n,
                latency,
                &format!("c-{n}"),
            )
        })
        .collect();
    let (status, answer) = h.post_events(&Value::Array(baseline)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, answer) = h
        .post_events(&flat(
            "checkout",
            "gpt-4o",
            t0 + 41_000,
            40_000.0,
            "c-spike",
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let is_spike = |a: &Value| {
        a["anomaly_type"] == "latency_spike"
            && a["service_name"] == "checkout"
            && a["model"] == "gpt-4o"
    };
    let alert = wait_for(PATIENCE, async || {
        let (_, answer) = h.get("/api/v1/anomalies?hours=48&limit=50").await;
        answer["anomalies"]
            .as_array()?
            .iter()
            .find(|a| is_spike(a))
            .cloned()
    })
    .await
    .expect("the spike in /api/v1/anomalies");
    for field in [
        "alert_id",
        "timestamp",
        "severity",
        "detection_method",
        "confidence",
    ] {
        assert!(!alert[field].is_null(), "{field} in {alert}");
    }
    assert_eq!(alert["details"]["metric"], "latency_ms");
    let (status, recent) = h.get("/api/v1/anomalies/recent?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        recent["anomalies"].as_array().unwrap().iter().any(is_spike),
        "{recent}"
    );
    let severity = alert["severity"].as_str().unwrap();
    let (_, filtered) = h
        .get(&format!("/api/v1/anomalies?severity={severity}&hours=48"))
        .await;
    assert!(filtered["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["severity"] == severity));

    rest_and_grpc_answer_alike(&h, severity).await;

    // Cluster status, health and metrics.
    let (status, layout) = h.get("/api/v1/cluster/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(layout["shard_count"], SHARDS);
    assert_eq!(layout["nodes"].as_array().unwrap().len(), 3);
    let (status, _) = h.get("/health/live").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("sentinel_router_requests_total{route=\"/api/v1/events\",status=\"200\"}"),
        "{metrics}"
    );
    assert!(
        counter(&metrics, "sentinel_router_events_forwarded_total") >= 57.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_router_refuses_strangers_and_follows_a_killed_shard_leader() {
    // Only callers presenting one of two keys get in. The table is refreshed only when a
    // call fails, so the leader change must be followed through the calls themselves.
    let keys = format!(
        "[sha256:{}, sha256:{}]",
        sha256_hex("test-key-1"),
        sha256_hex("test-key-2")
    );
    // Its query answers are cached in a Redis of the test's own, for a minute.
    let mut redis = services::RedisServer::start();
    let redis_url = redis.url();
    let settings = [
        ("SENTINEL_ROUTER__REFRESH_MS", "3600000"),
        ("SENTINEL_AUTH__API_KEYS", keys.as_str()),
        ("SENTINEL_CACHE__REDIS_URL", redis_url.as_str()),
        ("SENTINEL_CACHE__TTL_MS", "60000"),
        ("SENTINEL_CACHE__TIMEOUT_MS", "500"),
    ];
    let (mut cluster, mut h) = start(&settings).await;
    let (status, answer) = h.get("/api/v1/anomalies/recent").await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthorized"))
    );
    h.api_key = Some("wrong-key".into());
    let (status, _) = h.post_events(&json!([])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut grpc = SentinelClient::connect(format!("http://{}", h.grpc))
        .await
        .unwrap();
    let refused = grpc
        .recent_anomalies(RecentAnomaliesQuery {
            limit: None,
            consistency: String::new(),
            cursor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut keyed = tonic::Request::new(RecentAnomaliesQuery {
        limit: None,
        consistency: String::new(),
        cursor: String::new(),
    });
    keyed
        .metadata_mut()
        .insert("authorization", "Bearer test-key-2".parse().unwrap());
    grpc.recent_anomalies(keyed)
        .await
        .expect("a valid key over gRPC");
    for open in ["/health/live", "/metrics", "/api/v1/openapi.json"] {
        let (status, _) = h.get(open).await;
        assert_eq!(status, StatusCode::OK, "{open} stays open");
    }
    h.api_key = Some("test-key-1".into());
    assert!(
        counter(
            &h.metrics().await,
            "sentinel_router_auth_refusals_total{reason=\"missing\"}"
        ) >= 1.0
    );

    let keys: Vec<String> = (0..8).map(|k| format!("svc-{k}")).collect();
    let mut acknowledged = BTreeSet::new();
    let t0 = cluster.t0;
    let mut post_round = async |round: i64| {
        let events: Vec<Value> = keys
            .iter()
            .map(|service| {
                flat(
                    service,
                    "gpt-4o",
                    t0 + round * 1000,
                    300.0,
                    &format!("{service}-{round}"),
                )
            })
            .collect();
        let body = Value::Array(events);
        let answer = wait_for(PATIENCE, async || {
            let (status, answer) = h.post_events(&body).await;
            (status == StatusCode::OK).then_some(answer)
        })
        .await
        .unwrap_or_else(|| panic!("round {round} was never acknowledged"));
        for result in answer["results"].as_array().unwrap() {
            assert!(
                result["status"] == "applied" || result["status"] == "duplicate",
                "{answer}"
            );
        }
        acknowledged.extend(keys.iter().map(|service| format!("{service}-{round}")));
    };
    for round in 0..5 {
        post_round(round).await;
    }

    // Kill -9 the node leading the shard of the first key.
    let (_, layout) = h.get("/api/v1/cluster/status").await;
    let shard = sentinel_core::shard::shard_of(&keys[0], "gpt-4o", SHARDS);
    let leader = layout["shards"][shard as usize]["leader"]
        .as_u64()
        .expect("a leader");
    cluster.kill(leader);

    for round in 5..15 {
        post_round(round).await;
    }
    let metrics = h.metrics().await;
    assert!(
        counter(&metrics, "sentinel_router_not_leader_redirects_total")
            + counter(&metrics, "sentinel_router_retries_total")
            >= 1.0,
        "the old leader was asked and the call went elsewhere:\n{metrics}"
    );

    let stored = wait_for(PATIENCE, async || {
        let (status, _) = h.get("/health/ready").await;
        (status == StatusCode::OK).then_some(())?;
        Some(telemetry(&h, "hours=48&limit=500").await)
    })
    .await
    .expect("the router ready again");
    let stored_ids = ids(&stored);
    let unique: BTreeSet<String> = stored_ids.iter().cloned().collect();
    assert_eq!(unique.len(), stored_ids.len(), "no event applied twice");
    let missing: Vec<&String> = acknowledged.difference(&unique).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");

    // A repeated query is answered from the router's memory, the same query on another
    // router from Redis; an explicitly linearizable query never from the cache.
    let cache =
        |result: &str| format!("sentinel_router_cache_lookups_total{{result=\"{result}\"}}");
    let query = "/api/v1/baselines?service=svc-1&model=gpt-4o";
    let (status, first) = h.get(query).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let stored_key = wait_for(PATIENCE, async || {
        let keys = redis.command(&["KEYS", "sentinel:answer:*"])?;
        keys.contains("/api/v1/baselines?service=svc-1&model=gpt-4o")
            .then_some(keys)
    })
    .await;
    assert!(stored_key.is_some(), "the answer is stored in Redis");
    let local_hits = counter(&h.metrics().await, &cache("local_hit"));
    let (_, repeated) = h.get(query).await;
    assert_eq!(repeated, first);
    assert_eq!(
        counter(&h.metrics().await, &cache("local_hit")),
        local_hits + 1.0
    );
    let mut other = cluster.router(&settings).await;
    other.api_key = Some("test-key-2".into());
    let (_, shared) = other.get(query).await;
    assert_eq!(shared, first);
    assert_eq!(counter(&other.metrics().await, &cache("hit")), 1.0);
    let lookups = h.metrics().await;
    let (status, _) = h.get(&format!("{query}&consistency=linearizable")).await;
    assert_eq!(status, StatusCode::OK);
    let after = h.metrics().await;
    for result in ["hit", "local_hit", "miss"] {
        assert_eq!(
            counter(&after, &cache(result)),
            counter(&lookups, &cache(result))
        );
    }

    // Redis goes away: queries are still answered, from the cluster.
    redis.kill();
    let errors = counter(&h.metrics().await, &cache("error"));
    let (status, without) = h.get(&format!("{query}&consistency=stale")).await;
    assert_eq!(status, StatusCode::OK, "{without}");
    assert_eq!(
        without["baselines"][0]["events"],
        first["baselines"][0]["events"]
    );
    assert!(counter(&h.metrics().await, &cache("error")) > errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_are_acknowledged_and_resolved_by_hand_and_silences_survive_a_killed_leader() {
    let hook = services::WebhookReceiver::start(b"hook-secret", services::Replies::Accept).await;
    let mut cluster = Cluster::start_with(3, SHARDS, 3, hook.node_env());
    cluster.wait_converged(PATIENCE).await;
    let h = cluster.router(&[]).await;
    let mut grpc = SentinelClient::connect(format!("http://{}", h.grpc))
        .await
        .expect("the router's gRPC API");
    let opened = h.open_incident("payments", "gpt-4o", cluster.t0).await;
    let id = opened["incident_id"].as_str().expect("an id").to_owned();
    assert_eq!(
        (
            &opened["status"],
            &opened["anomaly_type"],
            &opened["resolution"]
        ),
        (&json!("open"), &json!("latency_spike"), &Value::Null),
        "{opened}"
    );
    assert!(opened["acknowledged"].is_null());
    let told = wait_for(PATIENCE, async || {
        (notified(&hook, &id).first()? == "opened").then_some(())
    })
    .await;
    assert!(told.is_some(), "{:?}", notified(&hook, &id));

    // Listed alike over REST and gRPC, and shown by id.
    let (status, listed) = h.get("/api/v1/incidents?service=payments&hours=2").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["count"], 1, "{listed}");
    let over_grpc = grpc
        .incidents(IncidentsQuery {
            service: "payments".into(),
            hours: Some(2.0),
            ..Default::default()
        })
        .await
        .expect("incidents over gRPC")
        .into_inner();
    assert_eq!(
        grpc_answer(over_grpc, "incidents"),
        normalized(listed.clone())
    );
    let (status, shown) = h.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!(shown, listed["incidents"][0]);
    let shown_over_grpc = grpc
        .get_incident(IncidentRef {
            incident_id: id.clone(),
            consistency: "stale".into(),
        })
        .await
        .expect("the incident over gRPC")
        .into_inner();
    assert_eq!(normalized(from_struct(shown_over_grpc)), normalized(shown));
    let (status, none) = h.get("/api/v1/incidents?status=resolved&hours=2").await;
    assert_eq!(
        (status, &none["count"]),
        (StatusCode::OK, &json!(0)),
        "{none}"
    );

    // Unknown ids are 404, bad requests 400 field by field.
    for (status, answer) in [
        h.get("/api/v1/incidents/no-such-incident").await,
        h.post_json(
            "/api/v1/incidents/no-such-incident/acknowledge",
            &json!({"by": "alice"}),
        )
        .await,
        h.delete("/api/v1/silences/no-such-silence").await,
    ] {
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("not_found")),
            "{answer}"
        );
    }
    let missing = grpc
        .get_incident(IncidentRef {
            incident_id: "no-such-incident".into(),
            consistency: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let acknowledge = format!("/api/v1/incidents/{id}/acknowledge");
    let (status, answer) = h
        .post_json(
            &acknowledge,
            &json!({"by": 7, "comment": "x", "when": "now"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(fields(&answer["details"]), BTreeSet::from(["by", "when"]));
    let (status, answer) = h.post(&acknowledge, b"{not json".to_vec(), &[]).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body")),
        "{answer}"
    );
    let (status, answer) = h
        .post_json(
            "/api/v1/silences",
            &json!({"service": "payments", "duration_s": -5, "ends_at": "soon", "until": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        fields(&answer["details"]),
        BTreeSet::from(["created_by", "duration_s", "until"])
    );
    let (status, answer) = h
        .post_json(
            "/api/v1/silences",
            &json!({"ends_at": "2020-01-01T00:00:00Z", "anomaly_type": "outage", "created_by": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        fields(&answer["details"]),
        BTreeSet::from(["anomaly_type", "ends_at"])
    );
    let (status, answer) = h.get("/api/v1/incidents?status=closed&limit=5000").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        fields(&answer["details"]),
        BTreeSet::from(["limit", "status"])
    );
    let refused = grpc
        .acknowledge_incident(IncidentChange {
            incident_id: id.clone(),
            by: String::new(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // Acknowledged over REST, silenced over gRPC.
    let (status, acknowledged) = h
        .post_json(&acknowledge, &json!({"by": "alice", "comment": "looking"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{acknowledged}");
    assert_eq!(acknowledged["status"], "open");
    assert_eq!(acknowledged["acknowledged"]["by"], "alice");
    assert_eq!(acknowledged["acknowledged"]["comment"], "looking");
    let silence = grpc
        .add_silence(NewSilence {
            service: "payments".into(),
            anomaly_type: "latency_spike".into(),
            duration_s: Some(3_600.0),
            created_by: "bob".into(),
            comment: "deploy".into(),
            ..Default::default()
        })
        .await
        .expect("a silence")
        .into_inner();
    let silence = from_struct(silence);
    let silence_id = silence["silence_id"].as_str().expect("an id").to_owned();
    assert_eq!(silence_id.len(), 36, "a UUID: {silence_id}");
    assert_eq!(silence["service_name"], "payments");
    assert!(silence["model"].is_null());
    let (status, added) = h
        .post_json(
            "/api/v1/silences",
            &json!({"model": "gpt-4o", "ends_at": rfc3339(now_ms() + 600_000), "created_by": "carol"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let (status, silences) = h.get("/api/v1/silences?active=true").await;
    assert_eq!(status, StatusCode::OK, "{silences}");
    assert_eq!(
        silences["count"], 2,
        "one entry per silence, not per shard: {silences}"
    );
    let over_grpc = grpc
        .silences(SilencesQuery {
            active: true,
            consistency: String::new(),
        })
        .await
        .expect("silences over gRPC")
        .into_inner();
    assert_eq!(grpc_answer(over_grpc, "silences"), normalized(silences));

    // The leader of the incident's shard is killed: the acknowledgement and the silences
    // are answered by the new leader.
    let (_, layout) = h.get("/api/v1/cluster/status").await;
    let shard = sentinel_core::shard::shard_of("payments", "gpt-4o", SHARDS);
    let leader = layout["shards"][shard as usize]["leader"]
        .as_u64()
        .expect("a leader");
    cluster.kill(leader);
    let survived = wait_for(PATIENCE, async || {
        let (status, shown) = h.get(&format!("/api/v1/incidents/{id}")).await;
        (status == StatusCode::OK).then_some(shown)
    })
    .await
    .expect("the incident answered after its leader was killed");
    assert_eq!(survived["acknowledged"], acknowledged["acknowledged"]);
    let (status, silences) = h.get("/api/v1/silences").await;
    assert_eq!(status, StatusCode::OK, "{silences}");
    let ids: BTreeSet<&str> = silences["silences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["silence_id"].as_str())
        .collect();
    assert!(ids.contains(silence_id.as_str()), "{silences}");

    // An incident opening under an active silence is recorded with the silence's id and
    // sent nowhere.
    let carols = added["silence_id"].as_str().expect("an id");
    let silenced = h.open_incident("refunds", "gpt-4o", now_ms()).await;
    assert_eq!(silenced["silenced_by"], json!(carols), "{silenced}");
    let silenced_id = silenced["incident_id"].as_str().expect("an id");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        notified(&hook, silenced_id).is_empty(),
        "a silenced incident was sent"
    );

    // Resolved by hand; then it is no longer open to acknowledge.
    let resolve = format!("/api/v1/incidents/{id}/resolve");
    let (status, resolved) = h
        .post_json(&resolve, &json!({"by": "dave", "comment": "rolled back"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(
        (
            &resolved["status"],
            &resolved["resolution"],
            &resolved["resolved_by"]["by"]
        ),
        (&json!("resolved"), &json!("manual"), &json!("dave")),
        "{resolved}"
    );
    assert!(resolved["resolved_at_ms"].is_i64(), "{resolved}");
    let (status, _) = h.post_json(&resolve, &json!({"by": "dave"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = h.get("/api/v1/incidents?status=resolved&hours=2").await;
    assert_eq!(listed["incidents"][0]["incident_id"], json!(id), "{listed}");
    let told = wait_for(PATIENCE, async || {
        let events = notified(&hook, &id);
        (events.last()? == "resolved").then_some(events)
    })
    .await
    .unwrap_or_else(|| panic!("no resolved notification: {:?}", notified(&hook, &id)));
    let count = |event: &str| told.iter().filter(|e| *e == event).count();
    assert_eq!(
        (count("opened"), count("resolved")),
        (1, 1),
        "one notification when it opened and one when it was resolved, acknowledged or not: {told:?}"
    );

    // Expired: listed, but no longer active.
    let expired = grpc
        .expire_silence(SilenceRef {
            silence_id: silence_id.clone(),
        })
        .await
        .expect("expired")
        .into_inner();
    assert!(from_struct(expired)["ends_at_ms"].as_f64().unwrap() <= now_ms() as f64);
    let (_, active) = h.get("/api/v1/silences?active=true").await;
    assert_eq!(active["count"], 1, "{active}");
    let (_, all) = h.get("/api/v1/silences").await;
    assert_eq!(all["count"], 2, "{all}");

    // The killed node comes back and catches up: every replica holds the same state.
    cluster.spawn(leader);
    assert_replicas_agree(&cluster, PATIENCE).await;
}

/// The events (`opened`, `resolved`, ...) of the distinct notifications `hook` accepted for
/// `incident_id`, in the order they first arrived (redeliveries share an alert id).
fn notified(hook: &services::WebhookReceiver, incident_id: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    hook.requests()
        .iter()
        .filter(|r| r.status.is_success() && r.signature_valid)
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter(|body| body["incident_id"] == incident_id)
        .filter(|body| seen.insert(body["alert_id"].to_string()))
        .map(|body| body["event"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A number-agnostic form of JSON (every number as f64), as `google.protobuf.Struct` has it.
fn normalized(value: Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().expect("finite")),
        Value::Array(items) => Value::Array(items.into_iter().map(normalized).collect()),
        Value::Object(map) => map.into_iter().map(|(k, v)| (k, normalized(v))).collect(),
        other => other,
    }
}

/// The records of a gRPC query answer, as the REST answer lists them under `list`.
fn grpc_answer(reply: QueryReply, list: &str) -> Value {
    let next_cursor = match reply.next_cursor.as_str() {
        "" => Value::Null,
        cursor => json!(cursor),
    };
    normalized(json!({
        "count": reply.count,
        list: reply.records.iter().map(|r| from_struct(r.clone())).collect::<Vec<_>>(),
        "next_cursor": next_cursor,
    }))
}

/// The public gRPC API answers every query as REST does, refuses bad parameters listing
/// each, and lists itself through server reflection.
async fn rest_and_grpc_answer_alike(h: &RouterProcess, severity: &str) {
    let mut grpc = SentinelClient::connect(format!("http://{}", h.grpc))
        .await
        .expect("the router's gRPC API");
    let rest = async |path: &str| {
        let (status, answer) = h.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {answer}");
        normalized(answer)
    };

    let query = TelemetryQuery {
        service: "search".into(),
        model: "gpt-4o".into(),
        hours: Some(48.0),
        limit: Some(5),
        cursor: String::new(),
        consistency: "stale".into(),
    };
    let first = grpc.telemetry(query.clone()).await.unwrap().into_inner();
    let cursor = first.next_cursor.clone();
    assert!(!cursor.is_empty(), "eight records, five per page");
    // The cursors differ only in the look-back start, which is taken at each request.
    let without_cursor = |mut answer: Value| {
        assert!(answer["next_cursor"].is_string(), "{answer}");
        answer["next_cursor"] = Value::Null;
        answer
    };
    assert_eq!(
        without_cursor(grpc_answer(first, "records")),
        without_cursor(
            rest(
                "/api/v1/telemetry?service=search&model=gpt-4o&hours=48&limit=5&consistency=stale"
            )
            .await
        )
    );
    let second = grpc
        .telemetry(TelemetryQuery {
            cursor: cursor.clone(),
            ..query
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.count, 3);
    assert_eq!(
        grpc_answer(second, "records"),
        rest(&format!("/api/v1/telemetry?service=search&model=gpt-4o&hours=48&limit=5&consistency=stale&cursor={cursor}")).await
    );

    let anomalies = grpc
        .anomalies(AnomaliesQuery {
            severity: severity.into(),
            hours: Some(48.0),
            limit: Some(10),
            consistency: "linearizable".into(),
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(anomalies.count >= 1);
    assert_eq!(
        grpc_answer(anomalies, "anomalies"),
        rest(&format!(
            "/api/v1/anomalies?severity={severity}&hours=48&limit=10&consistency=linearizable"
        ))
        .await
    );
    let recent = grpc
        .recent_anomalies(RecentAnomaliesQuery {
            limit: Some(3),
            consistency: String::new(),
            cursor: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        grpc_answer(recent, "anomalies"),
        rest("/api/v1/anomalies/recent?limit=3").await
    );
    let baselines = grpc
        .baselines(BaselinesQuery {
            service: "chat".into(),
            model: "claude-3".into(),
            consistency: "stale".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        grpc_answer(baselines, "baselines"),
        rest("/api/v1/baselines?service=chat&model=claude-3&consistency=stale").await
    );
    let layout = grpc
        .cluster_status(ClusterStatusQuery {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        normalized(from_struct(layout))["shard_count"],
        json!(f64::from(SHARDS))
    );

    let refused = grpc
        .anomalies(AnomaliesQuery {
            severity: "urgent".into(),
            hours: Some(-1.0),
            limit: Some(0),
            consistency: "weak".into(),
            cursor: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let details: Value = serde_json::from_str(
        refused
            .metadata()
            .get("sentinel-details")
            .unwrap()
            .to_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        fields(&details),
        BTreeSet::from(["consistency", "hours", "limit", "severity"])
    );
    let metrics = h.metrics().await;
    assert_eq!(
        counter(
            &metrics,
            "sentinel_router_requests_total{route=\"/sentinel.v1.Sentinel/Anomalies\",status=\"InvalidArgument\"}"
        ),
        1.0,
        "{metrics}"
    );

    let ingested = grpc
        .ingest_events(IngestEventsRequest {
            events: vec![
                flat("grpc", "gpt-4o", now_ms(), 250.0, "grpc-1").to_string(),
                "{not json".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ingested.applied, ingested.rejected), (1, 1));
    assert_eq!(ingested.results[0].event_id, "grpc-1");
    assert_eq!(ingested.results[1].status, "rejected");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.grpc))
        .expect("an endpoint")
        .connect()
        .await
        .expect("the router's gRPC API");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("a service list: {answer:?}");
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(services.contains(&"sentinel.v1.Sentinel"), "{services:?}");
}
