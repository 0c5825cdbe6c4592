//! NAB's scoring rules, as implemented by NAB 1.1's `nab/sweeper.py`.
//!
//! Every row of a file gets a weight that applies if the row is a detection:
//!
//! * rows of the probation period (the first `min(⌊0.15·N⌋, 750)` rows) are not scored;
//! * a row `i` inside a window `[l, r]` of width `w = r − l + 1` is worth
//!   `A_TP · σ(−(r − i + 1)/w) / σ(−1)`, so the left edge is worth exactly `A_TP`
//!   and the right edge `A_TP · σ(−1/w)/σ(−1)` (a little above zero);
//! * a row `i` after a window that ended at `r` (width `w`) is worth
//!   `A_FP · σ(|r − i| / (w − 1))`, a cost that grows from 0 to `−A_FP` and is exactly
//!   `−A_FP` from three widths on; a row before any window is worth `−A_FP`;
//!
//! where `σ(y) = 2/(1 + e^{5y}) − 1` (`scaledSigmoid`, −1 for `y > 3`). A window
//! scores its best (that is, earliest) detected row, or `−A_FN` if none; detections
//! outside windows all add up. A detection is a row whose anomaly score is at least
//! the threshold. The corpus score is the sum over files; the threshold is tuned per
//! detector and profile over the whole corpus by sweeping every distinct anomaly
//! score, exactly like NAB's `optimizer.py` (one sort, one pass).

use super::corpus::{Corpus, CostMatrix, DataFile};
use super::NabError;

/// NAB's probationary fraction of every file.
const PROBATION_FRACTION: f64 = 0.15;

/// Upper bound on the probation period, `0.15 · 5000` rows.
const PROBATION_CAP: f64 = PROBATION_FRACTION * 5000.0;

/// The threshold NAB starts its sweep at: above every score, so nothing is detected.
pub const NO_DETECTION_THRESHOLD: f64 = 1.1;

/// Number of leading rows NAB does not score in a file of `rows` rows.
pub fn probation_length(rows: usize) -> usize {
    // Same float operations as NAB: min(floor(0.15 * n), 0.15 * 5000).
    (PROBATION_FRACTION * rows as f64)
        .floor()
        .min(PROBATION_CAP) as usize
}

/// NAB's scaled sigmoid `2/(1 + e^{5y}) − 1`, clamped to −1 for `y > 3`.
pub fn scaled_sigmoid(y: f64) -> f64 {
    if y > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * y).exp()) - 1.0
    }
}

/// What a row would contribute if it were a detection, before profile weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowPart {
    /// Inside the probation period: never scored.
    Probation,
    /// Inside the window with this corpus-wide id; `unit` is `σ(position)`.
    Window { id: usize, unit: f64 },
    /// Outside every window; `unit` is `σ(distance)` or −1 before any window.
    Outside { unit: f64 },
}

impl RowPart {
    /// The row's weight under a cost matrix, with NAB's float operations.
    fn weight(self, cost: &CostMatrix) -> f64 {
        match self {
            RowPart::Probation => 0.0,
            RowPart::Window { unit, .. } => unit * cost.tp / scaled_sigmoid(-1.0),
            RowPart::Outside { unit } => unit * cost.fp,
        }
    }
}

/// The label-derived, profile-independent part of scoring a corpus.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusSweep {
    /// Per file, per row: what a detection there would be worth.
    files: Vec<Vec<RowPart>>,
    /// Number of windows with at least one scored row (the others cannot be missed).
    scored_windows: usize,
    /// Number of windows in the labels, the denominator of a perfect score.
    label_windows: usize,
}

impl CorpusSweep {
    /// Classifies every row of the corpus.
    pub fn new(corpus: &Corpus) -> Self {
        let mut next_id = 0;
        let mut scored_windows = 0;
        let files = corpus
            .files
            .iter()
            .map(|file| {
                let (parts, scored) = classify_rows(file, next_id);
                next_id += file.windows.len();
                scored_windows += scored;
                parts
            })
            .collect();
        CorpusSweep {
            files,
            scored_windows,
            label_windows: next_id,
        }
    }

    /// Number of windows in the labels.
    pub fn window_count(&self) -> usize {
        self.label_windows
    }

    /// Raw score of a detector that finds every window at its left edge.
    pub fn perfect_score(&self, cost: &CostMatrix) -> f64 {
        cost.tp * self.label_windows as f64
    }

    /// Checks that `scores` has one finite value per row of every file.
    fn check(&self, scores: &[Vec<f64>]) -> Result<(), NabError> {
        if scores.len() != self.files.len() {
            return Err(NabError::Results {
                file: "<corpus>".to_string(),
                reason: format!(
                    "{} score series for {} files",
                    scores.len(),
                    self.files.len()
                ),
            });
        }
        for (index, (parts, file_scores)) in self.files.iter().zip(scores).enumerate() {
            let bad = |reason: String| NabError::Results {
                file: format!("file #{index}"),
                reason,
            };
            if parts.len() != file_scores.len() {
                return Err(bad(format!(
                    "{} scores for {} rows",
                    file_scores.len(),
                    parts.len()
                )));
            }
            if let Some(row) = file_scores.iter().position(|s| !s.is_finite()) {
                return Err(bad(format!("anomaly score of row {row} is not finite")));
            }
        }
        Ok(())
    }

    /// Score and counts at one threshold: detections are rows with score ≥ `threshold`.
    pub fn score_at(
        &self,
        scores: &[Vec<f64>],
        cost: &CostMatrix,
        threshold: f64,
    ) -> Result<Tally, NabError> {
        self.check(scores)?;
        let mut total = Tally::default();
        for (parts, file_scores) in self.files.iter().zip(scores) {
            let tally = score_file(parts, file_scores, cost, threshold);
            total.score += tally.score;
            total.detected_windows += tally.detected_windows;
            total.missed_windows += tally.missed_windows;
            total.false_positives += tally.false_positives;
        }
        Ok(total)
    }

    /// NAB's `calcScoreByThreshold` over the whole corpus: the score at every distinct
    /// threshold, from [`NO_DETECTION_THRESHOLD`] down to the lowest anomaly score.
    pub fn threshold_curve(
        &self,
        scores: &[Vec<f64>],
        cost: &CostMatrix,
    ) -> Result<Vec<ThresholdScore>, NabError> {
        self.check(scores)?;
        let mut rows: Vec<(f64, RowPart)> = self
            .files
            .iter()
            .zip(scores)
            .flat_map(|(parts, s)| s.iter().copied().zip(parts.iter().copied()))
            .filter(|(_, part)| *part != RowPart::Probation)
            .collect();
        rows.sort_by(|a, b| b.0.total_cmp(&a.0));

        let mut best = vec![None::<f64>; self.label_windows];
        let mut state = SweepState {
            fp_sum: 0.0,
            window_sum: -cost.fn_ * self.scored_windows as f64,
            threshold: NO_DETECTION_THRESHOLD,
            tp: 0,
            fp: 0,
            tn: rows
                .iter()
                .filter(|(_, p)| matches!(p, RowPart::Outside { .. }))
                .count(),
            fn_: rows
                .iter()
                .filter(|(_, p)| matches!(p, RowPart::Window { .. }))
                .count(),
        };
        let mut curve = Vec::new();
        for (score, part) in rows {
            if score != state.threshold {
                curve.push(state.snapshot());
                state.threshold = score;
            }
            let weight = part.weight(cost);
            match part {
                RowPart::Window { id, .. } => {
                    state.tp += 1;
                    state.fn_ -= 1;
                    let previous = best[id];
                    let improved = previous.map_or(weight.max(-cost.fn_), |b| b.max(weight));
                    if previous != Some(improved) {
                        state.window_sum += improved - previous.unwrap_or(-cost.fn_);
                        best[id] = Some(improved);
                    }
                }
                RowPart::Outside { .. } => {
                    state.fp += 1;
                    state.tn -= 1;
                    state.fp_sum += weight;
                }
                RowPart::Probation => {}
            }
        }
        curve.push(state.snapshot());
        Ok(curve)
    }

    /// The best threshold for a profile, as NAB's optimiser picks it: the highest
    /// corpus score, and among equal scores the highest threshold.
    pub fn optimize(
        &self,
        scores: &[Vec<f64>],
        cost: &CostMatrix,
    ) -> Result<ThresholdScore, NabError> {
        let curve = self.threshold_curve(scores, cost)?;
        let mut best = curve[0];
        for point in &curve[1..] {
            if point.score > best.score {
                best = *point;
            }
        }
        Ok(best)
    }
}

/// Running totals of the corpus sweep.
struct SweepState {
    fp_sum: f64,
    window_sum: f64,
    threshold: f64,
    tp: usize,
    fp: usize,
    tn: usize,
    fn_: usize,
}

impl SweepState {
    /// The curve point for the current threshold.
    fn snapshot(&self) -> ThresholdScore {
        ThresholdScore {
            threshold: self.threshold,
            score: self.fp_sum + self.window_sum,
            tp: self.tp,
            tn: self.tn,
            fp: self.fp,
            fn_: self.fn_,
        }
    }
}

/// Row weights of one file (NAB's `calcSweepScore`); also returns how many of its
/// windows have a scored row. Window ids start at `first_id`.
fn classify_rows(file: &DataFile, first_id: usize) -> (Vec<RowPart>, usize) {
    let n = file.records.len();
    let probation = probation_length(n);
    let mut parts = Vec::with_capacity(n);
    let mut windows = file.windows.iter().enumerate().peekable();
    let mut current: Option<(usize, usize, f64)> = None; // (id, right index, width)
    let mut previous: Option<(usize, f64)> = None; // (right index, width)
    let mut scored = 0;
    for i in 0..n {
        if let Some(&(k, w)) = windows.peek() {
            if w.start == i {
                current = Some((first_id + k, w.end, w.width() as f64));
                if w.end >= probation {
                    scored += 1;
                }
                windows.next();
            }
        }
        let part = match current {
            Some((id, right, width)) => RowPart::Window {
                id,
                unit: scaled_sigmoid(-((right - i + 1) as f64) / width),
            },
            None => RowPart::Outside {
                unit: previous.map_or(-1.0, |(right, width)| {
                    // A one-row window would divide by zero (NAB raises); treat
                    // every later row as far away.
                    scaled_sigmoid((i - right) as f64 / (width - 1.0))
                }),
            },
        };
        parts.push(if i < probation {
            RowPart::Probation
        } else {
            part
        });
        if let Some((_, right, width)) = current {
            if right == i {
                previous = Some((right, width));
                current = None;
            }
        }
    }
    (parts, scored)
}

/// Score of one file at a threshold.
fn score_file(parts: &[RowPart], scores: &[f64], cost: &CostMatrix, threshold: f64) -> Tally {
    let mut tally = Tally::default();
    let mut window_best: Vec<(usize, Option<f64>)> = Vec::new();
    for (&part, &score) in parts.iter().zip(scores) {
        let detected = score >= threshold;
        match part {
            RowPart::Probation => {}
            RowPart::Window { id, .. } => {
                if window_best.last().is_none_or(|(last, _)| *last != id) {
                    window_best.push((id, None));
                }
                if detected {
                    if let Some((_, best)) = window_best.last_mut() {
                        let weight = part.weight(cost);
                        *best = Some(best.map_or(weight, |b: f64| b.max(weight)));
                    }
                }
            }
            RowPart::Outside { .. } => {
                if detected {
                    tally.false_positives += 1;
                    tally.score += part.weight(cost);
                }
            }
        }
    }
    for (_, best) in window_best {
        match best {
            Some(weight) => {
                tally.detected_windows += 1;
                tally.score += weight.max(-cost.fn_);
            }
            None => {
                tally.missed_windows += 1;
                tally.score -= cost.fn_;
            }
        }
    }
    tally
}

/// One point of the threshold sweep, with NAB's row-level counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThresholdScore {
    /// Rows with an anomaly score at or above this are detections.
    pub threshold: f64,
    /// Raw (unnormalised) corpus score.
    pub score: f64,
    /// Detected rows inside windows.
    pub tp: usize,
    /// Undetected rows outside windows.
    pub tn: usize,
    /// Detected rows outside windows.
    pub fp: usize,
    /// Undetected rows inside windows.
    pub fn_: usize,
}

/// Score and window-level counts of a detector at one threshold.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Tally {
    /// Raw (unnormalised) score.
    pub score: f64,
    /// Windows with at least one detection (true positives).
    pub detected_windows: usize,
    /// Scored windows without a detection (false negatives).
    pub missed_windows: usize,
    /// Detected rows outside every window (false positives).
    pub false_positives: usize,
}

/// NAB's normalisation: 100 · (raw − null) / (perfect − null).
pub fn normalized_score(raw: f64, null: f64, perfect: f64) -> f64 {
    100.0 * (raw - null) / (perfect - null)
}

/// A detector's result under one profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Profile name.
    pub profile: String,
    /// The optimised threshold and its raw score.
    pub best: ThresholdScore,
    /// Window-level counts at that threshold.
    pub tally: Tally,
    /// The normalised score (0 = null detector, 100 = perfect).
    pub normalized: f64,
}

/// Optimises the threshold for one profile and normalises the result against the
/// null detector's raw score for the same profile.
pub fn optimize_threshold(
    sweep: &CorpusSweep,
    scores: &[Vec<f64>],
    profile: &super::Profile,
    null_raw: f64,
) -> Result<Evaluation, NabError> {
    let best = sweep.optimize(scores, &profile.cost)?;
    let tally = sweep.score_at(scores, &profile.cost, best.threshold)?;
    Ok(Evaluation {
        profile: profile.name.clone(),
        best,
        tally,
        normalized: normalized_score(best.score, null_raw, sweep.perfect_score(&profile.cost)),
    })
}
