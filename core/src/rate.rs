//! Detectors over event-time buckets: error rate, request rate and per-user usage.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::anomaly::{AnomalyType, Finding};
use crate::config::{ErrorRateConfig, RequestRateConfig, UserUsageConfig};
use crate::detect::{IQR_CONSISTENCY, MAD_CONSISTENCY};
use crate::window::Window;

/// The event-time bucket a bucketed detector is filling.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub(crate) struct BucketClock {
    current: Option<i64>,
}

impl BucketClock {
    /// Moves to the bucket of `at_ms`; returns how many buckets closed (0 for the same bucket or a late event).
    pub(crate) fn advance(&mut self, at_ms: i64, width_ms: i64) -> u64 {
        let index = at_ms.div_euclid(width_ms);
        match self.current {
            Some(current) if index <= current => 0,
            Some(current) => {
                self.current = Some(index);
                u64::try_from(index - current).unwrap_or(u64::MAX)
            }
            None => {
                self.current = Some(index);
                0
            }
        }
    }
}

/// The `time_window` text of a bucket width.
pub(crate) fn window_label(width_ms: i64) -> String {
    format!("{}s", width_ms / 1000)
}

/// Error-rate state of one key: the current bucket and the closed buckets before it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ErrorRate {
    clock: BucketClock,
    requests: u32,
    errors: u32,
    history: VecDeque<(u32, u32)>,
    history_requests: u64,
    history_errors: u64,
}

impl ErrorRate {
    /// Counts one call and judges the current bucket when the call failed.
    pub(crate) fn observe(
        &mut self,
        at_ms: i64,
        failed: bool,
        cfg: &ErrorRateConfig,
    ) -> Option<Finding> {
        let closed = self.clock.advance(at_ms, cfg.bucket_ms);
        if closed > 0 {
            self.close(closed, cfg.baseline_buckets);
        }
        self.requests = self.requests.saturating_add(1);
        if failed {
            self.errors = self.errors.saturating_add(1);
        }
        if !failed || !cfg.enabled {
            return None;
        }
        self.judge(cfg)
    }

    fn close(&mut self, closed: u64, keep: usize) {
        let empties = usize::try_from(closed - 1).unwrap_or(usize::MAX).min(keep);
        let current = (self.requests, self.errors);
        for bucket in std::iter::once(current).chain(std::iter::repeat_n((0, 0), empties)) {
            self.history.push_back(bucket);
            self.history_requests += u64::from(bucket.0);
            self.history_errors += u64::from(bucket.1);
            if self.history.len() > keep {
                if let Some((r, e)) = self.history.pop_front() {
                    self.history_requests -= u64::from(r);
                    self.history_errors -= u64::from(e);
                }
            }
        }
        self.requests = 0;
        self.errors = 0;
    }

    fn judge(&self, cfg: &ErrorRateConfig) -> Option<Finding> {
        if self.requests < cfg.min_requests
            || self.errors < cfg.min_errors
            || self.history_requests < u64::from(cfg.min_requests)
        {
            return None;
        }
        let n = f64::from(self.requests);
        let rate = f64::from(self.errors) / n;
        let base = (self.history_errors as f64 / self.history_requests as f64)
            .max(cfg.baseline_floor)
            .min(1.0 - cfg.baseline_floor);
        let spread = (base * (1.0 - base) / n).sqrt();
        let z = (rate - base) / spread;
        if z <= cfg.threshold || rate - base < cfg.min_increase {
            return None;
        }
        let threshold = (base + cfg.threshold * spread).max(base + cfg.min_increase);
        let mut additional = BTreeMap::new();
        additional.insert("errors".into(), self.errors.into());
        additional.insert("requests".into(), self.requests.into());
        Some(Finding {
            metric: "error_rate",
            anomaly_type: AnomalyType::ErrorRateIncrease,
            method: "error_rate",
            value: rate,
            baseline: base,
            threshold,
            deviation_sigma: z,
            ratio: z / cfg.threshold,
            votes: 1,
            voters: 1,
            sample_count: self.history_requests,
            time_window: window_label(cfg.bucket_ms),
            additional,
        })
    }

    /// Requests and errors in the current bucket and in the baseline buckets.
    pub fn counts(&self) -> ((u32, u32), (u64, u64)) {
        (
            (self.requests, self.errors),
            (self.history_requests, self.history_errors),
        )
    }
}

/// Request-rate state of one key: the current bucket's count and the counts of closed buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRate {
    clock: BucketClock,
    count: u32,
    /// The first bucket a key is seen in is partial and never judged.
    partial: bool,
    history: Window,
    /// Consecutive judged buckets out of line, up to the latest.
    streak: u32,
}

impl RequestRate {
    /// An empty request-rate state keeping `buckets` closed buckets.
    pub fn new(buckets: usize) -> Self {
        RequestRate {
            clock: BucketClock::default(),
            count: 0,
            partial: true,
            history: Window::new(buckets.max(1)),
            streak: 0,
        }
    }

    /// Counts one call; judges every bucket this call closes.
    pub(crate) fn observe(&mut self, at_ms: i64, cfg: &RequestRateConfig) -> Vec<Finding> {
        let closed = self.clock.advance(at_ms, cfg.bucket_ms);
        let mut findings = Vec::new();
        if closed > 0 {
            let empties = usize::try_from(closed - 1)
                .unwrap_or(usize::MAX)
                .min(self.history.capacity());
            let first = if std::mem::replace(&mut self.partial, false) {
                None
            } else {
                Some(self.count)
            };
            for count in first.into_iter().chain(std::iter::repeat_n(0, empties)) {
                if cfg.enabled {
                    let finding = self.judge(count, cfg);
                    self.streak = if finding.is_some() {
                        self.streak + 1
                    } else {
                        0
                    };
                    findings.extend(finding);
                }
                self.history.push(f64::from(count));
            }
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        findings
    }

    fn judge(&self, count: u32, cfg: &RequestRateConfig) -> Option<Finding> {
        if self.history.len() < cfg.min_buckets {
            return None;
        }
        let median = self.history.median()?;
        let value = f64::from(count);
        // A surge is judged in factors: bursts multiply a service's rate, so the spread
        // is that of log counts, which the counts' quartiles give (quantiles commute with
        // the log), and at least Poisson noise (√median / (median + 1) on that scale).
        let log = |count: f64| count.ln_1p();
        let (q1, q3) = (self.history.q1()?, self.history.q3()?);
        let log_spread =
            ((log(q3) - log(q1)) / IQR_CONSISTENCY).max(median.sqrt().max(1.0) / (median + 1.0));
        let surge = (log(value) - log(median)) / log_spread;
        // A drop is judged in calls: it is bounded by zero, where logs would magnify the
        // idle minutes of on/off traffic; the spread is at least √median (Poisson).
        let spread = (self.history.mad()? / MAD_CONSISTENCY)
            .max(median.sqrt())
            .max(1.0);
        let drop = (value - median) / spread;
        let (anomaly_type, threshold, z) = if drop < -cfg.threshold && median >= cfg.min_median {
            (
                AnomalyType::ThroughputDegradation,
                median - cfg.threshold * spread,
                drop,
            )
        } else if surge > cfg.threshold {
            let bound = (log(median) + cfg.threshold * log_spread).exp_m1();
            (AnomalyType::RequestRateSpike, bound, surge)
        } else {
            return None;
        };
        Some(Finding {
            metric: "request_rate",
            anomaly_type,
            method: "request_rate",
            value,
            baseline: median,
            threshold,
            deviation_sigma: z,
            ratio: z.abs() / cfg.threshold,
            votes: 1,
            voters: 1,
            sample_count: self.history.len() as u64,
            time_window: window_label(cfg.bucket_ms),
            additional: BTreeMap::new(),
        })
    }

    /// Consecutive closed buckets whose count was out of line, up to the latest.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Median requests per bucket over the baseline, if any bucket closed yet.
    pub fn median_per_bucket(&self) -> Option<f64> {
        self.history.median()
    }
}

/// Per-user usage state of one key: requests per user in the current bucket, the
/// per-user bucket counts seen before, and the usual rate of users that send a lot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserUsage {
    clock: BucketClock,
    counts: BTreeMap<String, u32>,
    history: Window,
    /// Smoothed requests per bucket of users that have sent at least half the minimum.
    heavy: BTreeMap<String, f64>,
    /// Whether a user was flagged in the current bucket.
    flagged: bool,
    /// Consecutive closed buckets in which a user was flagged.
    flagged_before: u32,
}

/// Weight of the newest bucket in a heavy user's smoothed rate.
const HEAVY_SMOOTHING: f64 = 0.3;

impl UserUsage {
    /// An empty per-user state keeping `samples` per-user bucket counts.
    pub fn new(samples: usize) -> Self {
        UserUsage {
            clock: BucketClock::default(),
            counts: BTreeMap::new(),
            history: Window::new(samples.max(1)),
            heavy: BTreeMap::new(),
            flagged: false,
            flagged_before: 0,
        }
    }

    /// Consecutive buckets, up to the current one, in which a user was flagged.
    pub fn streak(&self) -> u32 {
        if self.flagged {
            self.flagged_before + 1
        } else {
            0
        }
    }

    fn close(&mut self, cfg: &UserUsageConfig, closed: u64) {
        self.flagged_before = if self.flagged && closed == 1 {
            self.flagged_before + 1
        } else {
            0
        };
        self.flagged = false;
        for &count in self.counts.values() {
            self.history.push(f64::from(count));
        }
        let heavy_from = f64::from(cfg.min_requests) / 2.0;
        for (user, rate) in self.heavy.iter_mut() {
            let count = self.counts.get(user).copied().unwrap_or(0);
            *rate += HEAVY_SMOOTHING * (f64::from(count) - *rate);
        }
        self.heavy.retain(|_, rate| *rate >= 1.0);
        for (user, &count) in &self.counts {
            if f64::from(count) >= heavy_from
                && !self.heavy.contains_key(user)
                && self.heavy.len() < cfg.max_users
            {
                self.heavy.insert(user.clone(), f64::from(count));
            }
        }
        self.counts.clear();
    }

    /// Counts one call of `user`; judges that user's count in the current bucket.
    ///
    /// A user is flagged above both `multiplier ×` the p99 of per-user bucket counts
    /// (and `min_requests`) and `multiplier ×` their own usual rate, so a user who
    /// always sends a lot is not flagged for it.
    pub(crate) fn observe(
        &mut self,
        at_ms: i64,
        user: &str,
        cfg: &UserUsageConfig,
    ) -> Option<Finding> {
        let closed = self.clock.advance(at_ms, cfg.bucket_ms);
        if closed > 0 {
            self.close(cfg, closed);
        }
        let count = if let Some(count) = self.counts.get_mut(user) {
            *count = count.saturating_add(1);
            *count
        } else if self.counts.len() < cfg.max_users {
            self.counts.insert(user.to_owned(), 1);
            1
        } else {
            return None;
        };
        if !cfg.enabled
            || count <= cfg.min_requests
            || self.history.len() < self.history.capacity().min(100)
        {
            return None;
        }
        let p99 = self.history.p99()?;
        let own = self.heavy.get(user).copied().unwrap_or(0.0);
        let threshold = (cfg.multiplier * p99.max(own)).max(f64::from(cfg.min_requests));
        let value = f64::from(count);
        if value <= threshold {
            return None;
        }
        let median = self.history.median()?;
        self.flagged = true;
        let mut additional = BTreeMap::new();
        additional.insert("user_p99_per_bucket".into(), p99.into());
        additional.insert("user_usual_per_bucket".into(), own.into());
        Some(Finding {
            metric: "user_requests",
            anomaly_type: AnomalyType::SuspiciousUsage,
            method: "user_rate",
            value,
            baseline: median.max(own),
            threshold,
            deviation_sigma: (value - median) / median.sqrt().max(1.0),
            ratio: value / threshold,
            votes: 1,
            voters: 1,
            sample_count: self.history.len() as u64,
            time_window: window_label(cfg.bucket_ms),
            additional,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn error_burst_is_flagged_and_background_errors_are_not() {
        let cfg = ErrorRateConfig::default();
        let mut er = ErrorRate::default();
        let mut raised = Vec::new();
        // 30 minutes at 100 calls/min with 1% errors, then a minute at 40%.
        for minute in 0..31i64 {
            for i in 0..100i64 {
                let failed = if minute < 30 { i == 50 } else { i % 5 < 2 };
                if let Some(f) = er.observe(minute * MIN + i * 600, failed, &cfg) {
                    raised.push((minute, f));
                }
            }
        }
        assert!(!raised.is_empty());
        assert!(raised.iter().all(|(m, _)| *m == 30));
        let f = &raised[0].1;
        assert_eq!(f.anomaly_type, AnomalyType::ErrorRateIncrease);
        assert!(f.baseline < 0.02 && f.value > f.threshold);
    }

    #[test]
    fn error_rate_needs_a_baseline_first() {
        let cfg = ErrorRateConfig::default();
        let mut er = ErrorRate::default();
        // failures from the first call on: no history, nothing to compare with
        for i in 0..50 {
            assert!(er.observe(i * 100, true, &cfg).is_none());
        }
    }

    #[test]
    fn traffic_drop_and_surge_are_flagged_on_bucket_close() {
        let cfg = RequestRateConfig::default();
        let mut rr = RequestRate::new(cfg.baseline_buckets);
        let mut raised = Vec::new();
        let per_minute = |m: i64| match m {
            25 => 5,
            35 => 1000,
            _ => 100,
        };
        for minute in 0..40i64 {
            let n = per_minute(minute);
            for i in 0..n {
                for f in rr.observe(minute * MIN + i * (MIN / n), &cfg) {
                    raised.push(f);
                }
            }
        }
        let types: Vec<_> = raised.iter().map(|f| f.anomaly_type).collect();
        assert_eq!(
            types,
            vec![
                AnomalyType::ThroughputDegradation,
                AnomalyType::RequestRateSpike
            ]
        );
        assert_eq!(raised[0].value, 5.0);
    }

    #[test]
    fn a_bursty_key_s_usual_swings_are_not_surges_but_a_tenfold_one_is() {
        let cfg = RequestRateConfig::default();
        let mut rr = RequestRate::new(cfg.baseline_buckets);
        // Minute counts that swing by factors, e^{±0.3} typically (deterministic), then a
        // minute at 4× (within what such swings reach on a log scale), then one at 10×.
        let swing = |m: i64| ((m * 7919) % 13 - 6) as f64 / 6.0 * 0.5;
        let per_minute = |m: i64| match m {
            60 => 400,
            62 => 1000,
            _ => (100.0 * swing(m).exp()).round() as i64,
        };
        let mut raised = Vec::new();
        for minute in 0..64i64 {
            let n = per_minute(minute);
            for i in 0..n {
                raised.extend(rr.observe(minute * MIN + i * (MIN / n), &cfg));
            }
        }
        let values: Vec<_> = raised.iter().map(|f| (f.anomaly_type, f.value)).collect();
        assert_eq!(values, vec![(AnomalyType::RequestRateSpike, 1000.0)]);
        assert!(raised[0].threshold > 400.0 && raised[0].threshold < 1000.0);
    }

    #[test]
    fn silent_buckets_count_as_zero_traffic() {
        let cfg = RequestRateConfig::default();
        let mut rr = RequestRate::new(cfg.baseline_buckets);
        for minute in 0..20i64 {
            for i in 0..100 {
                assert!(rr.observe(minute * MIN + i * 600, &cfg).is_empty());
            }
        }
        // nothing for three minutes, then a call
        let raised = rr.observe(23 * MIN, &cfg);
        assert!(raised
            .iter()
            .any(|f| f.anomaly_type == AnomalyType::ThroughputDegradation && f.value == 0.0));
    }

    #[test]
    fn one_user_hammering_a_key_is_flagged() {
        let cfg = UserUsageConfig::default();
        let mut uu = UserUsage::new(cfg.baseline_samples);
        let mut raised = Vec::new();
        for minute in 0..20i64 {
            for u in 0..20 {
                for i in 0..3 {
                    let user = format!("user-{u}");
                    let at = minute * MIN + u * 1000 + i;
                    raised.extend(uu.observe(at, &user, &cfg));
                }
            }
        }
        assert!(raised.is_empty());
        for i in 0..200 {
            raised.extend(uu.observe(20 * MIN + i * 100, "scraper", &cfg));
        }
        assert!(!raised.is_empty());
        assert_eq!(raised[0].anomaly_type, AnomalyType::SuspiciousUsage);
        assert_eq!(raised[0].value, 31.0);
    }

    #[test]
    fn a_user_who_always_sends_a_lot_is_not_flagged() {
        let cfg = UserUsageConfig::default();
        let mut uu = UserUsage::new(cfg.baseline_samples);
        let mut raised = Vec::new();
        for minute in 0..30i64 {
            for u in 0..20 {
                let user = format!("user-{u}");
                raised.extend(uu.observe(minute * MIN + u * 1000, &user, &cfg));
            }
            // the batch account sends 60 calls every minute, from the start
            for i in 0..60 {
                raised.extend(uu.observe(minute * MIN + 30_000 + i * 100, "batch", &cfg));
            }
        }
        assert!(raised.is_empty(), "{raised:?}");
        // ... but five times its usual rate is still odd
        for i in 0..400 {
            raised.extend(uu.observe(30 * MIN + i * 100, "batch", &cfg));
        }
        assert_eq!(raised.first().map(|f| f.value), Some(301.0));
    }
}
