//! Onset detector: flags the start of an anomaly once, then stays quiet while it lasts.
//!
//! Each value is scored against the baseline as it was before the value (then added):
//!
//! * **views**: the value itself, the mean of the last `smooth` values, and the change
//!   since the same time one `season_secs` ago (event time); each is a z-score against
//!   the mean and population σ of its own sliding window of `window` past observations,
//!   turned into a two-sided normal surprisal `−log10 P(|Z| ≥ |z|)` so that all views
//!   share one scale, and the largest counts;
//! * **range break**: a value beyond everything seen so far by more than
//!   `range_margin` of the seen range scores at least `range_surprisal`;
//! * **suppression**: the surprisal counts only if it beats every surprisal of the
//!   last `quiet_secs` seconds of event time, so a level shift or a burst alarms at its
//!   onset and not again at every later point.
//!
//! The anomaly score is `s / (1 + s)` of the surviving surprisal `s`, in `[0, 1)`.
//! Per event: O(smooth) time plus O(log window) (each view's baseline is a
//! [`Window`], monotonic deques); memory O(window), as the season's history and
//! the quiet horizon's maxima are capped at `window` entries each. The state is plain
//! data (serde) and the update is deterministic.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::window::{Window, MAX_CAPACITY};

/// Parameters of an [`OnsetDetector`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnsetConfig {
    /// Length of each view's baseline window (observations, at most 65,535).
    pub window: usize,
    /// Number of recent values averaged by the smoothed view.
    pub smooth: usize,
    /// Observations a view needs before it scores.
    pub min_samples: usize,
    /// Margin beyond the seen range, as a fraction of it, that counts as a range break.
    pub range_margin: f64,
    /// Surprisal (−log10 p) given to a range break.
    pub range_surprisal: f64,
    /// Event-time horizon (seconds) a new alarm must out-score.
    pub quiet_secs: i64,
    /// Season of the "same time last season" view (seconds); 0 turns the view off.
    pub season_secs: i64,
    /// How much older than one season the reference value may be (seconds).
    pub season_tolerance_secs: i64,
}

impl Default for OnsetConfig {
    /// The configuration measured on NAB (see `docs/nab.md`).
    fn default() -> Self {
        OnsetConfig {
            window: 6400,
            smooth: 12,
            min_samples: 30,
            range_margin: 0.05,
            range_surprisal: 20.0,
            quiet_secs: 86_400,
            season_secs: 86_400,
            season_tolerance_secs: 3_600,
        }
    }
}

/// Largest surprisal reported: −log10 of the smallest tail probability kept (1e-300).
pub const MAX_SURPRISAL: f64 = 300.0;

/// σ used when a window has no spread at all.
const MIN_STD: f64 = 1e-6;

/// Upper tail `Q(z) = P(Z > z)` of the standard normal distribution.
///
/// Accurate to about 1e-14 relative in both tails: the `erf` series near zero and
/// Laplace's continued fraction for `erfc` beyond.
pub fn normal_upper_tail(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z < 0.0 {
        return 1.0 - normal_upper_tail(-z);
    }
    let x = z / std::f64::consts::SQRT_2;
    if x < 2.0 {
        // erf(x) = 2/√π Σ (−1)ⁿ x^{2n+1} / (n! (2n+1))
        let x2 = x * x;
        let mut term = x;
        let mut sum = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= -x2 / n;
            sum += term / (2.0 * n + 1.0);
        }
        0.5 * (1.0 - sum * std::f64::consts::FRAC_2_SQRT_PI)
    } else {
        // erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))
        let mut t = x;
        for k in (1..=80).rev() {
            t = x + f64::from(k) / 2.0 / t;
        }
        0.25 * (-x * x).exp() * std::f64::consts::FRAC_2_SQRT_PI / t
    }
}

/// Two-sided normal surprisal `−log10 P(|Z| ≥ |z|)`, capped at [`MAX_SURPRISAL`].
pub fn surprisal(z: f64) -> f64 {
    let p = 2.0 * normal_upper_tail(z.abs());
    (-p.max(1e-300).log10()).clamp(0.0, MAX_SURPRISAL)
}

/// z-score of `x` against `window` (σ floored at [`MIN_STD`]), once it holds `min` values.
fn z_against(window: &Window, x: f64, min: usize) -> Option<f64> {
    if window.len() < min.max(1) {
        return None;
    }
    let sd = window.std_dev()?;
    let sd = if sd > 0.0 { sd } else { MIN_STD };
    Some((x - window.mean()?) / sd)
}

/// One scored observation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OnsetScore {
    /// Largest surprisal over the views and the range check, before suppression.
    pub surprisal: f64,
    /// Whether the surprisal beat every one of the quiet horizon (an onset).
    pub onset: bool,
    /// Anomaly score in `[0, 1)`: `s / (1 + s)` for an onset, 0 otherwise.
    pub score: f64,
}

/// Streaming onset detector for one series (see the module documentation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OnsetDetector {
    config: OnsetConfig,
    raw: Window,
    smoothed: Window,
    seasonal: Window,
    recent: VecDeque<f64>,
    /// (timestamp, value) of the last season, oldest first, at most `window` entries.
    history: VecDeque<(i64, f64)>,
    seen_min: Option<f64>,
    seen_max: Option<f64>,
    /// (timestamp, surprisal) with strictly decreasing surprisal: the running maxima
    /// of the quiet horizon, at most `window` entries.
    peaks: VecDeque<(i64, f64)>,
}

impl OnsetDetector {
    /// A detector with no history.
    pub fn new(config: OnsetConfig) -> Self {
        let window = config.window.clamp(1, MAX_CAPACITY);
        OnsetDetector {
            raw: Window::new(window),
            smoothed: Window::new(window),
            seasonal: Window::new(window),
            recent: VecDeque::with_capacity(config.smooth.max(1)),
            history: VecDeque::new(),
            seen_min: None,
            seen_max: None,
            peaks: VecDeque::new(),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &OnsetConfig {
        &self.config
    }

    /// Scores `value` observed at `timestamp` (seconds), then learns it.
    ///
    /// A non-finite value is not learned and scores 0.
    pub fn update(&mut self, timestamp: i64, value: f64) -> OnsetScore {
        if !value.is_finite() {
            return OnsetScore {
                surprisal: 0.0,
                onset: false,
                score: 0.0,
            };
        }
        let c = self.config;
        let mut s: f64 = 0.0;
        if let Some(z) = z_against(&self.raw, value, c.min_samples) {
            s = s.max(surprisal(z));
        }
        let smooth = c.smooth.max(1);
        if self.recent.len() == smooth {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        if self.recent.len() == smooth {
            let mean = self.recent.iter().sum::<f64>() / smooth as f64;
            if let Some(z) = z_against(&self.smoothed, mean, c.min_samples) {
                s = s.max(surprisal(z));
            }
            self.smoothed.push(mean);
        }
        if self.raw.len() >= c.min_samples {
            if let (Some(lo), Some(hi)) = (self.seen_min, self.seen_max) {
                let margin = c.range_margin * (hi - lo);
                if hi > lo && (value > hi + margin || value < lo - margin) {
                    s = s.max(c.range_surprisal);
                }
            }
        }
        if let Some(z) = self.seasonal_z(timestamp, value) {
            s = s.max(surprisal(z));
        }
        self.raw.push(value);
        self.seen_min = Some(self.seen_min.map_or(value, |m| m.min(value)));
        self.seen_max = Some(self.seen_max.map_or(value, |m| m.max(value)));

        let horizon = timestamp.saturating_sub(c.quiet_secs);
        while self.peaks.front().is_some_and(|&(t, _)| t < horizon) {
            self.peaks.pop_front();
        }
        let onset = self.peaks.front().is_none_or(|&(_, peak)| s > peak);
        while self.peaks.back().is_some_and(|&(_, peak)| peak <= s) {
            self.peaks.pop_back();
        }
        if self.peaks.len() >= c.window.max(1) {
            self.peaks.pop_front();
        }
        self.peaks.push_back((timestamp, s));
        OnsetScore {
            surprisal: s,
            onset,
            score: if onset { s / (1.0 + s) } else { 0.0 },
        }
    }
}

impl OnsetDetector {
    /// Scores the change since one season ago and learns it; records the value.
    fn seasonal_z(&mut self, timestamp: i64, value: f64) -> Option<f64> {
        let c = self.config;
        if c.season_secs <= 0 {
            return None;
        }
        let target = timestamp.saturating_sub(c.season_secs);
        // Keep the latest entry at or before `target` at the front.
        while self.history.get(1).is_some_and(|&(t, _)| t <= target) {
            self.history.pop_front();
        }
        let reference =
            self.history.front().copied().filter(|&(t, _)| {
                t <= target && t > target.saturating_sub(c.season_tolerance_secs)
            });
        let z = reference.and_then(|(_, before)| {
            let change = value - before;
            let z = z_against(&self.seasonal, change, c.min_samples);
            self.seasonal.push(change);
            z
        });
        if self.history.len() >= c.window.max(1) {
            self.history.pop_front();
        }
        self.history.push_back((timestamp, value));
        z
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OnsetConfig {
        OnsetConfig {
            window: 100,
            smooth: 4,
            min_samples: 10,
            range_margin: 0.05,
            range_surprisal: 20.0,
            quiet_secs: 3600,
            season_secs: 0,
            season_tolerance_secs: 0,
        }
    }

    /// Deterministic noise in [9, 11] with period 13.
    fn noise(i: i64) -> f64 {
        10.0 + ((i * 7) % 13) as f64 / 6.0 - 1.0
    }

    #[test]
    fn normal_tail_and_surprisal_match_known_values() {
        for (z, q) in [
            (0.0, 0.5),
            (1.0, 0.158_655_253_931_457_05),
            (3.0, 0.001_349_898_031_630_094_6),
            (5.0, 2.866_515_718_791_939e-7),
            (10.0, 7.619_853_024_160_527e-24),
        ] {
            let got = normal_upper_tail(z);
            assert!(((got - q) / q).abs() < 1e-12, "Q({z}) = {got}, want {q}");
        }
        assert!((surprisal(1.959_963_984_540_054) - 20f64.log10()).abs() < 1e-9);
        assert_eq!(surprisal(1e6), MAX_SURPRISAL);
    }

    #[test]
    fn quiet_series_scores_low_and_spike_scores_high() {
        let mut d = OnsetDetector::new(config());
        let mut max_quiet: f64 = 0.0;
        for i in 0..200 {
            max_quiet = max_quiet.max(d.update(i * 60, noise(i)).score);
        }
        let spike = d.update(200 * 60, 40.0);
        assert!(spike.onset);
        assert!(spike.surprisal >= 20.0, "{spike:?}");
        assert!(spike.score > max_quiet);
        assert!(spike.score > 0.95);
    }

    #[test]
    fn a_level_shift_alarms_once_within_the_quiet_horizon() {
        let mut d = OnsetDetector::new(config());
        for i in 0..200 {
            d.update(i * 60, noise(i));
        }
        // 30 minutes at a new level: only the first point is an onset.
        let onsets: Vec<i64> = (200..230)
            .filter(|&i| d.update(i * 60, noise(i) + 30.0).onset)
            .collect();
        assert_eq!(onsets, vec![200]);
    }

    #[test]
    fn a_bigger_event_inside_the_horizon_still_alarms() {
        let mut d = OnsetDetector::new(config());
        for i in 0..200 {
            d.update(i * 60, noise(i));
        }
        let first = d.update(200 * 60, 16.0);
        assert!(first.onset);
        // Back to normal: weaker than the alarm a minute ago, so quiet.
        assert!(!d.update(201 * 60, 10.0).onset);
        // Far bigger than the first: alarms again within the horizon.
        let second = d.update(202 * 60, 60.0);
        assert!(second.onset && second.surprisal > first.surprisal);
    }

    #[test]
    fn the_seasonal_view_sees_a_missing_daily_peak() {
        // A daily square wave (0 at night, 10 by day, sampled hourly) whose peak fails
        // to arrive on day 10: in range and unremarkable to the raw view, but 10 below
        // the same hour yesterday.
        let hourly = |day: i64, hour: i64| {
            if (9..17).contains(&hour) && day != 10 {
                10.0
            } else {
                0.0
            }
        };
        let run = |season_secs: i64| {
            let mut d = OnsetDetector::new(OnsetConfig {
                season_secs,
                season_tolerance_secs: 600,
                quiet_secs: 0,
                ..config()
            });
            let mut at_dip = 0.0;
            for day in 0..11 {
                for hour in 0..24 {
                    let wobble = ((day * 24 + hour) % 5) as f64 * 0.01;
                    let s = d.update((day * 24 + hour) * 3600, hourly(day, hour) + wobble);
                    if day == 10 && hour == 9 {
                        at_dip = s.surprisal;
                    }
                }
            }
            at_dip
        };
        assert!(run(86_400) > 2.0 * run(0), "{} vs {}", run(86_400), run(0));
        assert!(run(86_400) > 10.0);
    }

    #[test]
    fn state_round_trips_through_serde_and_is_deterministic() {
        let mut a = OnsetDetector::new(OnsetConfig {
            season_secs: 600,
            season_tolerance_secs: 60,
            ..config()
        });
        for i in 0..150 {
            a.update(i * 60, noise(i));
        }
        let bytes = bincode::serialize(&a).unwrap();
        let mut b: OnsetDetector = bincode::deserialize(&bytes).unwrap();
        assert_eq!(a, b);
        for i in 150..300 {
            let v = noise(i) + if i == 250 { 25.0 } else { 0.0 };
            assert_eq!(a.update(i * 60, v), b.update(i * 60, v));
        }
    }

    #[test]
    fn non_finite_input_is_ignored() {
        let mut d = OnsetDetector::new(config());
        let before = d.clone();
        let s = d.update(0, f64::NAN);
        assert_eq!(s.score, 0.0);
        assert_eq!(d, before);
    }
}
