//! Point and drift detectors over a [`Window`]: z-score, IQR, MAD (modified z) and CUSUM.
//!
//! Every function scores a value against the window as it was before the value
//! arrived ("score before add"); the caller pushes the value afterwards.

use serde::{Deserialize, Serialize};

use crate::window::Window;

/// Consistency constant that makes the MAD of a normal sample estimate σ (Φ⁻¹(0.75)).
pub const MAD_CONSISTENCY: f64 = 0.6745;

/// Interquartile range of a standard normal sample: IQR / this estimates σ.
pub const IQR_CONSISTENCY: f64 = 1.349;

/// The smallest spread a detector divides by, so a constant baseline does not turn
/// every later difference into an infinite score.
///
/// It is `max(absolute, relative × |centre|)`; both parts are configured per metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScaleFloor {
    /// Absolute minimum spread, in the units the window stores.
    pub absolute: f64,
    /// Minimum spread relative to the window's centre.
    pub relative: f64,
}

impl ScaleFloor {
    /// The floor for a window whose centre is `centre`.
    pub fn at(self, centre: f64) -> f64 {
        self.absolute.max(self.relative * centre.abs())
    }
}

/// Classic z-score `(x − mean) / σ` (population σ, floored); `None` on an empty window.
pub fn z_score(window: &Window, x: f64, floor: ScaleFloor) -> Option<f64> {
    let mean = window.mean()?;
    let sd = window.std_dev()?.max(floor.at(mean));
    Some((x - mean) / sd)
}

/// Tukey-fence score: how far `x` lies past the nearer quartile, in IQR units.
///
/// Positive above Q3, negative below Q1, zero between them; the IQR detector flags
/// when the magnitude exceeds its multiplier (1.5 by default). `None` on an empty window.
pub fn iqr_score(window: &Window, x: f64, floor: ScaleFloor) -> Option<f64> {
    let q1 = window.q1()?;
    let q3 = window.q3()?;
    let iqr = (q3 - q1).max(floor.at(window.median()?));
    Some(if x > q3 {
        (x - q3) / iqr
    } else if x < q1 {
        (x - q1) / iqr
    } else {
        0.0
    })
}

/// Iglewicz–Hoaglin modified z-score `0.6745 (x − median) / MAD` (MAD floored); `None` on an empty window.
pub fn modified_z_score(window: &Window, x: f64, floor: ScaleFloor) -> Option<f64> {
    let median = window.median()?;
    let mad = window.mad()?.max(floor.at(median));
    Some(MAD_CONSISTENCY * (x - median) / mad)
}

/// Two one-sided CUSUM sums over standardised inputs (Page's tabular CUSUM).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Cusum {
    /// Accumulated evidence of an upward shift.
    pub high: f64,
    /// Accumulated evidence of a downward shift.
    pub low: f64,
}

impl Cusum {
    /// Adds one standardised observation `z` with allowance `drift`; returns the larger sum.
    pub fn update(&mut self, z: f64, drift: f64) -> f64 {
        self.high = (self.high + z - drift).max(0.0);
        self.low = (self.low - z - drift).max(0.0);
        self.high.max(self.low)
    }

    /// Clears both sums, as after an alarm.
    pub fn reset(&mut self) {
        *self = Cusum::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_FLOOR: ScaleFloor = ScaleFloor {
        absolute: 0.0,
        relative: 0.0,
    };

    fn window_of(values: &[f64]) -> Window {
        let mut w = Window::new(100);
        for &v in values {
            w.push(v);
        }
        w
    }

    #[test]
    fn z_score_matches_definition() {
        let w = window_of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        // mean 5, population σ 2
        assert_eq!(z_score(&w, 11.0, NO_FLOOR), Some(3.0));
        assert_eq!(z_score(&w, 1.0, NO_FLOOR), Some(-2.0));
    }

    #[test]
    fn iqr_score_is_zero_inside_quartiles_and_signed_outside() {
        let w = window_of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        // type-7 quartiles: Q1 = 2, Q3 = 4, IQR = 2
        assert_eq!(iqr_score(&w, 3.0, NO_FLOOR), Some(0.0));
        assert_eq!(iqr_score(&w, 7.0, NO_FLOOR), Some(1.5));
        assert_eq!(iqr_score(&w, -1.0, NO_FLOOR), Some(-1.5));
    }

    #[test]
    fn modified_z_uses_median_and_mad() {
        let w = window_of(&[1.0, 2.0, 3.0, 4.0, 100.0]);
        // median 3, deviations 2,1,0,1,97 → MAD 1
        let mz = modified_z_score(&w, 13.0, NO_FLOOR).unwrap();
        assert!((mz - 6.745).abs() < 1e-12);
    }

    #[test]
    fn floor_keeps_constant_baseline_finite() {
        let w = window_of(&[500.0; 20]);
        let floor = ScaleFloor {
            absolute: 1e-9,
            relative: 0.01,
        };
        // σ = 0 is floored to 1% of 500 = 5
        assert_eq!(z_score(&w, 510.0, floor), Some(2.0));
        assert_eq!(modified_z_score(&w, 500.0, floor), Some(0.0));
    }

    #[test]
    fn empty_window_scores_nothing() {
        let w = Window::new(10);
        assert_eq!(z_score(&w, 1.0, NO_FLOOR), None);
        assert_eq!(iqr_score(&w, 1.0, NO_FLOOR), None);
        assert_eq!(modified_z_score(&w, 1.0, NO_FLOOR), None);
    }

    #[test]
    fn cusum_accumulates_a_shift_and_ignores_noise_within_drift() {
        let mut c = Cusum::default();
        for _ in 0..100 {
            assert_eq!(c.update(0.4, 0.5), 0.0);
        }
        let mut steps = 0;
        while c.update(1.5, 0.5) <= 5.0 {
            steps += 1;
        }
        // each step adds 1.0: crosses 5 on the sixth
        assert_eq!(steps, 5);
        c.reset();
        assert_eq!(c.update(-2.5, 0.5), 2.0);
        assert_eq!(c.low, 2.0);
    }
}
