//! Evidence that a key's behaviour changed: a CUSUM over the share of calls that land in a
//! baseline's tail, and the robust per-key fits that make a call's value conditional on its size.

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// Which tail of a baseline a signal watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Values above the baseline.
    Upper,
    /// Values below the baseline.
    Lower,
}

impl Side {
    /// The side's name in incident signals.
    pub fn name(self) -> &'static str {
        match self {
            Side::Upper => "upper",
            Side::Lower => "lower",
        }
    }
}

/// Whether `t` lies beyond the `tail` quantile of `window` on `side` and at least
/// `min_deviation` from its median (both on the window's scale).
///
/// On exchangeable calls a hit has probability at most `tail`, whatever the distribution:
/// that is what lets a [`ShareCusum`] know its baseline rate without fitting anything.
pub fn beyond_tail(window: &Window, t: f64, side: Side, tail: f64, min_deviation: f64) -> bool {
    let (Some(median), Some(cut)) = (
        window.median(),
        window.quantile(match side {
            Side::Upper => 1.0 - tail,
            Side::Lower => tail,
        }),
    ) else {
        return false;
    };
    match side {
        Side::Upper => t > cut && t - median >= min_deviation,
        Side::Lower => t < cut && median - t >= min_deviation,
    }
}

/// Page's CUSUM of a Bernoulli share: the log-likelihood ratio, in nats, that hits arrive at
/// rate `p1` rather than the baseline rate `p0`, floored at zero.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct ShareCusum {
    /// Accumulated evidence, nats.
    pub statistic: f64,
    /// Hits among the latest 32 calls, newest in the lowest bit.
    recent: u32,
}

impl ShareCusum {
    /// Adds one call (a hit or not) and returns the evidence after it, held at most `cap`
    /// so that evidence of a long incident fades soon after it ends.
    pub fn update(&mut self, hit: bool, p0: f64, p1: f64, cap: f64) -> f64 {
        let llr = if hit {
            (p1 / p0).ln()
        } else {
            ((1.0 - p1) / (1.0 - p0)).ln()
        };
        self.statistic = (self.statistic + llr).clamp(0.0, cap);
        self.recent = (self.recent << 1) | u32::from(hit);
        self.statistic
    }

    /// The largest share of hits among the latest n calls, for n from `shortest` (the
    /// fewest calls that can reach the threshold) to 32: how many calls the evidence says
    /// are affected, without the quiet calls before it diluting the share.
    pub fn recent_share(&self, shortest: u32) -> f64 {
        (shortest.clamp(1, 32)..=32)
            .map(|n| {
                let mask = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
                f64::from((self.recent & mask).count_ones()) / f64::from(n)
            })
            .fold(0.0, f64::max)
    }
}

/// An exponentially weighted least-squares fit `y ≈ a·x₀ + b·x₁` over recent calls,
/// updated in O(1); calls the caller judges outlying are simply not added.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LinearFit {
    /// Weighted sums x₀², x₀x₁, x₁².
    xx: [f64; 3],
    /// Weighted sums x₀y, x₁y.
    xy: [f64; 2],
    /// Sum of weights.
    weight: f64,
}

impl LinearFit {
    /// Adds one call with features `x` and outcome `y`, forgetting older calls by `1 − 1/memory`.
    pub fn add(&mut self, x: [f64; 2], y: f64, memory: f64) {
        let keep = 1.0 - 1.0 / memory.max(1.0);
        for v in self.xx.iter_mut().chain(self.xy.iter_mut()) {
            *v *= keep;
        }
        self.weight = self.weight * keep + 1.0;
        self.xx[0] += x[0] * x[0];
        self.xx[1] += x[0] * x[1];
        self.xx[2] += x[1] * x[1];
        self.xy[0] += x[0] * y;
        self.xy[1] += x[1] * y;
    }

    /// Calls' worth of weight behind the fit.
    pub fn weight(&self) -> f64 {
        self.weight
    }

    /// The coefficients (a, b); with collinear features, the single-ratio fit on x₀ + x₁.
    pub fn coefficients(&self) -> Option<(f64, f64)> {
        let [s00, s01, s11] = self.xx;
        let det = s00 * s11 - s01 * s01;
        if det > 1e-9 * s00 * s11 && det.is_finite() {
            let a = (self.xy[0] * s11 - self.xy[1] * s01) / det;
            let b = (self.xy[1] * s00 - self.xy[0] * s01) / det;
            return Some((a, b));
        }
        let s = s00 + 2.0 * s01 + s11;
        (s > 0.0).then(|| {
            let c = (self.xy[0] + self.xy[1]) / s;
            (c, c)
        })
    }

    /// The fitted outcome for features `x`, if the fit has data.
    pub fn predict(&self, x: [f64; 2]) -> Option<f64> {
        self.coefficients().map(|(a, b)| a * x[0] + b * x[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_cusum_ignores_the_baseline_rate_and_catches_a_tenfold_share() {
        let mut c = ShareCusum::default();
        // 1 hit in 100 for 100,000 calls: evidence never reaches 16 nats
        let mut peak: f64 = 0.0;
        for i in 0..100_000 {
            peak = peak.max(c.update(i % 100 == 0, 0.01, 0.1, f64::MAX));
        }
        assert!(peak < 16.0, "peak {peak}");
        // every call a hit: 7 calls of ln 10 = 2.3 nats
        c = ShareCusum::default();
        let calls = (1..)
            .find(|_| c.update(true, 0.01, 0.1, 32.0) > 16.0)
            .unwrap();
        assert_eq!(calls, 7);
        assert_eq!(c.recent_share(7), 1.0);
        for _ in 0..1000 {
            c.update(true, 0.01, 0.1, 32.0);
        }
        assert_eq!(c.statistic, 32.0);
    }

    #[test]
    fn the_recent_share_is_not_diluted_by_the_calls_before_a_burst() {
        let mut c = ShareCusum::default();
        for i in 0..40 {
            c.update(i % 4 == 0, 0.01, 0.1, 32.0);
        }
        assert!((c.recent_share(7) - 0.25).abs() < 1e-12, "one call in four");
        for _ in 0..7 {
            c.update(true, 0.01, 0.1, 32.0);
        }
        assert_eq!(c.recent_share(7), 1.0);
        assert!((c.recent_share(32) - 13.0 / 32.0).abs() < 1e-12);
    }

    #[test]
    fn a_fit_recovers_intercept_and_slope_and_forgets() {
        let mut f = LinearFit::default();
        for i in 0..2000 {
            let tokens = f64::from(i % 400);
            f.add([1.0, tokens], 300.0 + 20.0 * tokens, 1000.0);
        }
        let (a, b) = f.coefficients().unwrap();
        assert!(
            (a - 300.0).abs() < 1e-6 && (b - 20.0).abs() < 1e-9,
            "{a} {b}"
        );
        for i in 0..20_000 {
            let tokens = f64::from(i % 400);
            f.add([1.0, tokens], 100.0 + 10.0 * tokens, 1000.0);
        }
        let (a, b) = f.coefficients().unwrap();
        assert!(
            (a - 100.0).abs() < 1e-3 && (b - 10.0).abs() < 1e-5,
            "{a} {b}"
        );
    }

    #[test]
    fn collinear_features_fall_back_to_one_ratio() {
        let mut f = LinearFit::default();
        for _ in 0..10 {
            f.add([100.0, 100.0], 2.0, 100.0);
        }
        let (a, b) = f.coefficients().unwrap();
        assert!((a - 0.01).abs() < 1e-12 && (b - 0.01).abs() < 1e-12);
        assert_eq!(LinearFit::default().predict([1.0, 1.0]), None);
    }

    #[test]
    fn tail_hits_need_the_quantile_and_the_minimum_deviation() {
        let mut w = Window::new(1000);
        for i in 0..1000 {
            w.push(f64::from(i) / 1000.0);
        }
        assert!(beyond_tail(&w, 0.995, Side::Upper, 0.01, 0.1));
        assert!(!beyond_tail(&w, 0.98, Side::Upper, 0.01, 0.1));
        assert!(!beyond_tail(&w, 0.995, Side::Upper, 0.01, 0.6));
        assert!(beyond_tail(&w, 0.001, Side::Lower, 0.01, 0.1));
        assert!(!beyond_tail(&Window::new(10), 5.0, Side::Upper, 0.01, 0.0));
    }
}
