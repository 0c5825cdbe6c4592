//! Running a detector over every file of the corpus.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::corpus::Corpus;
use super::detectors::DetectorKind;

/// One detector's anomaly scores for every file of a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorRun {
    /// Detector name.
    pub name: String,
    /// Per file (in corpus order), per row: the anomaly score in `[0, 1]`.
    pub scores: Vec<Vec<f64>>,
}

/// Clamps a detector's output into `[0, 1]`; a non-finite output becomes 0.
pub fn sanitize_score(score: f64) -> f64 {
    if score.is_finite() {
        score.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Runs a fresh instance of `kind` over each file, spreading files over `threads`
/// worker threads; results do not depend on the thread count.
pub fn run_detector(kind: DetectorKind, corpus: &Corpus, threads: usize) -> DetectorRun {
    let next = AtomicUsize::new(0);
    let mut scores = vec![Vec::new(); corpus.files.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = corpus.files.get(index) else {
                            break;
                        };
                        let mut detector = kind.build(&file.key);
                        let file_scores: Vec<f64> = file
                            .records
                            .iter()
                            .map(|r| sanitize_score(detector.score(r.seconds(), r.value)))
                            .collect();
                        done.push((index, file_scores));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            let done = worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            for (index, file_scores) in done {
                scores[index] = file_scores;
            }
        }
    });
    DetectorRun {
        name: kind.name().to_string(),
        scores,
    }
}
