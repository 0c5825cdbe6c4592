//! The run command's replay, end to end: every injected incident becomes an alert on
//! its key, and clean traffic stays under the documented false-alarm bound.

use sentinel_bench::outcome::run;
use sentinel_bench::replay::ReplayConfig;
use sentinel_core::DetectionConfig;

/// Documented bound (docs/benchmarks.md): alerts on clean traffic per 10,000 clean events.
const MAX_FALSE_ALERTS_PER_10K: f64 = 8.0;

#[test]
fn every_injected_incident_is_detected_and_clean_traffic_stays_quiet() {
    let outcome = run(
        ReplayConfig::default(),
        DetectionConfig::default(),
        32,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(outcome.incidents.len(), 5);
    for o in &outcome.incidents {
        let first = o.first_alert.as_ref().unwrap_or_else(|| {
            panic!("{} ({:?}) was not detected", o.incident.id, o.incident.kind)
        });
        assert_eq!(first.service_name, o.incident.service);
        assert_eq!(first.model, o.incident.model);
        // caught while it lasted, not in the grace period after it
        assert!(
            first.timestamp_ms < o.incident.end_ms,
            "{} caught only after it ended",
            o.incident.id
        );
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
        outcome.false_alerts_per_10k() <= MAX_FALSE_ALERTS_PER_10K,
        "{:.2} false alerts per 10k clean events",
        outcome.false_alerts_per_10k()
    );
}

#[test]
fn clean_replay_raises_no_error_rate_or_drift_alerts() {
    let replay = ReplayConfig {
        incidents: false,
        ..ReplayConfig::default()
    };
    let outcome = run(replay, DetectionConfig::default(), 32, |_, _| {}).unwrap();
    let kinds: Vec<_> = outcome
        .false_alerts
        .iter()
        .filter(|a| a.detection_method == "cusum" || a.detection_method == "error_rate")
        .map(|a| format!("{} {} {}", a.service_name, a.model, a.anomaly_type.name()))
        .collect();
    assert!(kinds.is_empty(), "{kinds:?}");
}
