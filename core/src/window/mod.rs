//! Sliding window of the last W samples of one baseline key, with O(log W) order
//! statistics and numerically robust running moments.
//!
//! A [`Window`] keeps its samples in a ring buffer of order-preserving `u64` keys and
//! indexes the ring's slots in a counted B+-tree (64-slot leaves, 32-way nodes, with a
//! slot → leaf index), so a push (insert + evict) and every order statistic (select,
//! rank, quantiles, median absolute deviation) cost O(log W) without sorting or
//! scanning; at W = 1000 the whole window takes under 19 KiB of heap. Mean and
//! standard deviation come from [`Moments`], rebuilt exactly from the ring in FIFO
//! order at least once per W pushes. Every result depends only on the sequence of
//! pushes, never on the tree's shape (order statistics return stored values; the
//! moments are fed in FIFO order), so identical pushes give bit-identical answers on
//! every instance, including one restored from its serialised form.

mod moments;
#[cfg(test)]
mod tests;
mod tree;

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

pub use moments::Moments;
use tree::OrderTree;

/// Default number of samples per window.
pub const DEFAULT_CAPACITY: usize = 1000;

/// Largest supported capacity (ring slots are addressed with 16 bits).
pub const MAX_CAPACITY: usize = u16::MAX as usize;

/// Why a serialised window (or its moments) was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WindowStateError {
    /// Capacity outside `1..=MAX_CAPACITY`.
    #[error("window capacity {0} is outside 1..={MAX_CAPACITY}")]
    BadCapacity(u64),
    /// More values than the capacity allows.
    #[error("window holds {len} values but its capacity is {capacity}")]
    TooManyValues {
        /// Number of values found.
        len: usize,
        /// Declared capacity.
        capacity: usize,
    },
    /// A value that a window can never hold (non-finite or negative zero).
    #[error("window value #{index} ({value}) is not a finite, canonical sample")]
    BadValue {
        /// Position in FIFO order.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// The running moments count a different number of values than the window holds.
    #[error("running moments count {moments} values but the window holds {len}")]
    CountMismatch {
        /// Count recorded in the moments.
        moments: usize,
        /// Number of values in the window.
        len: usize,
    },
    /// Malformed running-moment state (non-finite sums, impossible exponent or counters).
    #[error("malformed running-moment state")]
    BadMoments,
}

/// Maps a non-NaN `f64` to a `u64` with the same order (−0.0 must be canonicalised).
#[inline(always)]
fn to_key(x: f64) -> u64 {
    let b = x.to_bits();
    b ^ ((((b as i64) >> 63) as u64) | (1 << 63))
}

/// Inverse of [`to_key`].
#[inline(always)]
fn from_key(k: u64) -> f64 {
    f64::from_bits(k ^ (!(((k as i64) >> 63) as u64) | (1 << 63)))
}

/// `a + t·(b − a)` for `0 < t < 1`, falling back to `a·(1−t) + b·t` when `b − a`
/// overflows (only possible for values beyond ±8.9e307).
#[inline]
fn lerp(a: f64, b: f64, t: f64) -> f64 {
    let d = b - a;
    if d.is_finite() {
        a + t * d
    } else {
        a * (1.0 - t) + b * t
    }
}

/// Type-7 quantile (as [`Window::quantile`]) of an already sorted slice; `None` when
/// it is empty or `q` is outside `[0, 1]`.
pub fn quantile_of_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h as usize;
    let t = h - lo as f64;
    if t == 0.0 {
        return Some(sorted[lo]);
    }
    Some(lerp(sorted[lo], sorted[lo + 1], t))
}

/// First index at which the monotone predicate `done` holds, walking from `from`
/// towards `to` (upwards if `up`) with doubling steps, then bisecting; `done(to)` is
/// taken as true and never evaluated.
fn gallop(from: usize, to: usize, up: bool, done: &dyn Fn(usize) -> bool) -> usize {
    let dist = from.abs_diff(to);
    let at = |d: usize| if up { from + d } else { from - d };
    let (mut near, mut step) = (0, 1);
    let far = loop {
        let d = (near + step - 1).min(dist);
        if d == dist || done(at(d)) {
            break d;
        }
        near = d + 1;
        step *= 2;
    };
    // The first done distance lies in [near, far], and done(at(far)) holds.
    let (mut a, mut b) = (near, far);
    while a < b {
        let mid = a + (b - a) / 2;
        if done(at(mid)) {
            b = mid;
        } else {
            a = mid + 1;
        }
    }
    at(a)
}

/// Search hint for [`Window::mad`]: a cache that never affects results.
#[derive(Default)]
struct Hint(AtomicU32);

impl Hint {
    fn get(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, v: u32) {
        self.0.store(v, Ordering::Relaxed);
    }
}

impl Clone for Hint {
    fn clone(&self) -> Self {
        Hint(AtomicU32::new(self.get()))
    }
}

/// Values of a ring of keys whose oldest element is at `head`, oldest → newest.
fn fifo(keys: &[u64], head: usize) -> impl Iterator<Item = f64> + Clone + '_ {
    keys[head..]
        .iter()
        .chain(&keys[..head])
        .map(|&k| from_key(k))
}

/// The last `capacity` samples of one baseline key, with order statistics and moments.
///
/// Samples are finite; `push` ignores anything else, and stores −0.0 as +0.0.
#[derive(Clone)]
pub struct Window {
    capacity: usize,
    /// Oldest ring slot once full; 0 while filling (slots `0..len` in FIFO order).
    head: usize,
    /// Ring of order keys ([`to_key`]); its length is the window's length.
    keys: Vec<u64>,
    tree: OrderTree,
    moments: Moments,
    mad_hint: Hint,
}

impl Default for Window {
    fn default() -> Self {
        Window::new(DEFAULT_CAPACITY)
    }
}

impl Window {
    /// Empty window of `capacity` samples.
    ///
    /// # Panics
    /// If `capacity` is 0 or above [`MAX_CAPACITY`] (configuration must be validated).
    pub fn new(capacity: usize) -> Self {
        assert!(
            (1..=MAX_CAPACITY).contains(&capacity),
            "window capacity {capacity} is outside 1..={MAX_CAPACITY}"
        );
        Window {
            capacity,
            head: 0,
            keys: Vec::new(),
            tree: OrderTree::new(capacity),
            moments: Moments::new(),
            mad_hint: Hint::default(),
        }
    }

    /// Maximum number of samples held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of samples held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no sample is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the next push will evict the oldest sample.
    pub fn is_full(&self) -> bool {
        self.keys.len() == self.capacity
    }

    /// Appends `x`, evicting and returning the oldest sample when full.
    ///
    /// A non-finite `x` is ignored: nothing changes and `None` is returned. −0.0 is
    /// stored as +0.0. O(log W), plus an O(W) moment rebuild amortised over ≥ W pushes.
    pub fn push(&mut self, x: f64) -> Option<f64> {
        if !x.is_finite() {
            return None;
        }
        let x = x + 0.0;
        let key = to_key(x);
        let evicted = if self.keys.len() < self.capacity {
            if self.keys.len() == self.keys.capacity() {
                let want = (self.keys.capacity() * 2).max(4).min(self.capacity);
                self.keys.reserve_exact(want - self.keys.len());
            }
            let slot = self.keys.len() as u16;
            self.keys.push(key);
            self.tree.insert(&self.keys, slot);
            None
        } else {
            let slot = self.head;
            let old = from_key(self.keys[slot]);
            self.tree.remove(&self.keys, slot as u16);
            self.keys[slot] = key;
            self.tree.insert(&self.keys, slot as u16);
            self.head = if slot + 1 == self.capacity {
                0
            } else {
                slot + 1
            };
            self.moments.pop(old);
            Some(old)
        };
        self.moments.push(x);
        if self
            .moments
            .needs_rebuild(self.min_value(), self.max_value())
        {
            self.moments.rebuild(fifo(&self.keys, self.head));
        }
        evicted
    }

    /// Smallest sample of a non-empty window.
    #[inline]
    fn min_value(&self) -> f64 {
        from_key(self.keys[usize::from(self.tree.first())])
    }

    /// Largest sample of a non-empty window.
    #[inline]
    fn max_value(&self) -> f64 {
        from_key(self.keys[usize::from(self.tree.last())])
    }

    /// Smallest sample.
    pub fn min(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.min_value())
    }

    /// Largest sample.
    pub fn max(&self) -> Option<f64> {
        (!self.is_empty()).then(|| self.max_value())
    }

    /// Arithmetic mean (exactly the common value of a constant window).
    pub fn mean(&self) -> Option<f64> {
        if self.is_empty() {
            return None;
        }
        let (lo, hi) = (self.min_value(), self.max_value());
        if lo == hi {
            return Some(lo);
        }
        self.moments.mean().map(|m| m.clamp(lo, hi))
    }

    /// Population standard deviation (divides by n; exactly 0 for a constant window).
    pub fn std_dev(&self) -> Option<f64> {
        if self.is_empty() {
            return None;
        }
        if self.min_value() == self.max_value() {
            return Some(0.0);
        }
        self.moments.std_dev()
    }

    /// Quantile `q ∈ [0, 1]` by linear interpolation between closest ranks (numpy's
    /// default, Hyndman–Fan type 7); `None` when empty or `q` is outside `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.is_empty() || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let h = (self.len() - 1) as f64 * q;
        // h ≥ 0, so truncation is floor (and avoids a libm call on baseline x86-64).
        let lo = h as usize;
        let t = h - lo as f64;
        if t == 0.0 {
            return Some(self.select(lo));
        }
        let (a, b) = self.select_pair(lo);
        Some(lerp(a, b, t))
    }

    /// Median (type-7 quantile 0.5).
    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    /// First quartile (type-7 quantile 0.25).
    pub fn q1(&self) -> Option<f64> {
        self.quantile(0.25)
    }

    /// Third quartile (type-7 quantile 0.75).
    pub fn q3(&self) -> Option<f64> {
        self.quantile(0.75)
    }

    /// 95th percentile (type-7).
    pub fn p95(&self) -> Option<f64> {
        self.quantile(0.95)
    }

    /// 99th percentile (type-7).
    pub fn p99(&self) -> Option<f64> {
        self.quantile(0.99)
    }

    /// Median absolute deviation: the type-7 median of `|x − median|` (unscaled).
    ///
    /// Exact, without scanning. With `a` the sorted samples, `m` the median and
    /// `c = ⌊(n−1)/2⌋ + 1`, the `c` smallest deviations belong to a contiguous run
    /// `a[p−i ..= p−i+c−1]` around the split `p = ⌊n/2⌋` (`a[..p] ≤ m ≤ a[p..]`); the
    /// run is found by a galloping search over `i` from the previous answer: usually
    /// two order-statistic lookups, O(log² W) in the worst case.
    pub fn mad(&self) -> Option<f64> {
        let m = self.median()?;
        let n = self.len();
        let dev = |v: f64| (v - m).abs();
        let p = n / 2;
        let cnt = (n - 1) / 2 + 1;
        let (lo, hi) = (cnt.saturating_sub(n - p), cnt.min(p));
        // Samples around run boundaries: (a[s−1], a[s]) and (a[e], a[e+1]) for the
        // run of split i (s = p−i, e = s+c−1), ±∞ where outside the window.
        let bounds = |i: usize| {
            let (s, e) = (p - i, p - i + cnt - 1);
            let below = if s > 0 {
                self.select_pair(s - 1)
            } else {
                (f64::NEG_INFINITY, self.select(s))
            };
            let above = if e + 1 < n {
                self.select_pair(e)
            } else {
                (self.select(e), f64::INFINITY)
            };
            (below, above)
        };
        // Whether the run of split i < hi should extend further below (a[s−1] is
        // closer to m than the run's top a[e]); monotone: true then false.
        let grow = |i: usize| {
            let s = p - i;
            dev(self.select(s + cnt - 1)) > dev(self.select(s - 1))
        };
        let h = (self.mad_hint.get() as usize).clamp(lo, hi);
        let ((a_sm1, a_s), (a_e, a_e1)) = bounds(h);
        let up = h < hi && dev(a_e) > dev(a_sm1);
        let down = h > lo && dev(a_e1) <= dev(a_s);
        let (i, ((a_sm1, a_s), (a_e, a_e1))) = if !up && !down {
            (h, ((a_sm1, a_s), (a_e, a_e1)))
        } else {
            let i = if up {
                gallop(h + 1, hi, true, &|i| !grow(i))
            } else {
                gallop(h - 1, lo, false, &|i| grow(i - 1))
            };
            (i, bounds(i))
        };
        self.mad_hint.set(i as u32);
        let kth = dev(a_s).max(dev(a_e));
        if n % 2 == 1 {
            return Some(kth);
        }
        Some(lerp(kth, dev(a_sm1).min(dev(a_e1)), 0.5))
    }

    /// The `k`-th smallest sample (0-based).
    ///
    /// # Panics
    /// If `k >= self.len()`.
    pub fn select(&self, k: usize) -> f64 {
        assert!(k < self.len(), "select({k}) on a window of {}", self.len());
        from_key(self.keys[usize::from(self.tree.select(k))])
    }

    /// Samples of ranks `k` and `k + 1` (`k + 1 < len`).
    fn select_pair(&self, k: usize) -> (f64, f64) {
        let (a, b) = self.tree.select_pair(k);
        (
            from_key(self.keys[usize::from(a)]),
            from_key(self.keys[usize::from(b)]),
        )
    }

    /// Number of samples strictly below `x` (0 for NaN).
    pub fn rank_below(&self, x: f64) -> usize {
        if x.is_nan() {
            return 0;
        }
        self.tree.count_below(&self.keys, to_key(x + 0.0))
    }

    /// Number of samples at or below `x` (0 for NaN).
    pub fn rank_at_or_below(&self, x: f64) -> usize {
        if x.is_nan() {
            return 0;
        }
        self.tree.count_below(&self.keys, to_key(x + 0.0) + 1)
    }

    /// Samples from oldest to newest.
    pub fn iter(&self) -> impl Iterator<Item = f64> + Clone + '_ {
        fifo(&self.keys, self.head)
    }

    /// Newest sample.
    pub fn last(&self) -> Option<f64> {
        let n = self.len();
        (n > 0).then(|| from_key(self.keys[(self.head + n - 1) % n]))
    }

    /// Oldest sample (the next to be evicted once full).
    pub fn first(&self) -> Option<f64> {
        (!self.is_empty()).then(|| from_key(self.keys[self.head]))
    }

    /// Bytes of heap memory held by this window.
    pub fn heap_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<u64>() + self.tree.heap_bytes()
    }

    #[cfg(test)]
    fn check_invariants(&self) -> Result<(), String> {
        if self.head >= self.capacity.max(1) || (!self.is_full() && self.head != 0) {
            return Err(format!("bad head {}", self.head));
        }
        if self.moments.count() != self.len() {
            return Err("moments count differs from len".into());
        }
        self.tree.check(&self.keys, self.len())
    }
}

impl PartialEq for Window {
    /// Same capacity, same samples in the same order, bit-identical moments.
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity
            && self.len() == other.len()
            && self
                .iter()
                .map(f64::to_bits)
                .eq(other.iter().map(f64::to_bits))
            && self.moments == other.moments
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Window")
            .field("capacity", &self.capacity)
            .field("values", &self.iter().collect::<Vec<_>>())
            .field("moments", &self.moments)
            .finish()
    }
}

/// Serialises the window's samples as a sequence, oldest first.
struct FifoValues<'a>(&'a Window);

impl Serialize for FifoValues<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

/// Canonical serialised content of a window (borrowing form).
#[derive(Serialize)]
#[serde(rename = "Window")]
struct WindowReprRef<'a> {
    capacity: u64,
    values: FifoValues<'a>,
    moments: &'a Moments,
}

/// Canonical serialised content of a window: capacity, samples oldest first, moments.
#[derive(Deserialize)]
#[serde(rename = "Window")]
struct WindowRepr {
    capacity: u64,
    values: Vec<f64>,
    moments: Moments,
}

impl Serialize for Window {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WindowReprRef {
            capacity: self.capacity as u64,
            values: FifoValues(self),
            moments: &self.moments,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let repr = WindowRepr::deserialize(d)?;
        Window::try_from(repr).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<WindowRepr> for Window {
    type Error = WindowStateError;

    fn try_from(r: WindowRepr) -> Result<Self, Self::Error> {
        let capacity = usize::try_from(r.capacity)
            .ok()
            .filter(|c| (1..=MAX_CAPACITY).contains(c))
            .ok_or(WindowStateError::BadCapacity(r.capacity))?;
        let len = r.values.len();
        if len > capacity {
            return Err(WindowStateError::TooManyValues { len, capacity });
        }
        if let Some((index, &value)) = r
            .values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite() || v.to_bits() == (-0.0f64).to_bits())
        {
            return Err(WindowStateError::BadValue { index, value });
        }
        if r.moments.count() != len {
            return Err(WindowStateError::CountMismatch {
                moments: r.moments.count(),
                len,
            });
        }
        let mut w = Window::new(capacity);
        w.keys.reserve_exact(len);
        w.keys.extend(r.values.iter().map(|&v| to_key(v)));
        for slot in 0..len {
            w.tree.insert(&w.keys, slot as u16);
        }
        w.moments = r.moments;
        Ok(w)
    }
}
