//! Tests of the replay generator: determinism, realism against the fitted parameters,
//! incident placement and labels, and that the committed parameters match the traces.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use sentinel_core::PriceTable;

use sentinel_local::replay::catalog;
use sentinel_local::replay::params::LATENCY_PROFILES;
use sentinel_local::replay::profile::{LatencyProfile, TokenMix};
use sentinel_local::replay::{
    fit_traces, model_traits, params, FittedParams, Incident, IncidentId, IncidentKind,
    LabeledEvent, ModelTraits, Replay, ReplayConfig, ReplayError, Workload,
};

/// One service × model key of the default configuration.
struct KeyInfo {
    service: String,
    model: String,
    workload: Workload,
    reports_cost: bool,
    max_prompt: u64,
    profile: &'static LatencyProfile,
    traits: ModelTraits,
}

/// The parts of an event the statistical checks need.
struct Row {
    timestamp_ms: i64,
    key: usize,
    latency_ms: f64,
    ttft_ms: Option<f64>,
    prompt: u64,
    completion: u64,
    cost: Option<f64>,
    status: Option<u16>,
    incident: Option<IncidentId>,
}

/// A full default replay, reduced to rows, with every sanity violation found on the way.
struct Run {
    keys: Vec<KeyInfo>,
    rows: Vec<Row>,
    incidents: Vec<Incident>,
    start_ms: i64,
    end_ms: i64,
    violations: Vec<String>,
    texts: usize,
    texts_with_email: usize,
    texts_with_phone: usize,
}

fn keys_of(config: &ReplayConfig) -> Vec<KeyInfo> {
    let mut keys = Vec::new();
    for s in &config.services {
        for m in &s.models {
            keys.push(KeyInfo {
                service: s.name.clone(),
                model: m.model.clone(),
                workload: s.workload,
                reports_cost: s.reports_cost,
                max_prompt: u64::from(s.max_prompt_tokens),
                profile: LATENCY_PROFILES
                    .iter()
                    .find(|p| p.name == m.latency_profile.as_str())
                    .expect("default profiles exist"),
                traits: model_traits(&m.model).expect("default models are known"),
            });
        }
    }
    keys
}

fn sanity(e: &LabeledEvent, start_ms: i64, end_ms: i64, previous_ms: i64) -> Vec<String> {
    let ev = &e.event;
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            bad.push(format!("{what}: {ev:?}"));
        }
    };
    check(ev.latency_ms > 0.0 && ev.latency_ms <= 300_000.0, "latency");
    check(
        !ev.service.is_empty() && !ev.model.is_empty(),
        "service/model",
    );
    check(ev.timestamp_ms >= previous_ms, "time order");
    check(
        (start_ms..end_ms).contains(&ev.timestamp_ms),
        "time in range",
    );
    let tokens = [ev.prompt_tokens, ev.completion_tokens, ev.total_tokens];
    check(
        tokens.iter().all(|t| t.is_some_and(|t| t <= 100_000)),
        "tokens",
    );
    check(
        ev.total_tokens == Some(ev.prompt_tokens.unwrap_or(0) + ev.completion_tokens.unwrap_or(0)),
        "total tokens",
    );
    check(
        ev.cost_usd.is_none_or(|c| (0.0..=100.0).contains(&c)),
        "cost",
    );
    let id = ev.event_id.as_deref().unwrap_or("");
    check(
        id.len() == 36 && id.split('-').map(str::len).eq([8, 4, 4, 4, 12]),
        "event_id",
    );
    check(
        ev.trace_id.as_ref().is_some_and(|t| t.len() == 32)
            && ev.span_id.as_ref().is_some_and(|s| s.len() == 16),
        "trace/span ids",
    );
    check(
        ev.user_id.is_some() && ev.session_id.is_some() && ev.request_id.is_some(),
        "user/session/request",
    );
    check(ev.is_error() == ev.finish_reason.is_none(), "finish_reason");
    check(
        !ev.is_error() || ev.completion_tokens == Some(0),
        "error has no output",
    );
    bad
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let config = ReplayConfig::default();
        let keys = keys_of(&config);
        let replay = Replay::new(config).expect("default config is valid");
        let (start_ms, end_ms) = (replay.start_ms(), replay.end_ms());
        let incidents = replay.incidents().to_vec();
        let index: BTreeMap<(String, String), usize> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((k.service.clone(), k.model.clone()), i))
            .collect();
        let mut run = Run {
            keys,
            rows: Vec::new(),
            incidents,
            start_ms,
            end_ms,
            violations: Vec::new(),
            texts: 0,
            texts_with_email: 0,
            texts_with_phone: 0,
        };
        let mut previous = start_ms;
        for e in replay {
            if run.violations.len() < 20 {
                run.violations
                    .extend(sanity(&e, start_ms, end_ms, previous));
            }
            previous = e.event.timestamp_ms;
            let ev = e.event;
            if let Some(text) = &ev.prompt_text {
                run.texts += 1;
                run.texts_with_email += usize::from(text.contains('@'));
                run.texts_with_phone += usize::from(text.contains("555-"));
            }
            run.rows.push(Row {
                timestamp_ms: ev.timestamp_ms,
                key: index[&(ev.service, ev.model)],
                latency_ms: ev.latency_ms,
                ttft_ms: ev.metadata.get("ttft_ms").and_then(|v| v.as_f64()),
                prompt: ev.prompt_tokens.unwrap_or(0),
                completion: ev.completion_tokens.unwrap_or(0),
                cost: ev.cost_usd,
                status: ev
                    .metadata
                    .get("http_status")
                    .and_then(|v| v.as_u64())
                    .map(|s| s as u16),
                incident: e.incident,
            });
        }
        run
    })
}

fn quantile(mut xs: Vec<f64>, p: f64) -> f64 {
    assert!(!xs.is_empty(), "no samples");
    xs.sort_by(f64::total_cmp);
    let h = (xs.len() - 1) as f64 * p;
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(xs.len() - 1);
    xs[lo] + (h - lo as f64) * (xs[hi] - xs[lo])
}

fn assert_rel(what: &str, got: f64, want: f64, rel: f64) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: got {got}, want {want} ± {:.0} %",
        rel * 100.0
    );
}

fn small_config(seed: u64) -> ReplayConfig {
    ReplayConfig {
        seed,
        max_events: Some(20_000),
        incidents: false,
        ..ReplayConfig::default()
    }
}

#[test]
fn same_seed_same_events() {
    let a: Vec<LabeledEvent> = Replay::new(small_config(7)).unwrap().collect();
    let b: Vec<LabeledEvent> = Replay::new(small_config(7)).unwrap().collect();
    assert_eq!(a.len(), 20_000);
    assert!(a == b, "same seed gave different events");
    let c: Vec<LabeledEvent> = Replay::new(small_config(8)).unwrap().collect();
    assert!(a != c, "different seeds gave the same events");

    let with_incidents = || {
        let r = Replay::new(ReplayConfig::default()).unwrap();
        (r.incidents().to_vec(), r.take(5_000).collect::<Vec<_>>())
    };
    assert!(with_incidents() == with_incidents());
}

#[test]
fn every_event_is_sane() {
    let run = run();
    assert!(run.violations.is_empty(), "{:#?}", run.violations);
    let minutes = (run.end_ms - run.start_ms) as f64 / 60_000.0;
    let per_minute = run.rows.len() as f64 / minutes;
    assert!(
        (4_000.0..20_000.0).contains(&per_minute),
        "{per_minute} events per minute"
    );
    let first_3_min = run
        .rows
        .iter()
        .filter(|r| r.timestamp_ms < run.start_ms + 180_000)
        .count();
    assert!(
        (15_000..60_000).contains(&first_3_min),
        "{first_3_min} events in the first 3 minutes"
    );
}

#[test]
fn texts_sometimes_carry_pii() {
    let run = run();
    let rate = run.texts as f64 / run.rows.len() as f64;
    assert_rel("text rate", rate, 0.05, 0.1);
    assert!(run.texts_with_email > 50, "{} emails", run.texts_with_email);
    assert!(run.texts_with_phone > 20, "{} phones", run.texts_with_phone);
    assert!(run.texts_with_email + run.texts_with_phone < run.texts / 2);
}

/// Clean (unlabelled) rows of one key.
fn clean(run: &Run, key: usize) -> impl Iterator<Item = &Row> {
    run.rows
        .iter()
        .filter(move |r| r.key == key && r.incident.is_none())
}

#[test]
fn latency_matches_fitted_profiles() {
    let run = run();
    for (k, key) in run.keys.iter().enumerate() {
        let ok: Vec<&Row> = clean(run, k).filter(|r| r.status.is_none()).collect();
        let ttft: Vec<f64> = ok
            .iter()
            .map(|r| r.ttft_ms.unwrap() - key.traits.prefill_ms(r.prompt))
            .collect();
        let per_token: Vec<f64> = ok
            .iter()
            .filter(|r| r.completion >= 20)
            .map(|r| (r.latency_ms - r.ttft_ms.unwrap()) / (r.completion - 1) as f64)
            .collect();
        if per_token.len() < 1_000 {
            continue;
        }
        let what = format!("{}/{} ({})", key.service, key.model, key.profile.name);
        for p in [0.1, 0.5, 0.9] {
            assert_rel(
                &format!("{what} ttft p{}", p * 100.0),
                quantile(ttft.clone(), p),
                key.profile.ttft_s.quantile(p) * 1000.0,
                0.06,
            );
            assert_rel(
                &format!("{what} ms/token p{}", p * 100.0),
                quantile(per_token.clone(), p),
                key.profile.time_per_output_token_s.quantile(p) * 1000.0,
                0.06,
            );
        }
    }
}

fn mix(workload: Workload) -> &'static TokenMix {
    params::TOKEN_MIXES
        .iter()
        .find(|m| m.name == workload.name())
        .unwrap()
}

#[test]
fn tokens_match_fitted_mixes() {
    let run = run();
    for workload in [
        Workload::Code,
        Workload::Conversation,
        Workload::LongContext,
    ] {
        let keys: Vec<usize> = (0..run.keys.len())
            .filter(|&k| run.keys[k].workload == workload)
            .collect();
        let rows: Vec<&Row> = run
            .rows
            .iter()
            .filter(|r| keys.contains(&r.key) && r.incident.is_none())
            .collect();
        let max_prompt = run.keys[keys[0]].max_prompt as f64;
        let prompts: Vec<f64> = rows.iter().map(|r| r.prompt as f64).collect();
        let outputs: Vec<f64> = rows
            .iter()
            .filter(|r| r.status.is_none())
            .map(|r| r.completion as f64)
            .collect();
        let table = mix(workload);
        for p in [0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            // The p99 sits on a steep tail, so sampling noise there is larger.
            let rel = if p > 0.95 { 0.15 } else { 0.05 };
            let want_in = table.input_tokens.quantile(p).round().min(max_prompt);
            let want_out = table.output_tokens.quantile(p).round();
            let got_in = quantile(prompts.clone(), p);
            let got_out = quantile(outputs.clone(), p);
            assert!(
                (got_in - want_in).abs() <= rel * want_in + 3.0,
                "{workload:?} input p{p}: got {got_in}, want {want_in}"
            );
            assert!(
                (got_out - want_out).abs() <= rel * want_out + 3.0,
                "{workload:?} output p{p}: got {got_out}, want {want_out}"
            );
        }
    }
}

#[test]
fn error_rates_match_fitted_profiles() {
    let run = run();
    let mut total_errors = 0;
    let mut total = 0;
    for (k, key) in run.keys.iter().enumerate() {
        let rows: Vec<&Row> = clean(run, k).collect();
        let n = rows.len() as f64;
        let rate_limited = rows.iter().filter(|r| r.status == Some(429)).count() as f64;
        let errors = rows.iter().filter(|r| r.status.is_some()).count() as f64;
        total_errors += errors as usize;
        total += rows.len();
        let p = key.profile.rate_limit_rate + key.profile.other_error_rate;
        let tolerance = |p: f64| 4.0 * (p * (1.0 - p) / n).sqrt() + 0.0005;
        let what = format!("{}/{}", key.service, key.model);
        assert!(
            (errors / n - p).abs() <= tolerance(p),
            "{what}: error rate {} vs {p}",
            errors / n
        );
        let p429 = key.profile.rate_limit_rate;
        assert!(
            (rate_limited / n - p429).abs() <= tolerance(p429),
            "{what}: 429 rate {} vs {p429}",
            rate_limited / n
        );
    }
    let overall = total_errors as f64 / total as f64;
    assert!(
        (0.003..0.02).contains(&overall),
        "overall clean error rate {overall}"
    );
}

fn key_of(run: &Run, incident: &Incident) -> usize {
    run.keys
        .iter()
        .position(|k| k.service == incident.service && k.model == incident.model)
        .expect("incident key exists")
}

fn median(xs: impl Iterator<Item = f64>) -> f64 {
    quantile(xs.collect(), 0.5)
}

#[test]
fn incidents_are_laid_out_as_promised() {
    let run = run();
    let kinds: Vec<IncidentKind> = run.incidents.iter().map(|i| i.kind).collect();
    assert_eq!(kinds, IncidentKind::ALL);
    let mut keys: Vec<usize> = run.incidents.iter().map(|i| key_of(run, i)).collect();
    for pair in run.incidents.windows(2) {
        assert!(pair[0].end_ms <= pair[1].start_ms, "overlap: {pair:?}");
    }
    for (n, inc) in run.incidents.iter().enumerate() {
        assert_eq!(inc.id, IncidentId(n as u32 + 1));
        assert!(inc.start_ms >= run.start_ms && inc.end_ms <= run.end_ms);
        assert!(!inc.signals.is_empty());
        let key = key_of(run, inc);
        let before = run
            .rows
            .iter()
            .filter(|r| r.key == key && r.timestamp_ms < inc.start_ms)
            .count();
        assert!(before >= 1_500, "{} has {before} events before", inc.id);
        let inside = run
            .rows
            .iter()
            .filter(|r| r.key == key && inc.covers(r.timestamp_ms))
            .count();
        assert!(inside >= 100, "{} covers only {inside} events", inc.id);
    }
    if let Some(i) = run
        .incidents
        .iter()
        .find(|i| i.kind == IncidentKind::CostJump)
    {
        assert!(run.keys[key_of(run, i)].reports_cost);
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), run.incidents.len(), "incidents share a key");
}

#[test]
fn labels_match_incident_windows_and_clean_keys_stay_clean() {
    let run = run();
    let incident_keys: Vec<usize> = run.incidents.iter().map(|i| key_of(run, i)).collect();
    for r in &run.rows {
        let covering = run
            .incidents
            .iter()
            .find(|i| key_of(run, i) == r.key && i.covers(r.timestamp_ms));
        assert_eq!(r.incident, covering.map(|i| i.id));
        if !incident_keys.contains(&r.key) {
            assert!(r.incident.is_none());
        }
    }
    let clean_keys = (0..run.keys.len())
        .filter(|k| !incident_keys.contains(k))
        .count();
    assert!(clean_keys >= 3, "only {clean_keys} clean keys");

    let plain: Vec<LabeledEvent> = Replay::new(small_config(3)).unwrap().collect();
    assert!(plain.iter().all(|e| e.incident.is_none()));
    assert!(Replay::new(small_config(3)).unwrap().incidents().is_empty());
}

#[test]
fn incident_effects_are_visible() {
    let run = run();
    for inc in &run.incidents {
        let key = key_of(run, inc);
        let traits = run.keys[key].traits;
        let ok = |r: &&Row| r.key == key && r.status.is_none();
        let before: Vec<&Row> = run
            .rows
            .iter()
            .filter(ok)
            .filter(|r| r.timestamp_ms < inc.start_ms)
            .collect();
        let inside: Vec<&Row> = run
            .rows
            .iter()
            .filter(ok)
            .filter(|r| inc.covers(r.timestamp_ms))
            .collect();
        let base_latency = median(before.iter().map(|r| r.latency_ms));
        match inc.kind {
            IncidentKind::LatencySpike => {
                assert!((5.0..=20.0).contains(&inc.magnitude));
                let spiked = median(inside.iter().map(|r| r.latency_ms));
                assert!(
                    spiked >= 5.0 * base_latency,
                    "spike median {spiked} vs {base_latency}"
                );
            }
            IncidentKind::SlowDrift => {
                assert!((2.0..=3.0).contains(&inc.magnitude));
                let span = (inc.end_ms - inc.start_ms) as f64;
                let phase = |from: f64, to: f64| {
                    median(
                        inside
                            .iter()
                            .filter(|r| {
                                let x = (r.timestamp_ms - inc.start_ms) as f64 / span;
                                (from..to).contains(&x)
                            })
                            .map(|r| r.latency_ms),
                    )
                };
                let early = phase(0.0, 0.1) / base_latency;
                let late = phase(0.9, 1.0) / base_latency;
                assert!(early < 1.35, "drift starts at x{early}");
                assert!(
                    late > 0.75 * inc.magnitude,
                    "drift ends at x{late}, magnitude {}",
                    inc.magnitude
                );
            }
            IncidentKind::TokenBlowup => {
                let base = median(before.iter().map(|r| r.completion as f64));
                let blown = median(inside.iter().map(|r| r.completion as f64));
                assert!(blown >= 5.0 * base, "completion {blown} vs {base}");
            }
            IncidentKind::CostJump => {
                for (rows, factor) in [(&before, 1.0), (&inside, inc.magnitude)] {
                    for r in rows.iter() {
                        let list = traits.cost_usd(r.prompt, r.completion);
                        let cost = r.cost.expect("cost-reporting key");
                        assert!((cost - factor * list).abs() <= 1e-9 * list.max(1.0));
                    }
                }
            }
            IncidentKind::ErrorBurst => {
                let rate = |from: i64, to: i64| {
                    let rows: Vec<&Row> = run
                        .rows
                        .iter()
                        .filter(|r| r.key == key && (from..to).contains(&r.timestamp_ms))
                        .collect();
                    rows.iter().filter(|r| r.status.is_some()).count() as f64 / rows.len() as f64
                };
                let during = rate(inc.start_ms, inc.end_ms);
                let earlier = rate(run.start_ms, inc.start_ms);
                assert!(earlier < 0.05, "error rate before {earlier}");
                assert!(
                    (during - inc.magnitude).abs() < 0.1 && (0.25..0.7).contains(&during),
                    "error rate during {during}, magnitude {}",
                    inc.magnitude
                );
            }
        }
    }
}

#[test]
fn arrivals_are_bursty_like_the_traces() {
    let run = run();
    let cv_of = |workload: Workload| {
        let keys: Vec<usize> = (0..run.keys.len())
            .filter(|&k| run.keys[k].workload == workload)
            .collect();
        let service = &run.keys[keys[0]].service;
        let times: Vec<f64> = run
            .rows
            .iter()
            .filter(|r| &run.keys[r.key].service == service)
            .map(|r| r.timestamp_ms as f64)
            .collect();
        let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        var.sqrt() / mean
    };
    let conversation = cv_of(Workload::Conversation);
    let code = cv_of(Workload::Code);
    assert!(
        (0.8..2.0).contains(&conversation),
        "conversation inter-arrival CV {conversation}"
    );
    assert!(code > 3.0, "code inter-arrival CV {code}");
}

#[test]
fn limits_and_bad_configurations() {
    let n = Replay::new(ReplayConfig {
        max_events: Some(123),
        ..ReplayConfig::default()
    })
    .unwrap()
    .count();
    assert_eq!(n, 123);

    let err = |config: ReplayConfig| Replay::new(config).expect_err("config rejected");
    assert!(matches!(
        err(ReplayConfig {
            duration_s: 0.0,
            ..ReplayConfig::default()
        }),
        ReplayError::Config(_)
    ));
    assert!(matches!(
        err(ReplayConfig {
            duration_s: 600.0,
            ..ReplayConfig::default()
        }),
        ReplayError::IncidentsDoNotFit { .. }
    ));
    assert!(matches!(
        err(ReplayConfig {
            start: "yesterday".into(),
            ..ReplayConfig::default()
        }),
        ReplayError::Start { .. }
    ));
    let mut config = ReplayConfig::default();
    config.services[0].models[0].latency_profile = "nowhere_1b".into();
    assert!(matches!(err(config), ReplayError::UnknownProfile { .. }));
    let mut config = ReplayConfig::default();
    config.services[0].models[0].model = "gpt-9".into();
    assert!(matches!(err(config), ReplayError::UnknownModel { .. }));
    let mut config = ReplayConfig::default();
    for s in &mut config.services {
        s.reports_cost = false;
    }
    assert!(matches!(
        err(config),
        ReplayError::NoKeyForIncident(IncidentKind::CostJump)
    ));

    let parsed: ReplayConfig = serde_json::from_str(
        r#"{"seed": 9, "duration_s": 60, "incidents": false,
            "services": [{"name": "svc", "workload": "long-context", "share": 1,
                          "models": [{"model": "gpt-4o", "provider": "openai",
                                      "latency_profile": "together_70b"}]}]}"#,
    )
    .unwrap();
    assert_eq!(
        parsed.base_rate_per_s,
        ReplayConfig::default().base_rate_per_s
    );
    let events: Vec<LabeledEvent> = Replay::new(parsed).unwrap().collect();
    assert!(events.len() > 1_000);
    assert!(events.iter().all(|e| e.event.service == "svc"));
    assert!(serde_json::from_str::<ReplayConfig>(r#"{"sede": 1}"#).is_err());
}

#[test]
fn reported_costs_use_sentinels_price_table() {
    let table = PriceTable::builtin();
    for (model, traits) in catalog::MODELS {
        let price = table
            .lookup(model)
            .unwrap_or_else(|| panic!("{model} missing from the core price table"))
            .price;
        assert_eq!(
            traits.input_usd_per_mtok, price.input_per_million,
            "{model}"
        );
        assert_eq!(
            traits.output_usd_per_mtok, price.output_per_million,
            "{model}"
        );
    }
}

fn traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/llm-traces")
}

#[test]
fn committed_params_are_a_fresh_fit_of_the_traces() {
    let dir = traces_dir();
    if !dir.is_dir() {
        eprintln!(
            "skipping: traces directory {} is absent, cannot re-fit params.rs",
            dir.display()
        );
        return;
    }
    let fresh = fit_traces(&dir).expect("traces fit");
    assert!(
        fresh == FittedParams::committed(),
        "params.rs is stale: run `cargo run -p sentinel-bench --bin fit-replay > local/src/replay/params.rs`"
    );
    assert_eq!(
        fresh.to_rust_source(),
        include_str!("../src/replay/params.rs"),
        "params.rs differs from what fit-replay prints"
    );
}

/// Generation speed; run with `cargo test --release -p sentinel-bench --test replay_generator -- --ignored --nocapture`.
#[test]
#[ignore = "timing only"]
fn generation_throughput() {
    let replay = Replay::new(ReplayConfig {
        duration_s: 4.0 * 3_600.0,
        ..ReplayConfig::default()
    })
    .unwrap();
    let started = Instant::now();
    let mut n = 0u64;
    let mut checksum = 0.0;
    for e in replay {
        n += 1;
        checksum += e.event.latency_ms;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{n} events in {secs:.2} s: {:.2} M events/s (checksum {checksum:.0})",
        n as f64 / secs / 1e6
    );
}
