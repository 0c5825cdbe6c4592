//! The default detector set on the false-alarm stream: catches the 10× latency spikes
//! and leaves clean calls alone.

use sentinel_bench::stream::{detector_sets, evaluate, StreamConfig};
use sentinel_core::DetectionConfig;

#[test]
fn default_set_catches_spikes_without_flagging_clean_calls() {
    let c = evaluate(StreamConfig::default(), DetectionConfig::default());
    assert!(c.spikes > 1500, "the stream injects 0.5% spikes");
    assert!(
        c.recall() >= 0.99,
        "recall {:.4} below 0.99 ({c:?})",
        c.recall()
    );
    assert!(
        c.false_alarm_rate() <= 0.005,
        "{:.4}% of clean calls flagged ({c:?})",
        100.0 * c.false_alarm_rate()
    );
    assert_eq!(c.incidents, 0, "isolated spikes are records, not incidents");
}

#[test]
fn agreement_is_more_precise_than_z_score_or_iqr_alone() {
    let stream = StreamConfig {
        events: 100_000,
        ..StreamConfig::default()
    };
    let results: Vec<_> = detector_sets()
        .into_iter()
        .map(|(name, cfg)| (name, evaluate(stream, cfg)))
        .collect();
    let default = results.iter().find(|(n, _)| *n == "default").unwrap().1;
    assert!(default.recall() >= 0.99, "{default:?}");
    for (name, c) in &results {
        if matches!(*name, "z_score" | "iqr") {
            assert!(c.precision() < default.precision(), "{name}: {c:?}");
            assert!(
                c.false_alarm_rate() > default.false_alarm_rate(),
                "{name}: {c:?}"
            );
        }
    }
    let naive = results
        .iter()
        .find(|(n, _)| n.starts_with("any-of-four"))
        .unwrap()
        .1;
    assert!(naive.false_alarm_rate() > 10.0 * default.false_alarm_rate());
}
