//! Hand-made NAB scoring cases whose scores are worked out in the comments.
//!
//! The file has 100 rows, so probation is ⌊0.15·100⌋ = 15 rows (0..=14), and one
//! window at rows 40..=49 (width 10). σ(y) = 2/(1 + e^{5y}) − 1 = tanh(−5y/2) and
//! σ(−1) = tanh(2.5) = 0.986614298151430. Standard weights: A_TP = 1, A_FP = 0.11,
//! A_FN = 1.

use sentinel_bench::nab::scorer::{
    normalized_score, probation_length, scaled_sigmoid, CorpusSweep, NO_DETECTION_THRESHOLD,
};
use sentinel_bench::nab::{Corpus, CostMatrix, DataFile, LabelWindow, Record};

const STANDARD: CostMatrix = CostMatrix {
    tp: 1.0,
    fp: 0.11,
    fn_: 1.0,
};

const LOW_FN: CostMatrix = CostMatrix {
    tp: 1.0,
    fp: 0.11,
    fn_: 2.0,
};

/// A 100-row file with one window at rows 40..=49, plus optional extra files.
fn corpus_with(windows: &[(usize, usize)], rows: usize) -> Corpus {
    let records = (0..rows)
        .map(|i| Record {
            timestamp: format!("row {i}"),
            micros: i as i64 * 300_000_000,
            value: 0.0,
        })
        .collect();
    let windows = windows
        .iter()
        .map(|&(start, end)| LabelWindow { start, end })
        .collect();
    Corpus {
        files: vec![DataFile::new("cat/file.csv", records, windows).unwrap()],
    }
}

fn one_window() -> Corpus {
    corpus_with(&[(40, 49)], 100)
}

/// Anomaly scores with 1.0 at the given rows and 0 elsewhere.
fn detections(rows: &[usize]) -> Vec<Vec<f64>> {
    let mut s = vec![0.0; 100];
    for &r in rows {
        s[r] = 1.0;
    }
    vec![s]
}

fn score(corpus: &Corpus, rows: &[usize], cost: &CostMatrix) -> f64 {
    CorpusSweep::new(corpus)
        .score_at(&detections(rows), cost, 0.5)
        .unwrap()
        .score
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn probation_is_fifteen_percent_capped_at_750() {
    assert_eq!(probation_length(100), 15);
    assert_eq!(probation_length(4032), 604); // ⌊604.8⌋
    assert_eq!(probation_length(5000), 750);
    assert_eq!(probation_length(15_902), 750);
    assert_eq!(probation_length(6), 0);
}

#[test]
fn scaled_sigmoid_fixed_points() {
    assert!(close(scaled_sigmoid(0.0), 0.0));
    assert!(close(scaled_sigmoid(-1.0), 0.986_614_298_151_430_5));
    assert!(close(scaled_sigmoid(1.0), -0.986_614_298_151_430_5));
    assert_eq!(scaled_sigmoid(3.000_001), -1.0);
}

#[test]
fn tp_at_left_edge_scores_a_tp() {
    // Row 40: position −(49 − 40 + 1)/10 = −1, so σ(−1)/σ(−1) · 1 = 1.
    assert!(close(score(&one_window(), &[40], &STANDARD), 1.0));
}

#[test]
fn tp_at_right_edge_scores_a_little() {
    // Row 49: position −(49 − 49 + 1)/10 = −0.1; σ(−0.1) = tanh(0.25) = 0.244918662,
    // so 0.244918662 / 0.986614298 = 0.248241550.
    assert!(close(
        score(&one_window(), &[49], &STANDARD),
        0.248_241_549_775_429_92
    ));
}

#[test]
fn tp_in_the_middle() {
    // Row 45: position −5/10 = −0.5; σ(−0.5) = tanh(1.25) = 0.848283640,
    // 0.848283640 / 0.986614298 = 0.859792567.
    assert!(close(
        score(&one_window(), &[45], &STANDARD),
        0.859_792_566_909_783_7
    ));
}

#[test]
fn only_the_earliest_detection_in_a_window_counts() {
    // Rows 42 and 47: 42 gives σ(−0.8)/σ(−1) = tanh(2)/tanh(2.5) = 0.977106841;
    // 47 adds nothing.
    assert!(close(
        score(&one_window(), &[42, 47], &STANDARD),
        0.977_106_840_922_604_5
    ));
    assert!(close(
        score(&one_window(), &[42], &STANDARD),
        score(&one_window(), &[42, 47], &STANDARD)
    ));
}

#[test]
fn fp_right_after_a_window_costs_little() {
    // Row 50: |49 − 50|/(10 − 1) = 1/9; σ(1/9) = −0.270847119, × 0.11 = −0.029793183;
    // the window is missed: −1. Total −1.029793183.
    assert!(close(
        score(&one_window(), &[50], &STANDARD),
        -1.029_793_183_036_839_4
    ));
}

#[test]
fn fp_far_after_a_window_costs_a_fp() {
    // Row 90: 41/9 = 4.56 > 3, so σ = −1 and the FP costs 0.11; plus the miss: −1.11.
    assert!(close(score(&one_window(), &[90], &STANDARD), -1.11));
}

#[test]
fn fp_before_any_window_costs_a_fp() {
    // Row 20: no window before it, so −A_FP = −0.11; plus the miss: −1.11.
    assert!(close(score(&one_window(), &[20], &STANDARD), -1.11));
}

#[test]
fn missed_window_costs_a_fn() {
    assert!(close(score(&one_window(), &[], &STANDARD), -1.0));
    assert!(close(score(&one_window(), &[], &LOW_FN), -2.0));
}

#[test]
fn detections_in_probation_are_ignored() {
    // Row 10 < 15 is in probation: only the miss counts.
    assert!(close(score(&one_window(), &[10], &STANDARD), -1.0));
}

#[test]
fn window_fully_inside_probation_is_not_scored() {
    // Window 5..=9 lies in the probation period: NAB never scores it (no −A_FN),
    // but it still counts in the perfect score.
    let corpus = corpus_with(&[(5, 9), (40, 49)], 100);
    assert!(close(score(&corpus, &[40], &STANDARD), 1.0));
    assert!(close(
        CorpusSweep::new(&corpus).perfect_score(&STANDARD),
        2.0
    ));
}

#[test]
fn counts_are_window_level() {
    let tally = CorpusSweep::new(&one_window())
        .score_at(&detections(&[20, 42, 47, 90]), &STANDARD, 0.5)
        .unwrap();
    assert_eq!(tally.detected_windows, 1);
    assert_eq!(tally.missed_windows, 0);
    assert_eq!(tally.false_positives, 2);
    // 0.977106841 − 0.11 − 0.11 (row 90 is 41/9 > 3 widths after the window).
    assert!(close(tally.score, 0.977_106_840_922_604_5 - 0.22));
}

#[test]
fn normalization_maps_null_to_0_and_perfect_to_100() {
    // One window: null = −1, perfect = 1. A detection in the middle (0.859792567)
    // normalises to 100 · (0.859792567 + 1)/2 = 92.989628345.
    assert!(close(normalized_score(-1.0, -1.0, 1.0), 0.0));
    assert!(close(normalized_score(1.0, -1.0, 1.0), 100.0));
    let raw = score(&one_window(), &[45], &STANDARD);
    assert!(close(
        normalized_score(raw, -1.0, 1.0),
        92.989_628_345_489_18
    ));
}

#[test]
fn sweep_visits_every_distinct_threshold_and_picks_the_best() {
    // Scores: row 90 → 0.95 (FP), row 45 → 0.9 (TP), row 20 → 0.8 (FP), rest 0.
    let mut s = vec![0.0; 100];
    s[90] = 0.95;
    s[45] = 0.9;
    s[20] = 0.8;
    let scores = vec![s];
    let sweep = CorpusSweep::new(&one_window());
    let curve = sweep.threshold_curve(&scores, &STANDARD).unwrap();
    let thresholds: Vec<f64> = curve.iter().map(|p| p.threshold).collect();
    assert_eq!(
        thresholds,
        vec![NO_DETECTION_THRESHOLD, 0.95, 0.9, 0.8, 0.0]
    );
    // 1.1: nothing detected → −1.
    // 0.95: −1 − 0.11 = −1.11.
    // 0.9: −0.11 + 0.859792567 = 0.749792567.
    // 0.8: 0.749792567 − 0.11 = 0.639792567.
    let want = [
        -1.0,
        -1.11,
        0.749_792_566_909_783_7,
        0.639_792_566_909_783_7,
    ];
    for (point, want) in curve.iter().zip(want) {
        assert!(close(point.score, want), "{point:?} vs {want}");
    }
    // Every score agrees with scoring at that threshold directly.
    for point in &curve {
        let direct = sweep.score_at(&scores, &STANDARD, point.threshold).unwrap();
        assert!(close(point.score, direct.score));
    }
    let best = sweep.optimize(&scores, &STANDARD).unwrap();
    assert_eq!(best.threshold, 0.9);
    assert_eq!((best.tp, best.fp), (1, 1));
}

#[test]
fn equal_scores_prefer_the_higher_threshold() {
    // Row 42 → 0.9 (TP), row 47 → 0.7 (same window, later): both thresholds give
    // 0.977106841, and NAB keeps the first (higher) one.
    let mut s = vec![0.0; 100];
    s[42] = 0.9;
    s[47] = 0.7;
    let best = CorpusSweep::new(&one_window())
        .optimize(&[s], &STANDARD)
        .unwrap();
    assert_eq!(best.threshold, 0.9);
    assert!(close(best.score, 0.977_106_840_922_604_5));
}

#[test]
fn tied_anomaly_scores_are_one_threshold() {
    // Rows 30 (FP before the window) and 44 (TP) share 0.6: one curve point for both.
    let mut s = vec![0.0; 100];
    s[30] = 0.6;
    s[44] = 0.6;
    let curve = CorpusSweep::new(&one_window())
        .threshold_curve(&[s], &STANDARD)
        .unwrap();
    assert_eq!(curve.len(), 3);
    assert_eq!(curve[1].threshold, 0.6);
    // σ(−0.6)/σ(−1) = tanh(1.5)/tanh(2.5) = 0.918818..., minus 0.11.
    let tp = scaled_sigmoid(-0.6) / scaled_sigmoid(-1.0);
    assert!(close(curve[1].score, tp - 0.11));
}

#[test]
fn mismatched_scores_are_an_error_not_a_panic() {
    let sweep = CorpusSweep::new(&one_window());
    assert!(sweep.score_at(&[vec![0.0; 99]], &STANDARD, 0.5).is_err());
    assert!(sweep.optimize(&[], &STANDARD).is_err());
    let mut s = vec![0.0; 100];
    s[3] = f64::NAN;
    assert!(sweep.optimize(&[s], &STANDARD).is_err());
}
