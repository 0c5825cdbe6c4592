//! NAB's reference detectors: null, random and windowed Gaussian.

use std::collections::VecDeque;

use sentinel_core::onset::normal_upper_tail;

use super::NabDetector;

/// Detects nothing: every score is 0 (NAB's `null` detector, the normalisation floor).
#[derive(Debug, Clone, Default)]
pub struct NullDetector;

impl NabDetector for NullDetector {
    fn name(&self) -> &str {
        "null"
    }

    fn score(&mut self, _timestamp: i64, _value: f64) -> f64 {
        0.0
    }
}

/// Uniform random scores from a seeded SplitMix64 stream (NAB's `random` detector).
#[derive(Debug, Clone)]
pub struct RandomDetector {
    state: u64,
}

impl RandomDetector {
    /// A detector whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        RandomDetector { state: seed }
    }
}

impl NabDetector for RandomDetector {
    fn name(&self) -> &str {
        "random"
    }

    fn score(&mut self, _timestamp: i64, _value: f64) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// NAB's `windowedGaussian`: `1 − Q(|z|)` against the mean and population σ of up to
/// 6400 past values; once the window is full it slides in steps of 100 values.
#[derive(Debug, Clone, Default)]
pub struct WindowedGaussianDetector {
    window: VecDeque<f64>,
    step_buffer: Vec<f64>,
    mean: f64,
    m2: f64,
}

impl WindowedGaussianDetector {
    /// NAB's tuned window size.
    const WINDOW: usize = 6400;
    /// NAB's step: the full window moves forward this many values at a time.
    const STEP: usize = 100;

    /// An empty detector.
    pub fn new() -> Self {
        Self::default()
    }

    /// Population σ of the window; 0 becomes 1e-6, as in NAB.
    fn std(&self) -> f64 {
        let sd = (self.m2 / self.window.len() as f64).sqrt();
        if sd > 0.0 {
            sd
        } else {
            1e-6
        }
    }
}

impl NabDetector for WindowedGaussianDetector {
    fn name(&self) -> &str {
        "windowedGaussian"
    }

    fn score(&mut self, _timestamp: i64, value: f64) -> f64 {
        let score = if self.window.is_empty() {
            0.0
        } else {
            1.0 - normal_upper_tail((value - self.mean).abs() / self.std())
        };
        if self.window.len() < Self::WINDOW {
            // Welford's update while the window fills.
            self.window.push_back(value);
            let delta = value - self.mean;
            self.mean += delta / self.window.len() as f64;
            self.m2 += delta * (value - self.mean);
        } else {
            self.step_buffer.push(value);
            if self.step_buffer.len() == Self::STEP {
                self.window.drain(..Self::STEP);
                self.window.extend(self.step_buffer.drain(..));
                // Two passes once per step, like NAB's numpy recomputation.
                let n = self.window.len() as f64;
                self.mean = self.window.iter().sum::<f64>() / n;
                self.m2 = self.window.iter().map(|x| (x - self.mean).powi(2)).sum();
            }
        }
        score
    }
}
