//! Streaming detectors under test: one instance per data file, fed row by row.

mod reference;
mod sentinel;

use std::fmt;
use std::str::FromStr;

pub use reference::{NullDetector, RandomDetector, WindowedGaussianDetector};
pub use sentinel::{
    CusumDetector, LiveNabDetector, OnsetNabDetector, PointDetector, PointStatistic,
};

use super::NabError;

/// A streaming anomaly detector as NAB runs it: one instance per file, rows in order.
pub trait NabDetector {
    /// The detector's name, used in result paths and reports.
    fn name(&self) -> &str;

    /// Scores one row (timestamp in seconds since the Unix epoch) against the rows
    /// before it, then learns from it; returns an anomaly score in `[0, 1]`.
    fn score(&mut self, timestamp: i64, value: f64) -> f64;
}

/// The detectors the benchmark knows, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectorKind {
    /// [`NullDetector`].
    Null,
    /// [`RandomDetector`].
    Random,
    /// [`WindowedGaussianDetector`].
    WindowedGaussian,
    /// [`PointDetector`] with [`PointStatistic::ZScore`].
    ZScore,
    /// [`PointDetector`] with [`PointStatistic::Iqr`].
    Iqr,
    /// [`PointDetector`] with [`PointStatistic::Mad`].
    Mad,
    /// [`CusumDetector`].
    Cusum,
    /// [`OnsetNabDetector`]: Sentinel's best streaming combination.
    Onset,
    /// [`LiveNabDetector`]: the shipped live set, scored on the incidents it opens.
    Live,
    /// [`LiveNabDetector`] with the onset detector listed for the metric.
    LiveOnset,
}

impl DetectorKind {
    /// Every detector, in report order.
    pub const ALL: [DetectorKind; 10] = [
        DetectorKind::Null,
        DetectorKind::Random,
        DetectorKind::WindowedGaussian,
        DetectorKind::ZScore,
        DetectorKind::Iqr,
        DetectorKind::Mad,
        DetectorKind::Cusum,
        DetectorKind::Onset,
        DetectorKind::Live,
        DetectorKind::LiveOnset,
    ];

    /// The detector's name (as in NAB's results directory; NAB's normalisation step
    /// cuts names at the first `_`, so none has one).
    pub fn name(self) -> &'static str {
        match self {
            DetectorKind::Null => "null",
            DetectorKind::Random => "random",
            DetectorKind::WindowedGaussian => "windowedGaussian",
            DetectorKind::ZScore => "sentinelZscore",
            DetectorKind::Iqr => "sentinelIqr",
            DetectorKind::Mad => "sentinelMad",
            DetectorKind::Cusum => "sentinelCusum",
            DetectorKind::Onset => "sentinelOnset",
            DetectorKind::Live => "sentinelLive",
            DetectorKind::LiveOnset => "sentinelLiveOnset",
        }
    }

    /// Names of all detectors.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.name()).collect()
    }

    /// A fresh detector for the data file `file_key` (which seeds the random detector).
    pub fn build(self, file_key: &str) -> Box<dyn NabDetector + Send> {
        match self {
            DetectorKind::Null => Box::new(NullDetector),
            DetectorKind::Random => Box::new(RandomDetector::new(fnv1a(file_key))),
            DetectorKind::WindowedGaussian => Box::new(WindowedGaussianDetector::new()),
            DetectorKind::ZScore => Box::new(PointDetector::new(PointStatistic::ZScore)),
            DetectorKind::Iqr => Box::new(PointDetector::new(PointStatistic::Iqr)),
            DetectorKind::Mad => Box::new(PointDetector::new(PointStatistic::Mad)),
            DetectorKind::Cusum => Box::new(CusumDetector::new()),
            DetectorKind::Onset => Box::new(OnsetNabDetector::new()),
            DetectorKind::Live => Box::new(LiveNabDetector::new(false)),
            DetectorKind::LiveOnset => Box::new(LiveNabDetector::new(true)),
        }
    }
}

impl fmt::Display for DetectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DetectorKind {
    type Err = NabError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| NabError::UnknownDetector(s.to_string()))
    }
}

/// 64-bit FNV-1a hash, a stable per-file seed.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detectors_report_their_kind_name() {
        for kind in DetectorKind::ALL {
            assert_eq!(kind.build("a/b.csv").name(), kind.name());
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in DetectorKind::ALL {
            assert_eq!(kind.name().parse::<DetectorKind>().unwrap(), kind);
            assert!(!kind.name().contains('_'));
        }
        assert!("nope".parse::<DetectorKind>().is_err());
    }

    #[test]
    fn random_detector_is_deterministic_and_in_range() {
        let mut a = DetectorKind::Random.build("x/y.csv");
        let mut b = DetectorKind::Random.build("x/y.csv");
        for t in 0..1000 {
            let s = a.score(t, 0.0);
            assert!((0.0..1.0).contains(&s));
            assert_eq!(s, b.score(t, 0.0));
        }
    }
}
