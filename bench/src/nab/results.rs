//! NAB's results layout: per-file score CSVs, `thresholds.json`, `final_results.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::corpus::{read_text, results_path, Corpus};
use super::runner::DetectorRun;
use super::NabError;

/// One entry of NAB's `thresholds.json`: the tuned threshold and its raw score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ThresholdEntry {
    /// The optimised threshold.
    pub threshold: f64,
    /// The raw corpus score at that threshold.
    pub score: f64,
}

/// `{detector: {profile: {threshold, score}}}`, as in NAB's `config/thresholds.json`.
pub type Thresholds = BTreeMap<String, BTreeMap<String, ThresholdEntry>>;

/// `{detector: {profile: normalised score}}`, as in NAB's `results/final_results.json`.
pub type FinalResults = BTreeMap<String, BTreeMap<String, f64>>;

/// Writes `<out>/<detector>/<category>/<detector>_<file>.csv` for every file, with
/// the columns `timestamp,value,anomaly_score,label`.
pub fn write_run(out: &Path, corpus: &Corpus, run: &DetectorRun) -> Result<(), NabError> {
    for (file, scores) in corpus.files.iter().zip(&run.scores) {
        if scores.len() != file.records.len() {
            return Err(NabError::Results {
                file: file.key.clone(),
                reason: format!("{} scores for {} rows", scores.len(), file.records.len()),
            });
        }
        let path = results_path(out, &run.name, &file.key);
        let mut text = String::with_capacity(file.records.len() * 48);
        text.push_str("timestamp,value,anomaly_score,label\n");
        for ((record, score), label) in file.records.iter().zip(scores).zip(file.labels()) {
            // Writing to a String cannot fail.
            let _ = writeln!(
                text,
                "{},{},{},{}",
                record.timestamp,
                record.value,
                score,
                u8::from(label)
            );
        }
        write_file(&path, &text)?;
    }
    Ok(())
}

/// Writes a value as pretty JSON.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), NabError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| NabError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_file(path, &(text + "\n"))
}

/// Writes a file, creating its directory.
fn write_file(path: &Path, text: &str) -> Result<(), NabError> {
    let io = |source| NabError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io)?;
    }
    fs::write(path, text).map_err(io)
}

/// Reads a detector's scores back from a NAB results directory (ours or NAB's own):
/// the `anomaly_score` column of `<dir>/<detector>/<category>/<detector>_<file>.csv`.
pub fn read_run(dir: &Path, detector: &str, corpus: &Corpus) -> Result<DetectorRun, NabError> {
    let mut scores = Vec::with_capacity(corpus.files.len());
    for file in &corpus.files {
        let path = results_path(dir, detector, &file.key);
        let text = read_text(&path)?;
        let bad = |line: usize, reason: String| NabError::Csv {
            path: path.clone(),
            line,
            reason,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let column = lines
            .next()
            .and_then(|(_, header)| header.split(',').position(|c| c.trim() == "anomaly_score"))
            .ok_or_else(|| bad(1, "no `anomaly_score` column".to_string()))?;
        let mut file_scores = Vec::with_capacity(file.records.len());
        for (index, line) in lines {
            let field = line.split(',').nth(column).unwrap_or("").trim();
            let score = field
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite())
                .ok_or_else(|| bad(index + 1, format!("`{field}` is not a finite score")))?;
            file_scores.push(score);
        }
        if file_scores.len() != file.records.len() {
            return Err(NabError::Results {
                file: file.key.clone(),
                reason: format!(
                    "{} has {} rows, the data file {}",
                    path.display(),
                    file_scores.len(),
                    file.records.len()
                ),
            });
        }
        scores.push(file_scores);
    }
    Ok(DetectorRun {
        name: detector.to_string(),
        scores,
    })
}
