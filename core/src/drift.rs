//! Drift detection: Page's CUSUM over the per-bucket means of one metric, standardised
//! by the spread of past bucket means.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::anomaly::Finding;
use crate::config::{CusumConfig, MetricConfig};
use crate::detect::{Cusum, MAD_CONSISTENCY};
use crate::metric::Metric;
use crate::rate::{window_label, BucketClock};
use crate::window::Window;

/// Page's CUSUM over a sequence of means, each standardised against the median and
/// robust spread of the means before it.
///
/// The reference (median and spread) is frozen while the CUSUM is not quiet (either
/// sum above h/2), so a slow ramp accumulates instead of being absorbed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanCusum {
    means: Window,
    weights: Window,
    cusum: Cusum,
    reference: Option<(f64, f64)>,
}

/// What one step of a [`MeanCusum`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CusumStep {
    /// The larger CUSUM sum after this step (before an alarm resets it).
    pub statistic: f64,
    /// The mean, standardised and clipped.
    pub z: f64,
    /// Median of the earlier means.
    pub centre: f64,
    /// Spread the mean was standardised by.
    pub spread: f64,
    /// `Some(true)` for an upward alarm, `Some(false)` downward, `None` without one.
    pub alarm: Option<bool>,
}

impl MeanCusum {
    /// An empty CUSUM keeping `history` earlier means.
    pub fn new(history: usize) -> Self {
        MeanCusum {
            means: Window::new(history.max(2)),
            weights: Window::new(history.max(2)),
            cusum: Cusum::default(),
            reference: None,
        }
    }

    /// The earlier means, oldest first.
    pub fn means(&self) -> &Window {
        &self.means
    }

    /// Judges `mean` (of `weight` samples) against the earlier means, then records it.
    ///
    /// A mean of fewer samples than usual gets a proportionally wider spread; the
    /// spread is at least `max(cfg.min_spread, floor)`. `None` until
    /// `cfg.min_buckets` means are recorded.
    pub fn step(
        &mut self,
        mean: f64,
        weight: f64,
        floor: f64,
        cfg: &CusumConfig,
    ) -> Option<CusumStep> {
        let step = self.judge(mean, weight, floor, cfg);
        self.means.push(mean);
        self.weights.push(weight);
        step
    }

    fn judge(
        &mut self,
        mean: f64,
        weight: f64,
        floor: f64,
        cfg: &CusumConfig,
    ) -> Option<CusumStep> {
        if self.means.len() < cfg.min_buckets {
            return None;
        }
        let quiet = self.cusum.high.max(self.cusum.low) < cfg.threshold / 2.0;
        if self.reference.is_none() || quiet {
            let centre = self.means.median()?;
            let spread = (self.means.mad()? / MAD_CONSISTENCY)
                .max(cfg.min_spread)
                .max(floor)
                .max(f64::MIN_POSITIVE);
            self.reference = Some((centre, spread));
        }
        let (centre, spread) = self.reference?;
        let typical = self.weights.median()?;
        let spread = spread * (typical / weight).sqrt().max(1.0);
        let z = ((mean - centre) / spread).clamp(-cfg.clip, cfg.clip);
        let statistic = self.cusum.update(z, cfg.drift);
        let alarm = (statistic > cfg.threshold).then_some(self.cusum.high >= self.cusum.low);
        if alarm.is_some() {
            self.cusum.reset();
            self.reference = None;
        }
        Some(CusumStep {
            statistic,
            z,
            centre,
            spread,
            alarm,
        })
    }
}

/// Drift state of one metric of one key: values averaged per event-time bucket, each
/// closed bucket's mean fed to a [`MeanCusum`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    clock: BucketClock,
    sum: f64,
    count: u32,
    cusum: MeanCusum,
}

impl Drift {
    /// An empty drift state keeping `buckets` past bucket means.
    pub fn new(buckets: usize) -> Self {
        Drift {
            clock: BucketClock::default(),
            sum: 0.0,
            count: 0,
            cusum: MeanCusum::new(buckets),
        }
    }

    /// Adds `t` (on the metric's scale) at `at_ms`; judges the bucket it closes, if any.
    pub(crate) fn observe(
        &mut self,
        at_ms: i64,
        t: f64,
        raw: f64,
        metric: Metric,
        mc: &MetricConfig,
        cfg: &CusumConfig,
    ) -> Option<Finding> {
        let mut finding = None;
        if self.clock.advance(at_ms, cfg.bucket_ms) > 0 && self.count > 0 {
            let mean = self.sum / f64::from(self.count);
            let count = f64::from(self.count);
            self.sum = 0.0;
            self.count = 0;
            let floor = mc.floor.at(mean);
            if let Some(step) = self.cusum.step(mean, count, floor, cfg) {
                let bucket = ClosedBucket {
                    mean,
                    count,
                    history: self.cusum.means().len() as u64,
                };
                finding = alarm_finding(step, &bucket, raw, metric, mc, cfg);
            }
        }
        self.sum += t;
        self.count = self.count.saturating_add(1);
        finding
    }
}

/// A bucket just judged: its mean, its calls and the means recorded before it.
struct ClosedBucket {
    mean: f64,
    count: f64,
    history: u64,
}

/// The finding of a CUSUM step that alarmed in the direction the metric watches.
fn alarm_finding(
    step: CusumStep,
    bucket: &ClosedBucket,
    raw: f64,
    metric: Metric,
    mc: &MetricConfig,
    cfg: &CusumConfig,
) -> Option<Finding> {
    let upward = step.alarm?;
    let side = if upward { 1.0 } else { -1.0 };
    if !mc.direction.admits(side) {
        return None;
    }
    let mut additional = BTreeMap::new();
    additional.insert("cusum".into(), step.statistic.into());
    additional.insert("decision_interval".into(), cfg.threshold.into());
    additional.insert("drift".into(), cfg.drift.into());
    additional.insert("bucket_mean".into(), mc.scale.inverse(bucket.mean).into());
    additional.insert("bucket_calls".into(), bucket.count.into());
    Some(Finding {
        metric: metric.name(),
        anomaly_type: mc.drift_type,
        method: "cusum",
        value: raw,
        baseline: mc.scale.inverse(step.centre),
        threshold: mc
            .scale
            .inverse(step.centre + side * cfg.drift * step.spread),
        deviation_sigma: (bucket.mean - step.centre) / step.spread,
        ratio: step.statistic / cfg.threshold,
        votes: 1,
        voters: 1,
        sample_count: bucket.history,
        time_window: window_label(cfg.bucket_ms),
        additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anomaly::AnomalyType;

    const MIN: i64 = 60_000;

    /// Latency-like values on the log scale: a fixed wobble around `level` per call.
    fn feed(
        d: &mut Drift,
        minutes: std::ops::Range<i64>,
        level: impl Fn(i64) -> f64,
    ) -> Vec<(i64, Finding)> {
        let mc = MetricConfig::default_for(Metric::LatencyMs);
        let cfg = CusumConfig::default();
        let mut out = Vec::new();
        for m in minutes {
            for i in 0..100i64 {
                let wobble = ((i * 37 + m * 11) % 21 - 10) as f64 * 0.05;
                let t = level(m) + wobble;
                let at = m * MIN + i * 600;
                if let Some(f) = d.observe(at, t, t.exp(), Metric::LatencyMs, &mc, &cfg) {
                    out.push((m, f));
                }
            }
        }
        out
    }

    #[test]
    fn steady_traffic_raises_nothing() {
        let mut d = Drift::new(60);
        assert!(feed(&mut d, 0..600, |_| 6.7).is_empty());
    }

    #[test]
    fn a_slow_ramp_is_caught_within_minutes() {
        let mut d = Drift::new(60);
        assert!(feed(&mut d, 0..60, |_| 6.7).is_empty());
        // +0.09 on the log scale per minute: ×2.5 over ten minutes
        let found = feed(&mut d, 60..70, |m| 6.7 + 0.09 * (m - 59) as f64);
        let (minute, f) = found.first().expect("the ramp is caught");
        assert!(*minute <= 63, "caught at minute {minute}");
        assert_eq!(f.anomaly_type, AnomalyType::LatencyDrift);
        assert_eq!(f.method, "cusum");
    }

    #[test]
    fn a_drop_on_an_upward_metric_is_not_reported() {
        let mut d = Drift::new(60);
        feed(&mut d, 0..60, |_| 6.7);
        assert!(feed(&mut d, 60..90, |_| 6.0).is_empty());
    }
}
