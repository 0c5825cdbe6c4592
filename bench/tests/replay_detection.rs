//! The run command's replay, end to end: every injected incident opens exactly one
//! incident on its key, quickly, and clean traffic stays (nearly) silent.

use sentinel_bench::outcome::run;
use sentinel_core::DetectionConfig;
use sentinel_local::replay::{IncidentKind, ReplayConfig};

/// Documented bound (docs/benchmarks.md): incidents opened by clean traffic in one replay.
const MAX_FALSE_INCIDENTS: usize = 2;

/// Most event time a spike, burst, blow-up or cost jump may take to open an incident.
const SUDDEN_TARGET_MS: i64 = 5_000;

/// Most event time the median slow drift may take to open one.
const DRIFT_TARGET_MS: i64 = 120_000;

/// Seeds the replay is scored on: the default one and eleven more (docs/benchmarks.md).
const SEEDS: [u64; 12] = [42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

#[test]
fn every_injected_incident_opens_one_incident_quickly_and_clean_traffic_stays_quiet() {
    let mut drift_ms = Vec::new();
    for seed in SEEDS {
        let replay = ReplayConfig {
            seed,
            ..ReplayConfig::default()
        };
        let outcome = run(replay, DetectionConfig::default(), 32, |_, _| {}).unwrap();
        assert_eq!(outcome.incidents.len(), 5);
        for o in &outcome.incidents {
            let i = &o.incident;
            assert_eq!(
                o.opened_ms.len(),
                1,
                "seed {seed}: {} ({:?}) opened {} incidents",
                i.id,
                i.kind,
                o.opened_ms.len()
            );
            let took = o.time_to_open_ms().unwrap();
            if i.kind == IncidentKind::SlowDrift {
                drift_ms.push(took);
            } else {
                assert!(
                    took <= SUDDEN_TARGET_MS,
                    "seed {seed}: {} ({:?}) took {took} ms to open",
                    i.id,
                    i.kind
                );
            }
        }
        assert_eq!(
            outcome.stats.rejected, 0,
            "the replay generates valid events"
        );
        assert!(
            outcome.stats.redactions.total() > 0,
            "PII in replayed text is redacted"
        );
        assert!(
            outcome.false_incidents.len() <= MAX_FALSE_INCIDENTS,
            "seed {seed}: clean traffic opened {:?}",
            outcome.false_incidents
        );
    }
    drift_ms.sort_unstable();
    let median = (drift_ms[5] + drift_ms[6]) / 2;
    assert!(
        median <= DRIFT_TARGET_MS,
        "slow drifts opened after {drift_ms:?} ms (median {median})"
    );
}

#[test]
fn a_clean_replay_opens_no_incident() {
    let replay = ReplayConfig {
        incidents: false,
        ..ReplayConfig::default()
    };
    let outcome = run(replay, DetectionConfig::default(), 32, |_, _| {}).unwrap();
    assert!(
        outcome.false_incidents.is_empty(),
        "{:?}",
        outcome.false_incidents
    );
    assert_eq!(outcome.notifications, 0);
}
