//! Brute-force comparisons, invariant checks and serialisation tests for [`Window`].

use std::collections::VecDeque;

use proptest::prelude::*;

use super::*;

const FIXED_QS: [f64; 7] = [0.0, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];
/// Documented accuracy of mean and standard deviation, relative to the window's range.
const REL_TOL: f64 = 1e-9;

/// The type-7 quantile exactly as specified, on a sorted slice.
fn ref_quantile(sorted: &[f64], q: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor();
    let t = h - lo;
    let lo = lo as usize;
    if t == 0.0 {
        return sorted[lo];
    }
    let (a, b) = (sorted[lo], sorted[lo + 1]);
    if (b - a).is_finite() {
        a + t * (b - a)
    } else {
        a * (1.0 - t) + b * t
    }
}

fn ref_sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn ref_mad(sorted: &[f64]) -> f64 {
    let m = ref_quantile(sorted, 0.5);
    let devs: Vec<f64> = sorted.iter().map(|v| (v - m).abs()).collect();
    ref_quantile(&ref_sorted(&devs), 0.5)
}

/// Power of two `s` with every `|x|/s ≤ 1` (and `s ≥ 2^-1022`), so `x/s` is exact.
fn ref_scale(values: &[f64]) -> f64 {
    let m = values.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let mut s = f64::MIN_POSITIVE;
    while s < m && s < 2f64.powi(1023) {
        s *= 2.0;
    }
    s
}

/// Corrected two-pass mean and population std of `values / scale` (Björck).
fn ref_scaled_moments(values: &[f64], scale: f64) -> (f64, f64) {
    let n = values.len() as f64;
    let y: Vec<f64> = values.iter().map(|x| x / scale).collect();
    let m0 = y.iter().sum::<f64>() / n;
    let m = m0 + y.iter().map(|v| v - m0).sum::<f64>() / n;
    let d: f64 = y.iter().map(|v| v - m).sum::<f64>() / n;
    let var = y.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n - d * d;
    (m, var.max(0.0).sqrt())
}

fn bits(x: Option<f64>) -> Option<u64> {
    x.map(f64::to_bits)
}

/// Compares every statistic of `w` with a brute-force recomputation over `model`.
fn check_against_model(w: &Window, model: &VecDeque<f64>, extra_qs: &[f64]) {
    w.check_invariants().unwrap();
    let values: Vec<f64> = model.iter().copied().collect();
    let n = values.len();
    assert_eq!(w.len(), n);
    assert_eq!(w.is_empty(), n == 0);
    assert_eq!(w.is_full(), n == w.capacity());
    let got: Vec<u64> = w.iter().map(f64::to_bits).collect();
    let want: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(got, want, "iter order");
    assert_eq!(bits(w.last()), bits(values.last().copied()));
    assert_eq!(bits(w.first()), bits(values.first().copied()));
    if n == 0 {
        for q in FIXED_QS {
            assert_eq!(w.quantile(q), None);
        }
        assert_eq!(w.mean(), None);
        assert_eq!(w.std_dev(), None);
        assert_eq!(w.mad(), None);
        assert_eq!(w.median(), None);
        assert_eq!(w.rank_below(0.0), 0);
        return;
    }
    let sorted = ref_sorted(&values);
    for (k, v) in sorted.iter().enumerate() {
        assert_eq!(w.select(k).to_bits(), v.to_bits(), "select({k})");
    }
    assert_eq!(bits(w.min()), bits(sorted.first().copied()));
    assert_eq!(bits(w.max()), bits(sorted.last().copied()));
    for &q in FIXED_QS.iter().chain(extra_qs) {
        let want = ref_quantile(&sorted, q);
        assert_eq!(bits(w.quantile(q)), Some(want.to_bits()), "quantile({q})");
    }
    let q = |p| Some(ref_quantile(&sorted, p).to_bits());
    assert_eq!(bits(w.median()), q(0.5));
    assert_eq!(bits(w.q1()), q(0.25));
    assert_eq!(bits(w.q3()), q(0.75));
    assert_eq!(bits(w.p95()), q(0.95));
    assert_eq!(bits(w.p99()), q(0.99));
    let mad = Some(ref_mad(&sorted).to_bits());
    assert_eq!(bits(w.mad()), mad, "mad");
    // The search hint only affects speed: any stale value gives the same answer.
    let saved = w.mad_hint.get();
    for hint in [0, 1, n as u32 / 5, n as u32 / 3, n as u32, u32::MAX] {
        w.mad_hint.set(hint);
        assert_eq!(bits(w.mad()), mad, "mad from hint {hint}");
    }
    w.mad_hint.set(saved);
    assert_eq!(w.quantile(-0.1), None);
    assert_eq!(w.quantile(1.1), None);
    assert_eq!(w.quantile(f64::NAN), None);

    let mut probes = vec![f64::NEG_INFINITY, f64::INFINITY, -0.0, 0.0];
    for pair in sorted.windows(2) {
        probes.push(pair[0] / 2.0 + pair[1] / 2.0);
    }
    for &v in &sorted {
        probes.push(v);
        let k = to_key(v);
        probes.push(from_key(k - 1));
        probes.push(from_key(k + 1));
    }
    for x in probes {
        let below = sorted.partition_point(|&v| v < x);
        let at_or_below = sorted.partition_point(|&v| v <= x);
        assert_eq!(w.rank_below(x), below, "rank_below({x})");
        assert_eq!(w.rank_at_or_below(x), at_or_below, "rank_at_or_below({x})");
    }
    assert_eq!(w.rank_below(f64::NAN), 0);
    assert_eq!(w.rank_at_or_below(f64::NAN), 0);

    check_moments(w, &sorted);
}

/// Mean and std within the documented tolerance; exact for a constant window.
fn check_moments(w: &Window, sorted: &[f64]) {
    let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
    let (mean, std) = (w.mean().unwrap(), w.std_dev().unwrap());
    if lo == hi {
        assert_eq!(mean.to_bits(), lo.to_bits(), "constant mean");
        assert_eq!(std.to_bits(), 0.0f64.to_bits(), "constant std");
        return;
    }
    let s = ref_scale(sorted);
    let (ref_mean, ref_std) = ref_scaled_moments(sorted, s);
    let range = hi / s - lo / s;
    let abs_max = (lo / s).abs().max((hi / s).abs());
    let mean_err = (mean / s - ref_mean).abs();
    let std_err = (std / s - ref_std).abs();
    let eps = f64::EPSILON / 2.0;
    assert!(
        mean_err <= REL_TOL * range + 4.0 * eps * abs_max,
        "mean {mean} vs {} (range {range}, scale {s})",
        ref_mean * s
    );
    assert!(
        std_err <= REL_TOL * range,
        "std {std} vs {} (range {range}, scale {s})",
        ref_std * s
    );
    assert!(mean >= lo && mean <= hi);
}

/// Pushes `stream` into a window of `capacity`, checking everything after each push;
/// half-way through, round-trips the window through bincode and checks that the copy
/// answers bit-identically from then on.
/// Full comparisons happen every `every` pushes (and at the end); the tree's
/// invariants are checked after every push.
fn run_stream(capacity: usize, stream: &[f64], extra_qs: &[f64], every: usize) {
    let mut w = Window::new(capacity);
    let mut model = VecDeque::new();
    let mut copy: Option<Window> = None;
    check_against_model(&w, &model, extra_qs);
    for (i, &x) in stream.iter().enumerate() {
        let full = i % every == 0 || i + 1 == stream.len();
        let evicted = w.push(x);
        if x.is_finite() {
            model.push_back(x + 0.0);
            let want = (model.len() > capacity).then(|| model.pop_front().unwrap());
            assert_eq!(bits(evicted), bits(want), "evicted at push {i}");
        } else {
            assert_eq!(evicted, None);
        }
        if full {
            check_against_model(&w, &model, extra_qs);
        } else {
            w.check_invariants().unwrap();
        }
        if let Some(c) = copy.as_mut() {
            assert_eq!(bits(c.push(x)), bits(evicted));
            if full {
                assert_same_answers(&w, c, extra_qs);
            }
        }
        if i == stream.len() / 2 {
            let bytes = bincode::serialize(&w).unwrap();
            let restored: Window = bincode::deserialize(&bytes).unwrap();
            restored.check_invariants().unwrap();
            assert_eq!(restored, w);
            assert_eq!(bincode::serialize(&restored).unwrap(), bytes);
            copy = Some(restored);
        }
    }
}

/// Every query of `a` and `b` gives bit-identical answers.
fn assert_same_answers(a: &Window, b: &Window, extra_qs: &[f64]) {
    assert_eq!(a, b);
    assert_eq!(bits(a.mean()), bits(b.mean()));
    assert_eq!(bits(a.std_dev()), bits(b.std_dev()));
    assert_eq!(bits(a.mad()), bits(b.mad()));
    for &q in FIXED_QS.iter().chain(extra_qs) {
        assert_eq!(bits(a.quantile(q)), bits(b.quantile(q)));
    }
    for k in 0..a.len() {
        assert_eq!(a.select(k).to_bits(), b.select(k).to_bits());
    }
}

fn ordinary() -> impl Strategy<Value = f64> {
    -1000.0..1000.0f64
}

fn small_set() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![-3.0, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0, 1e6])
}

fn magnitude(scale: f64) -> impl Strategy<Value = f64> {
    (1.0..10.0f64, any::<bool>()).prop_map(move |(m, neg)| if neg { -m * scale } else { m * scale })
}

fn any_finite() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn mixed() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => ordinary(),
        3 => small_set(),
        2 => magnitude(1e150),
        2 => magnitude(1e-150),
        1 => magnitude(1.0),
        2 => any_finite(),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
    ]
}

/// Values near `level` with noise of relative size `noise`.
fn around(level: f64, noise: f64) -> impl Strategy<Value = f64> {
    (-1.0..1.0f64).prop_map(move |u| level * (1.0 + noise * u))
}

/// Runs, ramps and sawtooths: they fill leaves unevenly and force splits and merges.
fn ramps(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f64>> {
    (len, 1usize..3000, any::<bool>(), -1e3..1e3f64).prop_map(|(n, period, down, base)| {
        let sign = if down { -1.0 } else { 1.0 };
        (0..n).map(|i| base + sign * (i % period) as f64).collect()
    })
}

fn stream(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<f64>> {
    let max_len = len.end;
    let v = |s: BoxedStrategy<f64>| prop::collection::vec(s, len.clone());
    prop_oneof![
        ramps(len.clone()),
        v(ordinary().boxed()),
        v(small_set().boxed()),
        (any_finite(), len.clone()).prop_map(|(c, n)| vec![c; n]),
        v(magnitude(1e150).boxed()),
        v(magnitude(1e-150).boxed()),
        v(mixed().boxed()),
        v(any_finite().boxed()),
        (
            prop::collection::vec(around(1e6, 1e-3), len.start / 2..max_len / 2 + 1),
            prop::collection::vec(around(1.0, 1e-7), len.start / 2..max_len / 2 + 1),
        )
            .prop_map(|(a, b)| [a, b].concat()),
        (
            prop::collection::vec(around(1.0, 1e-6), len.clone()),
            prop::collection::vec((0..max_len, prop_oneof![Just(1e12), Just(-1e200)]), 0..4),
        )
            .prop_map(|(mut s, spikes)| {
                for (at, v) in spikes {
                    if at < s.len() {
                        s[at] = v;
                    }
                }
                s
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn small_windows_match_brute_force(
        capacity in prop_oneof![1usize..=64, 65usize..=300],
        values in stream(0..700),
        extra_qs in prop::collection::vec(0.0..=1.0f64, 3),
    ) {
        run_stream(capacity, &values, &extra_qs, 1);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn default_windows_match_brute_force(
        values in prop_oneof![
            prop::collection::vec(mixed(), 2200..2600),
            prop::collection::vec(small_set(), 2200..2600),
            prop::collection::vec(ordinary(), 2200..2600),
        ],
        extra_qs in prop::collection::vec(0.0..=1.0f64, 2),
    ) {
        run_stream(DEFAULT_CAPACITY, &values, &extra_qs, 1);
    }

    #[test]
    fn deep_trees_match_brute_force(
        capacity in 1500usize..=5000,
        values in stream(9000..12_000),
        extra_qs in prop::collection::vec(0.0..=1.0f64, 2),
    ) {
        run_stream(capacity, &values, &extra_qs, 613);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn moments_track_a_sliding_sequence(
        values in prop::collection::vec(mixed().prop_filter("finite", |v| v.is_finite()), 1..300),
        width in 1usize..40,
    ) {
        let mut m = Moments::new();
        let mut live: VecDeque<f64> = VecDeque::new();
        for &x in &values {
            m.push(x);
            live.push_back(x);
            if live.len() > width {
                m.pop(live.pop_front().unwrap());
            }
            let sorted = ref_sorted(live.make_contiguous());
            let (lo, hi) = (sorted[0], sorted[sorted.len() - 1]);
            if m.needs_rebuild(lo, hi) {
                m.rebuild(live.iter().copied());
            }
            prop_assert_eq!(m.count(), live.len());
            if lo < hi {
                let s = ref_scale(&sorted);
                let (rm, rs) = ref_scaled_moments(&sorted, s);
                let range = hi / s - lo / s;
                let tol = REL_TOL * range + 2.0 * f64::EPSILON;
                prop_assert!((m.mean().unwrap() / s - rm).abs() <= tol);
                prop_assert!((m.std_dev().unwrap() / s - rs).abs() <= REL_TOL * range);
            }
        }
    }

    #[test]
    fn corrupted_bytes_never_panic(
        values in prop::collection::vec(mixed(), 0..80),
        capacity in 1usize..=64,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut w = Window::new(capacity);
        for &x in &values {
            w.push(x);
        }
        let bytes = bincode::serialize(&w).unwrap();
        let mut bad = bytes.clone();
        for (at, b) in flips {
            let i = at.index(bad.len());
            bad[i] ^= b;
        }
        for candidate in [bad, bytes[..cut.index(bytes.len())].to_vec()] {
            if let Ok(mut r) = bincode::deserialize::<Window>(&candidate) {
                r.check_invariants().unwrap();
                for &x in &values {
                    r.push(x);
                    let _ = (r.mean(), r.std_dev(), r.mad(), r.p99(), r.rank_below(x));
                }
            }
        }
    }
}

#[test]
fn empty_and_single() {
    let mut w = Window::new(1);
    assert!(w.is_empty() && !w.is_full());
    assert_eq!(
        (w.mean(), w.std_dev(), w.mad(), w.last()),
        (None, None, None, None)
    );
    assert_eq!(w.push(3.5), None);
    assert!(w.is_full());
    assert_eq!(w.push(-2.0), Some(3.5));
    assert_eq!(
        (w.median(), w.mad(), w.std_dev()),
        (Some(-2.0), Some(0.0), Some(0.0))
    );
}

#[test]
fn non_finite_pushes_are_ignored_and_negative_zero_is_canonical() {
    let mut w = Window::new(3);
    w.push(1.0);
    let before = w.clone();
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(w.push(x), None);
        assert_eq!(w, before);
    }
    w.push(-0.0);
    assert_eq!(w.last().unwrap().to_bits(), 0.0f64.to_bits());
}

#[test]
#[should_panic(expected = "select(2)")]
fn select_past_the_end_panics() {
    let mut w = Window::new(4);
    w.push(1.0);
    w.push(2.0);
    w.select(2);
}

#[test]
#[should_panic(expected = "capacity 0")]
fn zero_capacity_panics() {
    Window::new(0);
}

#[test]
fn constant_window_has_exact_moments() {
    let mut w = Window::new(50);
    for i in 0..500 {
        w.push(if i < 30 { i as f64 * 1e9 } else { 0.1 });
        if i >= 80 {
            assert_eq!(w.std_dev(), Some(0.0));
            assert_eq!(w.mean(), Some(0.1));
            assert_eq!(w.mad(), Some(0.0));
        }
    }
}

#[test]
fn memory_stays_within_budget_at_default_capacity() {
    let mut w = Window::new(DEFAULT_CAPACITY);
    let mut x = 0.5f64;
    let mut peak = 0;
    for i in 0..20_000 {
        x = (x * 3.9 * (1.0 - x)).clamp(1e-9, 1.0 - 1e-9);
        w.push(if i % 3 == 0 { (i % 7) as f64 } else { x });
        peak = peak.max(w.heap_bytes());
    }
    w.check_invariants().unwrap();
    // Arena capacities are capped (checked by `check_invariants`), so this is the
    // worst case too: ring 8000 + slot index 2000 + 31 leaves + 1 node.
    assert!(peak <= 20 * 1024, "heap_bytes {peak}");
    assert!(Window::new(DEFAULT_CAPACITY).heap_bytes() < 512);
}

#[test]
fn sorted_and_reverse_streams_keep_the_tree_valid() {
    for capacity in [65, 1000, 4097] {
        let mut w = Window::new(capacity);
        for i in 0..3 * capacity {
            let x = if (i / capacity) % 2 == 0 {
                i as f64
            } else {
                -(i as f64)
            };
            w.push(x);
        }
        w.check_invariants().unwrap();
        let mut model: Vec<f64> = w.iter().collect();
        model.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for (k, v) in model.iter().enumerate() {
            assert_eq!(w.select(k), *v);
        }
    }
}

#[test]
fn max_capacity_works() {
    let mut w = Window::new(MAX_CAPACITY);
    for i in 0..MAX_CAPACITY + 5000 {
        w.push(((i * 7919) % 10007) as f64 + (i % 3) as f64 * 0.25);
        if i % 4099 == 0 {
            w.check_invariants().unwrap();
        }
    }
    w.check_invariants().unwrap();
    assert_eq!(w.tree.height(), 3);
    let sorted = ref_sorted(&w.iter().collect::<Vec<_>>());
    for k in (0..sorted.len()).step_by(97) {
        assert_eq!(w.select(k), sorted[k]);
    }
    assert_eq!(w.mad(), Some(ref_mad(&sorted)));
    assert_eq!(w.median(), Some(ref_quantile(&sorted, 0.5)));
}

#[test]
fn json_round_trip() {
    let mut w = Window::new(10);
    for x in [
        1.5, -2.25, 1e-300, 7.0, 1e300, 0.1, 0.2, 0.3, 3.0, 4.0, 5.0, 6.0,
    ] {
        w.push(x);
    }
    let json = serde_json::to_string(&w).unwrap();
    let r: Window = serde_json::from_str(&json).unwrap();
    assert_eq!(r, w);
    assert_eq!(serde_json::to_string(&r).unwrap(), json);
}

#[test]
fn invalid_states_are_rejected() {
    let mut w = Window::new(4);
    for x in [1.0, 2.0, 3.0] {
        w.push(x);
    }
    let good: serde_json::Value = serde_json::to_value(&w).unwrap();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        serde_json::from_value::<Window>(v).unwrap_err().to_string()
    };
    assert!(with(&|v| v["capacity"] = 0.into()).contains("capacity 0"));
    assert!(with(&|v| v["capacity"] = 70_000.into()).contains("capacity 70000"));
    assert!(with(&|v| v["capacity"] = 2.into()).contains("holds 3 values"));
    assert!(with(&|v| v["values"][1] = (-0.0).into()).contains("#1"));
    assert!(with(&|v| v["values"] = serde_json::json!([1.0, 2.0])).contains("count 3"));
    assert!(with(&|v| v["moments"]["exp"] = 5000.into()).contains("malformed"));
    assert!(with(&|v| v["moments"]["s1"][0] = f64::NAN.to_bits().into()).contains("malformed"));
    assert!(with(&|v| v["values"] = serde_json::json!("x")).contains("invalid type"));
    let err = Window::try_from(WindowRepr {
        capacity: 4,
        values: vec![1.0, f64::NAN],
        moments: w.moments,
    })
    .unwrap_err();
    assert!(matches!(err, WindowStateError::BadValue { index: 1, .. }));
}
