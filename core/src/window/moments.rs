//! Running mean/variance of a sliding sequence, robust to add/remove cancellation.
//!
//! Every value `x` enters the sums as a scaled deviation `d = x·2⁻ᵉ − c`, where the
//! power of two `2ᵉ` (the *unit*) and the centre `c` are fixed at the last
//! [`Moments::rebuild`]. Scaling by a power of two is exact, so `d` carries only one
//! rounding, relative to `|d|` itself, and is bit-identical when the same `x` is
//! later removed. `Σd` and `Σd²` are kept as double-double (≈106-bit) sums with
//! error-free transformations (`d²` exactly via Dekker's product), so sliding
//! add/remove does not lose precision the way plain sums do.
//!
//! Accuracy contract (population statistics over the current sequence, whose
//! minimum and maximum are `lo` and `hi`): as long as the owner calls `rebuild`
//! whenever [`Moments::needs_rebuild`] says so,
//! `|mean − exact| ≤ 1e-9·(hi − lo) + 4ε·max(|lo|, |hi|)` and
//! `|std − exact| ≤ 1e-9·(hi − lo)` (ε = 2⁻⁵³). Sketch: each `d` is exact up to a
//! relative ε and at most 2¹²·(hi − lo) in size, and k double-double updates perturb
//! the variance by at most ~4k·ε²·max d², so with k ≤ 3·65 535 the standard deviation
//! moves by at most 2·√k·ε·2¹²·(hi − lo) < 5e-10·(hi − lo). `needs_rebuild` asks for a rebuild
//! once every value has been replaced since the last one (amortised O(1) per update)
//! and early when the largest deviation seen since the last rebuild exceeds
//! 2¹² times the current range (e.g. after a level shift or once an outlier leaves),
//! or when the scaled deviations grow or shrink far enough to threaten overflow or
//! underflow of their squares.

use serde::{Deserialize, Serialize};

use super::WindowStateError;

/// Early rebuild once the largest scaled deviation seen exceeds this multiple of the range.
const PRECISION_RATIO: f64 = 4096.0;
/// Early rebuild once a scaled deviation reaches this size (keeps `d²` sums far from overflow).
const GROWTH_LIMIT: f64 = pow2(400);
/// Early rebuild once the scaled range falls below this (keeps `d²` far from underflow).
const UNDERFLOW_LIMIT: f64 = pow2(-400);
/// Smallest unit exponent (both `2^e` and `2^-e` stay normal numbers).
const MIN_EXP: i32 = -1022;
/// Largest unit exponent.
const MAX_EXP: i32 = 1022;

/// `2^e` for `e` in `MIN_EXP..=MAX_EXP`.
const fn pow2(e: i32) -> f64 {
    debug_assert!(MIN_EXP <= e && e <= MAX_EXP);
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// Error-free sum: `a + b = s + e` exactly.
#[inline(always)]
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

/// Error-free sum for `|a| ≥ |b|` (or `a == 0`).
#[inline(always)]
fn fast_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    (s, b - (s - a))
}

/// Veltkamp split of `a` into two 26-bit halves (exact while `|a| < 2^996`).
#[inline(always)]
fn split(a: f64) -> (f64, f64) {
    let c = 134_217_729.0 * a;
    let hi = c - (c - a);
    (hi, a - hi)
}

/// Error-free product (Dekker): `a·b = p + e` exactly, barring over/underflow.
#[inline(always)]
fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    let (ah, al) = split(a);
    let (bh, bl) = split(b);
    (p, ((ah * bh - p) + ah * bl + al * bh) + al * bl)
}

/// Error-free square: `a² = p + e` exactly, barring over/underflow.
#[inline(always)]
fn two_sq(a: f64) -> (f64, f64) {
    let p = a * a;
    let (h, l) = split(a);
    (p, ((h * h - p) + 2.0 * h * l) + l * l)
}

/// Double-double number `hi + lo` with `|lo| ≤ ulp(hi)/2`.
#[derive(Clone, Copy, Debug, Default)]
struct Dd {
    hi: f64,
    lo: f64,
}

impl Dd {
    /// `self + x`.
    #[inline(always)]
    fn add(self, x: f64) -> Dd {
        let (s, e) = two_sum(self.hi, x);
        let (hi, lo) = fast_two_sum(s, e + self.lo);
        Dd { hi, lo }
    }

    /// `self + b`.
    #[inline(always)]
    fn add_dd(self, b: Dd) -> Dd {
        let (s, e) = two_sum(self.hi, b.hi);
        let (hi, lo) = fast_two_sum(s, e + (self.lo + b.lo));
        Dd { hi, lo }
    }

    /// `−self`.
    fn neg(self) -> Dd {
        Dd {
            hi: -self.hi,
            lo: -self.lo,
        }
    }

    /// `self / n`.
    fn div(self, n: f64) -> Dd {
        let q = self.hi / n;
        let (p, e) = two_prod(q, n);
        let r = (((self.hi - p) - e) + self.lo) / n;
        let (hi, lo) = fast_two_sum(q, r);
        Dd { hi, lo }
    }

    /// `self²`.
    fn square(self) -> Dd {
        let (p, e) = two_sq(self.hi);
        let (hi, lo) = fast_two_sum(p, e + 2.0 * self.hi * self.lo);
        Dd { hi, lo }
    }
}

/// Adds deviation `d` to the sums `(Σd, Σd²)`.
#[inline(always)]
fn accumulate((s1, s2): (Dd, Dd), d: f64) -> (Dd, Dd) {
    let (p, e) = two_sq(d);
    (s1.add(d), s2.add_dd(Dd { hi: p, lo: e }))
}

/// Running count, mean and population variance of a sliding sequence of finite values.
///
/// `push`/`pop` are O(1); `pop(x)` must remove a value previously pushed (or included
/// in the last `rebuild`) and not yet popped, otherwise the statistics are meaningless
/// (but nothing panics). The owner keeps the values and calls [`Moments::rebuild`]
/// with them, in a fixed order, whenever [`Moments::needs_rebuild`] returns true; see
/// the module documentation for the accuracy this guarantees.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(into = "MomentsRepr", try_from = "MomentsRepr")]
pub struct Moments {
    count: usize,
    pops: usize,
    exp: i32,
    inv_unit: f64,
    centre: f64,
    s1: Dd,
    s2: Dd,
    peak: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Moments {
    /// Bit-for-bit equality of the whole state (so equal states give equal results).
    fn eq(&self, other: &Self) -> bool {
        MomentsRepr::from(*self) == MomentsRepr::from(*other)
    }
}

impl Moments {
    /// Empty sequence.
    pub fn new() -> Self {
        Moments {
            count: 0,
            pops: 0,
            exp: 0,
            inv_unit: 1.0,
            centre: 0.0,
            s1: Dd::default(),
            s2: Dd::default(),
            peak: 0.0,
        }
    }

    /// Number of values in the sequence.
    pub fn count(&self) -> usize {
        self.count
    }

    #[inline(always)]
    fn deviation(&self, x: f64) -> f64 {
        x * self.inv_unit - self.centre
    }

    /// Appends `x` (must be finite; checked in debug builds).
    #[inline]
    pub fn push(&mut self, x: f64) {
        debug_assert!(x.is_finite(), "Moments::push({x})");
        let d = self.deviation(x);
        (self.s1, self.s2) = accumulate((self.s1, self.s2), d);
        self.peak = self.peak.max(d.abs());
        self.count += 1;
    }

    /// Removes `x`, a value currently in the sequence (see the type's contract).
    #[inline]
    pub fn pop(&mut self, x: f64) {
        debug_assert!(x.is_finite(), "Moments::pop({x})");
        if self.count <= 1 {
            *self = Moments::new();
            return;
        }
        let d = self.deviation(x);
        let (p, e) = two_sq(d);
        self.s1 = self.s1.add(-d);
        self.s2 = self.s2.add_dd(Dd { hi: p, lo: e }.neg());
        self.count -= 1;
        self.pops += 1;
    }

    /// Recomputes the sums exactly from `values` (the whole current sequence, in a
    /// fixed order) and re-centres; O(n), three passes.
    pub fn rebuild<I>(&mut self, values: I)
    where
        I: IntoIterator<Item = f64>,
        I::IntoIter: Clone,
    {
        let values = values.into_iter();
        *self = Moments::new();
        let (count, abs_max) = values
            .clone()
            .fold((0usize, 0.0f64), |(n, m), x| (n + 1, m.max(x.abs())));
        if count == 0 {
            return;
        }
        self.exp = unit_exponent(abs_max);
        self.inv_unit = pow2(-self.exp);
        let inv_unit = self.inv_unit;
        let (sum, lo, hi) = values.clone().fold(
            (0.0f64, f64::INFINITY, f64::NEG_INFINITY),
            |(s, lo, hi), x| {
                let y = x * inv_unit;
                (s + y, lo.min(y), hi.max(y))
            },
        );
        self.centre = (sum / count as f64).clamp(lo, hi);
        // Two interleaved accumulators halve the latency chain; the order is fixed.
        let (mut a, mut b) = (
            (Dd::default(), Dd::default()),
            (Dd::default(), Dd::default()),
        );
        let mut peak = 0.0f64;
        let mut values = values;
        while let Some(x) = values.next() {
            let d = self.deviation(x);
            a = accumulate(a, d);
            peak = peak.max(d.abs());
            if let Some(y) = values.next() {
                let d = self.deviation(y);
                b = accumulate(b, d);
                peak = peak.max(d.abs());
            }
        }
        self.s1 = a.0.add_dd(b.0);
        self.s2 = a.1.add_dd(b.1);
        self.peak = peak;
        self.count = count;
    }

    /// Whether the owner should call [`Moments::rebuild`] now to keep the accuracy
    /// contract; `lo` and `hi` are the current minimum and maximum of the sequence.
    #[inline]
    pub fn needs_rebuild(&self, lo: f64, hi: f64) -> bool {
        if self.count == 0 {
            return false;
        }
        if self.pops >= self.count || self.peak >= GROWTH_LIMIT {
            return true;
        }
        let range = hi * self.inv_unit - lo * self.inv_unit;
        self.peak > PRECISION_RATIO * range || (range > 0.0 && range < UNDERFLOW_LIMIT)
    }

    /// Arithmetic mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let q = self.s1.div(self.count as f64);
        let (s, e) = two_sum(self.centre, q.hi);
        Some((s + (e + q.lo)) * pow2(self.exp))
    }

    /// Population variance in scaled units (multiply by `unit²`).
    fn scaled_variance(&self) -> f64 {
        let n = self.count as f64;
        let m2 = self.s2.div(n);
        let m1 = self.s1.div(n).square();
        m2.add_dd(m1.neg()).hi.max(0.0)
    }

    /// Population variance (divides by n), or `None` when empty; `+∞` if it overflows.
    pub fn variance(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let unit = pow2(self.exp);
        Some(self.scaled_variance() * unit * unit)
    }

    /// Population standard deviation, or `None` when empty.
    pub fn std_dev(&self) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        Some(self.scaled_variance().sqrt() * pow2(self.exp))
    }
}

/// Unit exponent for a sequence whose largest magnitude is `abs_max`: scaled values
/// have magnitude below 1 (up to 4 at the very top of the f64 range).
fn unit_exponent(abs_max: f64) -> i32 {
    if abs_max == 0.0 {
        return 0;
    }
    let biased = ((abs_max.to_bits() >> 52) & 0x7ff) as i32;
    (biased - 1023 + 1).clamp(MIN_EXP, MAX_EXP)
}

/// Serialised form of [`Moments`]: every field, exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct MomentsRepr {
    count: u64,
    pops: u64,
    exp: i32,
    centre: u64,
    s1: (u64, u64),
    s2: (u64, u64),
    peak: u64,
}

impl From<Moments> for MomentsRepr {
    fn from(m: Moments) -> Self {
        MomentsRepr {
            count: m.count as u64,
            pops: m.pops as u64,
            exp: m.exp,
            centre: m.centre.to_bits(),
            s1: (m.s1.hi.to_bits(), m.s1.lo.to_bits()),
            s2: (m.s2.hi.to_bits(), m.s2.lo.to_bits()),
            peak: m.peak.to_bits(),
        }
    }
}

impl TryFrom<MomentsRepr> for Moments {
    type Error = WindowStateError;

    fn try_from(r: MomentsRepr) -> Result<Self, Self::Error> {
        let count = usize::try_from(r.count).map_err(|_| WindowStateError::BadMoments)?;
        let pops = usize::try_from(r.pops).map_err(|_| WindowStateError::BadMoments)?;
        if !(MIN_EXP..=MAX_EXP).contains(&r.exp) {
            return Err(WindowStateError::BadMoments);
        }
        let f = f64::from_bits;
        let m = Moments {
            count,
            pops,
            exp: r.exp,
            inv_unit: pow2(-r.exp),
            centre: f(r.centre),
            s1: Dd {
                hi: f(r.s1.0),
                lo: f(r.s1.1),
            },
            s2: Dd {
                hi: f(r.s2.0),
                lo: f(r.s2.1),
            },
            peak: f(r.peak),
        };
        let finite = [m.centre, m.s1.hi, m.s1.lo, m.s2.hi, m.s2.lo, m.peak]
            .iter()
            .all(|v| v.is_finite());
        if !finite || m.peak < 0.0 || (count == 0 && pops != 0) {
            return Err(WindowStateError::BadMoments);
        }
        Ok(m)
    }
}
