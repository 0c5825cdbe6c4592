//! The naive baseline the benchmarks compare against: it re-sorts the window for every
//! event, as simple implementations of the same detectors do.

use std::collections::VecDeque;

use sentinel_core::window::quantile_of_sorted;

/// Scores of the three point detectors for one value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NaiveScores {
    /// `(x − mean) / σ`.
    pub z: f64,
    /// Distance past the nearer quartile in IQR units.
    pub iqr: f64,
    /// `0.6745 (x − median) / MAD`.
    pub modified_z: f64,
}

/// A sliding window that recomputes every statistic by sorting a copy per query.
#[derive(Debug, Clone)]
pub struct NaiveWindow {
    capacity: usize,
    values: VecDeque<f64>,
}

impl NaiveWindow {
    /// An empty window of `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        NaiveWindow {
            capacity,
            values: VecDeque::with_capacity(capacity),
        }
    }

    /// Appends a sample, dropping the oldest when full.
    pub fn push(&mut self, x: f64) {
        if self.values.len() == self.capacity {
            self.values.pop_front();
        }
        self.values.push_back(x);
    }

    /// Scores `x` against the window by sorting copies of it; `None` when empty.
    pub fn score(&self, x: f64) -> Option<NaiveScores> {
        if self.values.is_empty() {
            return None;
        }
        let n = self.values.len() as f64;
        let mean = self.values.iter().sum::<f64>() / n;
        let sd = (self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        let mut sorted: Vec<f64> = self.values.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let q = |s: &[f64], p: f64| quantile_of_sorted(s, p).unwrap_or(f64::NAN);
        let (q1, median, q3) = (q(&sorted, 0.25), q(&sorted, 0.5), q(&sorted, 0.75));
        let mut dev: Vec<f64> = sorted.iter().map(|v| (v - median).abs()).collect();
        dev.sort_by(f64::total_cmp);
        let mad = q(&dev, 0.5);
        let iqr = q3 - q1;
        Some(NaiveScores {
            z: (x - mean) / sd,
            iqr: if x > q3 {
                (x - q3) / iqr
            } else if x < q1 {
                (x - q1) / iqr
            } else {
                0.0
            },
            modified_z: 0.6745 * (x - median) / mad,
        })
    }
}
