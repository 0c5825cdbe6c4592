//! Sentinel's detectors as NAB detectors: z-score, IQR, MAD, CUSUM, onset and the live set.
//!
//! The four classic detectors run as the product runs them with its defaults
//! (`DetectionConfig::default()`: a window of 1000, 10 samples before scoring,
//! thresholds z 3.0, IQR 1.5, MAD 3.5, CUSUM h 5.0 / k 0.5): each value is scored
//! against the window as it was before the value, then pushed.
//! NAB series are scored on their own (linear) scale in both directions. NAB series
//! come in every unit, so instead of a per-metric floor in metric units the spread a
//! detector divides by is floored at 1% of the window's range (a scale-free stand-in;
//! without it, windows of repeated values, such as runs of zero counts, turn every
//! small change into an astronomically large score).
//!
//! A raw statistic `s` becomes the anomaly score `|s| / (|s| + t)`, where `t` is the
//! detector's product threshold: monotone, so NAB's threshold sweep sees the same
//! ranking, and 0.5 means exactly at the product's threshold.

use sentinel_core::config::{CusumConfig, DetectionConfig, DetectorKind, MetricConfig};
use sentinel_core::detect::{iqr_score, modified_z_score, z_score, ScaleFloor};
use sentinel_core::drift::MeanCusum;
use sentinel_core::onset::{OnsetConfig, OnsetDetector};
use sentinel_core::pricing::{extract_metrics, PriceTable};
use sentinel_core::Window;
use sentinel_core::{Event, Metric, NotificationKind, ShardDetector};

use super::NabDetector;

/// Fraction of the window's range that the spread is floored at.
const RANGE_FLOOR: f64 = 0.01;

/// The spread floor for a window: 1% of its range (0 for an empty window).
fn floor(window: &Window) -> ScaleFloor {
    let range = match (window.min(), window.max()) {
        (Some(lo), Some(hi)) => hi - lo,
        _ => 0.0,
    };
    ScaleFloor {
        absolute: RANGE_FLOOR * range,
        relative: 0.0,
    }
}

/// Maps a raw statistic to `[0, 1)` so that the product threshold lands on 0.5.
fn squash(statistic: f64, threshold: f64) -> f64 {
    let s = statistic.abs();
    s / (s + threshold)
}

/// Which point statistic a [`PointDetector`] computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointStatistic {
    /// `(x − mean)/σ`.
    ZScore,
    /// Distance past the nearer quartile in IQR units.
    Iqr,
    /// `0.6745 (x − median)/MAD`.
    Mad,
}

/// One of Sentinel's point detectors over a sliding window.
#[derive(Debug, Clone)]
pub struct PointDetector {
    statistic: PointStatistic,
    window: Window,
    min_samples: usize,
    threshold: f64,
}

impl PointDetector {
    /// The detector with the product's default window, warm-up and threshold.
    pub fn new(statistic: PointStatistic) -> Self {
        let config = DetectionConfig::default();
        let threshold = match statistic {
            PointStatistic::ZScore => config.z_score.threshold,
            PointStatistic::Iqr => config.iqr.threshold,
            PointStatistic::Mad => config.mad.threshold,
        };
        PointDetector {
            statistic,
            window: Window::new(config.window_size),
            min_samples: config.min_samples,
            threshold,
        }
    }
}

impl NabDetector for PointDetector {
    fn name(&self) -> &str {
        match self.statistic {
            PointStatistic::ZScore => "sentinelZscore",
            PointStatistic::Iqr => "sentinelIqr",
            PointStatistic::Mad => "sentinelMad",
        }
    }

    fn score(&mut self, _timestamp: i64, value: f64) -> f64 {
        let statistic = if self.window.len() >= self.min_samples {
            let floor = floor(&self.window);
            match self.statistic {
                PointStatistic::ZScore => z_score(&self.window, value, floor),
                PointStatistic::Iqr => iqr_score(&self.window, value, floor),
                PointStatistic::Mad => modified_z_score(&self.window, value, floor),
            }
        } else {
            None
        };
        self.window.push(value);
        statistic.map_or(0.0, |s| squash(s, self.threshold))
    }
}

/// Sentinel's CUSUM drift detector, stepped as `sentinel_core::drift` steps it.
///
/// The product averages a metric per event-time bucket (60 s by default) and judges
/// each closed bucket; NAB rows are at least 5 minutes apart, so every row is a
/// bucket of one. Each value is standardised against the median and robust spread
/// (MAD / 0.6745) of the previous bucket means — a reference that only moves while
/// the CUSUM is quiet — clipped, and fed to the two-sided CUSUM, which resets after
/// an alarm. The spread is floored at 1% of the window's range instead of the
/// product's absolute per-metric floor, which is in metric units. The score is the
/// CUSUM statistic.
#[derive(Debug, Clone)]
pub struct CusumDetector {
    inner: MeanCusum,
    config: CusumConfig,
}

impl CusumDetector {
    /// The detector with the product's default settings.
    pub fn new() -> Self {
        let config = DetectionConfig::default().cusum;
        CusumDetector {
            inner: MeanCusum::new(config.baseline_buckets),
            config,
        }
    }
}

impl Default for CusumDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl NabDetector for CusumDetector {
    fn name(&self) -> &str {
        "sentinelCusum"
    }

    fn score(&mut self, _timestamp: i64, value: f64) -> f64 {
        let floor = floor(self.inner.means()).at(value);
        self.inner
            .step(value, 1.0, floor, &self.config)
            .map_or(0.0, |step| squash(step.statistic, self.config.threshold))
    }
}

/// The onset detector ([`sentinel_core::onset`]) with its default configuration.
#[derive(Debug, Clone)]
pub struct OnsetNabDetector {
    inner: OnsetDetector,
}

impl OnsetNabDetector {
    /// A detector with [`OnsetConfig::default`].
    pub fn new() -> Self {
        OnsetNabDetector {
            inner: OnsetDetector::new(OnsetConfig::default()),
        }
    }
}

impl Default for OnsetNabDetector {
    fn default() -> Self {
        Self::new()
    }
}

impl NabDetector for OnsetNabDetector {
    fn name(&self) -> &str {
        "sentinelOnset"
    }

    fn score(&mut self, timestamp: i64, value: f64) -> f64 {
        self.inner.update(timestamp, value).score
    }
}

/// The live detector set as a node runs it: each NAB value is the latency of one call on
/// one key (negative values, which intake refuses, clamped to 0), and a row scores 1 when
/// it opens an incident — what pages — and 0 otherwise.
pub struct LiveNabDetector {
    detector: ShardDetector,
    prices: PriceTable,
    rows: u64,
    onset: bool,
}

impl LiveNabDetector {
    /// The shipped configuration; with `onset`, the onset detector also listed for latency.
    pub fn new(onset: bool) -> Self {
        let mut config = DetectionConfig::default();
        if onset {
            let mut latency = MetricConfig::default_for(Metric::LatencyMs);
            latency.detectors.push(DetectorKind::Onset);
            config.metrics.insert(Metric::LatencyMs, latency);
        }
        LiveNabDetector {
            detector: ShardDetector::new(0, config).expect("the shipped configuration is valid"),
            prices: PriceTable::default(),
            rows: 0,
            onset,
        }
    }
}

impl NabDetector for LiveNabDetector {
    fn name(&self) -> &str {
        if self.onset {
            "sentinelLiveOnset"
        } else {
            "sentinelLive"
        }
    }

    fn score(&mut self, timestamp: i64, value: f64) -> f64 {
        self.rows += 1;
        let event = Event {
            event_id: Some(format!("nab-{}", self.rows)),
            timestamp_ms: timestamp * 1000,
            service: "nab".to_owned(),
            model: "series".to_owned(),
            latency_ms: value.max(0.0),
            ..Event::default()
        };
        let values = extract_metrics(&event, &self.prices).values;
        let opened = self
            .detector
            .observe(&event, &values)
            .incidents
            .iter()
            .any(|change| change.kind == NotificationKind::Opened);
        f64::from(u8::from(opened))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [9, 11].
    fn noise(i: i64) -> f64 {
        10.0 + ((i * 7) % 13) as f64 / 6.0 - 1.0
    }

    fn feed(d: &mut dyn NabDetector, n: i64) -> Vec<f64> {
        (0..n).map(|i| d.score(i * 60, noise(i))).collect()
    }

    #[test]
    fn squash_puts_the_product_threshold_at_one_half() {
        assert_eq!(squash(3.0, 3.0), 0.5);
        assert_eq!(squash(-3.0, 3.0), 0.5);
        assert_eq!(squash(0.0, 3.0), 0.0);
        assert!(squash(30.0, 3.0) > squash(6.0, 3.0));
    }

    #[test]
    fn point_detectors_warm_up_then_flag_a_spike_past_their_threshold() {
        for statistic in [
            PointStatistic::ZScore,
            PointStatistic::Iqr,
            PointStatistic::Mad,
        ] {
            let mut d = PointDetector::new(statistic);
            let quiet = feed(&mut d, 300);
            // Nothing is scored before 10 samples are in the window.
            assert!(quiet[..10].iter().all(|&s| s == 0.0), "{statistic:?}");
            assert!(quiet.iter().all(|&s| s < 0.5), "{statistic:?}");
            let spike = d.score(300 * 60, 30.0);
            assert!(spike > 0.5, "{statistic:?}: {spike}");
        }
    }

    #[test]
    fn a_value_is_scored_before_it_is_learned() {
        // With one sample per distinct value the window is scored before the push:
        // the 11th value 1000 is far from the 10 earlier ones even though, once
        // pushed, it dominates the window's mean.
        let mut d = PointDetector::new(PointStatistic::ZScore);
        for i in 0..10 {
            d.score(i, noise(i));
        }
        assert!(d.score(10, 1000.0) > 0.99);
    }

    #[test]
    fn cusum_accumulates_a_small_sustained_shift() {
        let mut d = CusumDetector::new();
        let quiet = feed(&mut d, 500);
        assert!(quiet.iter().all(|&s| s < 0.5));
        // +1σ-ish shift: no single point is extreme, but the sums cross h = 5.
        let shifted: Vec<f64> = (500..600)
            .map(|i| d.score(i * 60, noise(i) + 0.8))
            .collect();
        assert!(shifted.iter().any(|&s| s > 0.5));
    }

    #[test]
    fn onset_adapter_flags_a_spike_once() {
        let mut d = OnsetNabDetector::new();
        feed(&mut d, 500);
        let first = d.score(500 * 60, 40.0);
        let second = d.score(501 * 60, 40.0);
        assert!(first > 0.9);
        assert_eq!(second, 0.0);
    }

    #[test]
    fn the_live_set_scores_one_on_the_row_that_opens_an_incident() {
        for onset in [false, true] {
            let mut d = LiveNabDetector::new(onset);
            let quiet = feed(&mut d, 2_000);
            assert!(quiet.iter().all(|&s| s == 0.0), "onset {onset}");
            let shifted: Vec<f64> = (2_000..2_040).map(|i| d.score(i * 60, 40.0)).collect();
            assert_eq!(
                shifted.iter().sum::<f64>(),
                1.0,
                "onset {onset}: {shifted:?}"
            );
        }
    }
}
