//! Detection accuracy on the Numenta Anomaly Benchmark (NAB v1.1).
//!
//! The pieces, in pipeline order:
//!
//! * [`corpus`] reads the data files, the label windows (`combined_windows.json`)
//!   and the cost profiles (`profiles.json`) from a NAB directory, with typed errors.
//! * [`detectors`] holds the streaming detectors under test behind [`NabDetector`]:
//!   NAB's reference detectors (null, random, windowed Gaussian), Sentinel's four
//!   detectors (z-score, IQR, MAD, CUSUM) and the onset detector (`sentinelOnset`).
//! * [`runner`] feeds every file of the corpus to one detector instance per file.
//! * [`scorer`] implements NAB's scoring rules (`nab/sweeper.py`): per-row weights
//!   from the scaled sigmoid, probation, earliest detection per window, the corpus
//!   sweep over every distinct threshold, and normalisation against the null detector.
//! * [`results`] writes NAB's results layout so NAB's own scorer can re-check us.

pub mod corpus;
pub mod detectors;
pub mod results;
pub mod runner;
pub mod scorer;

use std::path::PathBuf;

pub use corpus::{Corpus, CostMatrix, DataFile, LabelWindow, Profile, Record};
pub use detectors::{DetectorKind, NabDetector};
pub use runner::{run_detector, DetectorRun};
pub use scorer::{
    normalized_score, optimize_threshold, probation_length, scaled_sigmoid, CorpusSweep,
    Evaluation, Tally, ThresholdScore,
};

/// Everything that can go wrong while loading, scoring or writing NAB material.
#[derive(Debug, thiserror::Error)]
pub enum NabError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A CSV file is malformed (bad header, bad timestamp, bad number, …).
    #[error("{path}:{line}: {reason}")]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// 1-based line number of the offending line.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON file is not valid JSON of the expected shape.
    #[error("{path}: {source}")]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The labels file is inconsistent with itself or with the data.
    #[error("labels for {file}: {reason}")]
    Labels {
        /// The data file key (`<category>/<file>.csv`) the labels belong to.
        file: String,
        /// What is wrong with them.
        reason: String,
    },
    /// A profile in `profiles.json` lacks a weight or has a non-finite one.
    #[error("profile {profile}: {reason}")]
    Profile {
        /// The profile name.
        profile: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A detector's results do not line up with the corpus.
    #[error("results for {file}: {reason}")]
    Results {
        /// The data file key the results belong to.
        file: String,
        /// What is wrong with them.
        reason: String,
    },
    /// A detector name that is not in [`DetectorKind::ALL`].
    #[error("unknown detector `{0}` (known: {known})", known = DetectorKind::names().join(", "))]
    UnknownDetector(String),
}
