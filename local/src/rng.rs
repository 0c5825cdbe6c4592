//! A small, fast, deterministic pseudo-random number generator and the
//! distributions Sentinel's synthetic workloads draw from.
//!
//! The generator is xoshiro256** (Blackman & Vigna), seeded through splitmix64,
//! so one `u64` seed always gives the same stream on every platform. Continuous
//! distributions use only `ln`, `sqrt`, `sin`/`cos` and `powf` on `f64`.

use thiserror::Error;

/// Deterministic xoshiro256** generator with distribution samplers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rng {
    state: [u64; 4],
    spare_normal: Option<f64>,
}

/// One step of splitmix64: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator whose whole stream is determined by `seed`.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = seed;
        let state = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        Rng {
            state,
            spare_normal: None,
        }
    }

    /// An independent generator for sub-stream `stream` of `seed` (e.g. one per service).
    pub fn from_stream(seed: u64, stream: u64) -> Self {
        let mut sm = seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let mixed = splitmix64(&mut sm);
        Rng::seed_from_u64(mixed ^ stream)
    }

    /// A new generator seeded from this one's stream (advances this generator).
    pub fn fork(&mut self) -> Self {
        Rng::seed_from_u64(self.next_u64())
    }

    /// The next 64 uniformly distributed bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// The next 32 uniformly distributed bits.
    #[inline]
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// A uniform draw from `[0, 1)` with 53 bits of precision.
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw from `(0, 1]`, safe to take the logarithm of.
    #[inline]
    pub fn uniform_open0(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A uniform draw from `[low, high)`.
    #[inline]
    pub fn uniform_range(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// A uniform integer in `0..n` without modulo bias; 0 when `n` is 0.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's nearly-divisionless method.
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// A standard normal draw N(0, 1) (Box–Muller; the second value is kept for the next call).
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        let radius = (-2.0 * self.uniform_open0().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.uniform();
        let (sin, cos) = angle.sin_cos();
        self.spare_normal = Some(radius * sin);
        radius * cos
    }

    /// A normal draw with the given mean and standard deviation.
    pub fn normal(&mut self, mean: f64, std_dev: f64) -> f64 {
        mean + std_dev * self.standard_normal()
    }

    /// A log-normal draw: `exp(N(mu, sigma))`.
    pub fn log_normal(&mut self, mu: f64, sigma: f64) -> f64 {
        (mu + sigma * self.standard_normal()).exp()
    }

    /// An exponential draw with the given rate (mean `1 / rate`).
    pub fn exponential(&mut self, rate: f64) -> f64 {
        -self.uniform_open0().ln() / rate
    }

    /// A gamma draw with the given shape and scale (mean `shape * scale`); NaN if shape ≤ 0.
    ///
    /// Marsaglia–Tsang for shape ≥ 1; for shape < 1 the shape + 1 draw is boosted by `U^(1/shape)`.
    pub fn gamma(&mut self, shape: f64, scale: f64) -> f64 {
        if shape.is_nan() || shape <= 0.0 {
            return f64::NAN;
        }
        if shape < 1.0 {
            let boost = self.uniform_open0().powf(1.0 / shape);
            return self.gamma(shape + 1.0, scale) * boost;
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.standard_normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = self.uniform_open0();
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || u.ln() < 0.5 * x2 + d * (1.0 - v + v.ln()) {
                return d * v * scale;
            }
        }
    }

    /// `true` with probability `p` (clamped to `[0, 1]`).
    #[inline]
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// An index drawn with probability proportional to `weights[i]`, by linear scan.
    ///
    /// Suits a handful of weights; use [`WeightedIndex`] for many draws from a large table.
    /// `None` if the weights are empty, negative, non-finite or all zero.
    pub fn choose_weighted(&mut self, weights: &[f64]) -> Option<usize> {
        let total = validate_weights(weights).ok()?;
        let mut target = self.uniform() * total;
        let mut last_positive = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                if target < w {
                    return Some(i);
                }
                target -= w;
                last_positive = i;
            }
        }
        Some(last_positive)
    }
}

/// Why a weight table was rejected.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WeightError {
    /// No weights were given.
    #[error("no weights given")]
    Empty,
    /// A weight is negative, NaN or infinite.
    #[error("weight {index} is {value}; weights must be finite and ≥ 0")]
    Invalid {
        /// Position of the bad weight.
        index: usize,
        /// The bad weight.
        value: f64,
    },
    /// All weights are zero.
    #[error("all weights are zero")]
    ZeroSum,
    /// More weights than an alias table indexes (`u32::MAX`).
    #[error("{0} weights; at most u32::MAX are supported")]
    TooMany(usize),
}

fn validate_weights(weights: &[f64]) -> Result<f64, WeightError> {
    if weights.is_empty() {
        return Err(WeightError::Empty);
    }
    let mut total = 0.0;
    for (index, &value) in weights.iter().enumerate() {
        if !value.is_finite() || value < 0.0 {
            return Err(WeightError::Invalid { index, value });
        }
        total += value;
    }
    if total > 0.0 && total.is_finite() {
        Ok(total)
    } else {
        Err(WeightError::ZeroSum)
    }
}

/// A table for O(1) weighted index draws (Vose's alias method).
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedIndex {
    probability: Vec<f64>,
    alias: Vec<u32>,
}

impl WeightedIndex {
    /// Builds the alias table for `weights` (finite, ≥ 0, not all zero, at most `u32::MAX` of them).
    pub fn new(weights: &[f64]) -> Result<Self, WeightError> {
        let total = validate_weights(weights)?;
        let n = weights.len();
        if u32::try_from(n).is_err() {
            return Err(WeightError::TooMany(n));
        }
        let scale = n as f64 / total;
        let mut probability: Vec<f64> = weights.iter().map(|w| w * scale).collect();
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| probability[i] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            alias[s] = l as u32;
            probability[l] -= 1.0 - probability[s];
            if probability[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            probability[i] = 1.0;
        }
        Ok(WeightedIndex { probability, alias })
    }

    /// Number of outcomes.
    pub fn len(&self) -> usize {
        self.probability.len()
    }

    /// Whether the table has no outcomes (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.probability.is_empty()
    }

    /// Draws an index with probability proportional to its weight.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> usize {
        let column = rng.below(self.probability.len() as u64) as usize;
        if rng.uniform() < self.probability[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 200_000;

    fn mean_var(xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    fn draws(seed: u64, f: impl Fn(&mut Rng) -> f64) -> Vec<f64> {
        let mut rng = Rng::seed_from_u64(seed);
        (0..N).map(|_| f(&mut rng)).collect()
    }

    fn assert_close(what: &str, got: f64, want: f64, rel: f64) {
        assert!(
            (got - want).abs() <= rel * want.abs().max(1e-12),
            "{what}: got {got}, want {want} (±{:.1}%)",
            rel * 100.0
        );
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::seed_from_u64(42);
        let mut b = Rng::seed_from_u64(42);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert_eq!(a.standard_normal().to_bits(), b.standard_normal().to_bits());
            assert_eq!(a.gamma(0.4, 2.0).to_bits(), b.gamma(0.4, 2.0).to_bits());
        }
        let mut c = Rng::seed_from_u64(43);
        let mut a = Rng::seed_from_u64(42);
        assert_ne!(a.next_u64(), c.next_u64());
    }

    #[test]
    fn known_first_outputs() {
        // splitmix64(0) reference outputs from Vigna's splitmix64.c.
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut state), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn streams_differ() {
        let mut a = Rng::from_stream(7, 0);
        let mut b = Rng::from_stream(7, 1);
        let same = (0..64).filter(|_| a.next_u64() == b.next_u64()).count();
        assert_eq!(same, 0);
        let mut parent = Rng::seed_from_u64(7);
        let mut child = parent.fork();
        assert_ne!(parent.next_u64(), child.next_u64());
    }

    #[test]
    fn uniform_moments_and_range() {
        let xs = draws(1, Rng::uniform);
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let (m, v) = mean_var(&xs);
        assert_close("uniform mean", m, 0.5, 0.01);
        assert_close("uniform var", v, 1.0 / 12.0, 0.02);
        let ys = draws(2, |r| r.uniform_range(-3.0, 5.0));
        assert!(ys.iter().all(|&y| (-3.0..5.0).contains(&y)));
        assert_close("range mean", mean_var(&ys).0, 1.0, 0.02);
    }

    #[test]
    fn below_is_unbiased_and_bounded() {
        let mut rng = Rng::seed_from_u64(3);
        let mut counts = [0u32; 7];
        for _ in 0..N {
            counts[rng.below(7) as usize] += 1;
        }
        for c in counts {
            assert_close("below(7) bucket", f64::from(c), N as f64 / 7.0, 0.03);
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn normal_moments() {
        let (m, v) = mean_var(&draws(4, Rng::standard_normal));
        assert!(m.abs() < 0.01, "mean {m}");
        assert_close("normal var", v, 1.0, 0.02);
        let (m, v) = mean_var(&draws(5, |r| r.normal(10.0, 2.0)));
        assert_close("normal(10,2) mean", m, 10.0, 0.005);
        assert_close("normal(10,2) var", v, 4.0, 0.02);
    }

    #[test]
    fn log_normal_moments() {
        let (mu, sigma) = (0.5, 0.4);
        let (m, v) = mean_var(&draws(6, |r| r.log_normal(mu, sigma)));
        let want_mean = (mu + sigma * sigma / 2.0).exp();
        let want_var = ((sigma * sigma).exp() - 1.0) * (2.0 * mu + sigma * sigma).exp();
        assert_close("lognormal mean", m, want_mean, 0.01);
        assert_close("lognormal var", v, want_var, 0.04);
    }

    #[test]
    fn exponential_moments() {
        let (m, v) = mean_var(&draws(7, |r| r.exponential(2.0)));
        assert_close("exp mean", m, 0.5, 0.01);
        assert_close("exp var", v, 0.25, 0.03);
    }

    #[test]
    fn gamma_moments() {
        for (seed, shape, scale) in [(8, 0.3, 2.0), (9, 1.0, 1.0), (10, 4.5, 0.5)] {
            let xs = draws(seed, |r| r.gamma(shape, scale));
            assert!(xs.iter().all(|&x| x >= 0.0));
            let (m, v) = mean_var(&xs);
            assert_close("gamma mean", m, shape * scale, 0.02);
            assert_close("gamma var", v, shape * scale * scale, 0.06);
        }
        let mut rng = Rng::seed_from_u64(11);
        assert!(rng.gamma(0.0, 1.0).is_nan());
        assert!(rng.gamma(-1.0, 1.0).is_nan());
    }

    #[test]
    fn bernoulli_rate() {
        let hits = draws(12, |r| f64::from(u8::from(r.bernoulli(0.3))));
        assert_close("bernoulli", mean_var(&hits).0, 0.3, 0.02);
        let mut rng = Rng::seed_from_u64(13);
        assert!((0..1000).all(|_| !rng.bernoulli(0.0)));
        assert!((0..1000).all(|_| rng.bernoulli(1.0)));
    }

    #[test]
    fn weighted_choice_matches_weights() {
        let weights = [1.0, 0.0, 3.0, 6.0];
        let table = WeightedIndex::new(&weights).unwrap();
        assert_eq!(table.len(), 4);
        let mut rng = Rng::seed_from_u64(14);
        let mut by_table = [0u32; 4];
        let mut by_scan = [0u32; 4];
        for _ in 0..N {
            by_table[table.sample(&mut rng)] += 1;
            by_scan[rng.choose_weighted(&weights).unwrap()] += 1;
        }
        for counts in [by_table, by_scan] {
            assert_eq!(counts[1], 0);
            for (c, w) in counts.iter().zip(weights) {
                if w > 0.0 {
                    assert_close("weighted", f64::from(*c), N as f64 * w / 10.0, 0.03);
                }
            }
        }
    }

    #[test]
    fn weighted_rejects_bad_tables() {
        assert_eq!(WeightedIndex::new(&[]), Err(WeightError::Empty));
        assert_eq!(WeightedIndex::new(&[0.0, 0.0]), Err(WeightError::ZeroSum));
        assert!(matches!(
            WeightedIndex::new(&[1.0, f64::NAN]),
            Err(WeightError::Invalid { index: 1, .. })
        ));
        assert!(matches!(
            WeightedIndex::new(&[1.0, -2.0]),
            Err(WeightError::Invalid { index: 1, .. })
        ));
        let mut rng = Rng::seed_from_u64(15);
        assert_eq!(rng.choose_weighted(&[]), None);
        assert_eq!(rng.choose_weighted(&[0.0]), None);
    }
}
