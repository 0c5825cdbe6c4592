//! The shapes of the fitted parameters (latency, token mix, arrivals, diurnal profile)
//! and their rendering as the Rust source of `params.rs`.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;

use crate::rng::Rng;

/// Cumulative probabilities at which token quantile tables are tabulated.
pub const QUANTILE_PROBS: [f64; 29] = [
    0.0, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6,
    0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 1.0,
];

/// Number of 10-minute bins in the 24 h diurnal profile.
pub const DIURNAL_BINS: usize = 144;

/// A log-normal distribution `exp(N(mu, sigma))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LogNormalFit {
    /// Mean of the logarithm.
    pub mu: f64,
    /// Standard deviation of the logarithm.
    pub sigma: f64,
}

impl LogNormalFit {
    /// The median, `exp(mu)`.
    pub fn median(&self) -> f64 {
        self.mu.exp()
    }

    /// The `p`-quantile, for `p` in `(0, 1)`.
    pub fn quantile(&self, p: f64) -> f64 {
        (self.mu + self.sigma * standard_normal_quantile(p)).exp()
    }

    /// One draw.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        rng.log_normal(self.mu, self.sigma)
    }
}

/// The inverse CDF of N(0, 1) (Acklam's rational approximation, relative error < 1.2e-9).
pub fn standard_normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    if p.is_nan() || p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let tail = |q: f64| {
        let r = (-2.0 * q.ln()).sqrt();
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    if p < P_LOW {
        tail(p)
    } else if p > 1.0 - P_LOW {
        -tail(1.0 - p)
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// An empirical distribution given by its values at [`QUANTILE_PROBS`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QuantileTable(pub [f64; 29]);

impl QuantileTable {
    /// The `p`-quantile, interpolated linearly between tabulated points.
    pub fn quantile(&self, p: f64) -> f64 {
        let p = p.clamp(0.0, 1.0);
        let upper = QUANTILE_PROBS.partition_point(|&q| q < p).max(1);
        let (p0, p1) = (QUANTILE_PROBS[upper - 1], QUANTILE_PROBS[upper]);
        let (v0, v1) = (self.0[upper - 1], self.0[upper]);
        v0 + (v1 - v0) * (p - p0) / (p1 - p0)
    }

    /// One draw (inverse-CDF sampling with linear interpolation).
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> f64 {
        self.quantile(rng.uniform())
    }
}

/// Latency and error behaviour of one hosted-LLM provider × model size (from llmperf).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyProfile {
    /// Profile name, `<provider>_<size>` (e.g. `together_70b`).
    pub name: Cow<'static, str>,
    /// Provider measured (e.g. `together`).
    pub provider: Cow<'static, str>,
    /// Llama-2 chat model size measured (`7b`, `13b`, `70b`).
    pub model_size: Cow<'static, str>,
    /// Requests in the source file.
    pub requests: u32,
    /// Requests answered with HTTP 429 (rate limited).
    pub rate_limited: u32,
    /// Requests that failed otherwise.
    pub other_errors: u32,
    /// Successful requests llmperf flagged as "output too few tokens" (code -100); not errors.
    pub short_outputs: u32,
    /// Successful requests with usable timings, the sample the latency fit uses.
    pub latency_samples: u32,
    /// Time to first token, seconds.
    pub ttft_s: LogNormalFit,
    /// Time per output token after the first, seconds.
    pub time_per_output_token_s: LogNormalFit,
    /// Probability a request is rate limited (Jeffreys estimate).
    pub rate_limit_rate: f64,
    /// Probability a request fails otherwise (Jeffreys estimate).
    pub other_error_rate: f64,
    /// Empirical median end-to-end latency, seconds (~150 output tokens).
    pub e2e_p50_s: f64,
    /// Empirical 99th-percentile end-to-end latency, seconds.
    pub e2e_p99_s: f64,
}

/// Input/output token distributions of one workload type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenMix {
    /// Workload name (`code`, `conversation`, `long-context`).
    pub name: Cow<'static, str>,
    /// Trace the mix was fitted from.
    pub source: Cow<'static, str>,
    /// Requests in the trace.
    pub requests: u32,
    /// Prompt (input) tokens.
    pub input_tokens: QuantileTable,
    /// Completion (output) tokens.
    pub output_tokens: QuantileTable,
    /// Spearman rank correlation of input and output tokens (descriptive; sampling treats them as independent).
    pub spearman_in_out: f64,
}

/// Arrival burstiness of one workload type: a Markov on/off modulated, log-normal AR(1)
/// rate per window with Gamma-renewal arrivals inside windows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArrivalFit {
    /// Workload name (`code`, `conversation`, `long-context`).
    pub name: Cow<'static, str>,
    /// Trace the fit was made from.
    pub source: Cow<'static, str>,
    /// Requests in the trace.
    pub requests: u32,
    /// Span of the trace, seconds.
    pub span_s: f64,
    /// Mean arrival rate, requests per second.
    pub mean_rate_per_s: f64,
    /// Coefficient of variation of the raw inter-arrival times (descriptive).
    pub interarrival_cv: f64,
    /// Length of a modulation window, seconds.
    pub window_s: f64,
    /// Probability an active window is followed by an idle one.
    pub p_on_to_off: f64,
    /// Probability an idle window is followed by an active one.
    pub p_off_to_on: f64,
    /// Standard deviation of the log rate multiplier of active windows.
    pub on_log_sigma: f64,
    /// Lag-one autocorrelation of the log rate multiplier of consecutive active windows.
    pub on_log_rho: f64,
    /// Gamma shape of inter-arrival gaps inside a window (1 = Poisson, < 1 = bursty).
    pub gap_shape: f64,
}

impl ArrivalFit {
    /// Long-run fraction of active windows.
    pub fn on_fraction(&self) -> f64 {
        if self.p_on_to_off <= 0.0 {
            1.0
        } else {
            self.p_off_to_on / (self.p_off_to_on + self.p_on_to_off)
        }
    }
}

/// Everything the replay generator needs from the traces; `params.rs` is its rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedParams {
    /// Latency and error profiles, sorted by name.
    pub latency_profiles: Vec<LatencyProfile>,
    /// Token mixes: code, conversation, long-context.
    pub token_mixes: Vec<TokenMix>,
    /// Arrival fits: code, conversation, long-context.
    pub arrivals: Vec<ArrivalFit>,
    /// Multiplier of the mean request rate per 10-minute bin of the day (mean 1).
    pub diurnal: [f64; DIURNAL_BINS],
    /// Number of ServeGen clients the diurnal profile averages.
    pub diurnal_clients: u32,
}

impl FittedParams {
    /// Renders the parameters as the Rust source of `params.rs`.
    pub fn to_rust_source(&self) -> String {
        let mut out = String::new();
        self.write_source(&mut out)
            .expect("formatting into a String cannot fail");
        out
    }

    fn write_source(&self, o: &mut String) -> std::fmt::Result {
        writeln!(o, "//! Fitted parameters of the replay generator.")?;
        writeln!(o, "//!")?;
        writeln!(
            o,
            "//! GENERATED by `cargo run -p sentinel-bench --bin fit-replay > local/src/replay/params.rs`"
        )?;
        writeln!(
            o,
            "//! from `../shared/datasets/llm-traces` (sources and commits in its README.md). Do not edit."
        )?;
        writeln!(
            o,
            "//! (`-- --output local/src/replay/params.rs` instead of `>` keeps the file if the fit fails.)"
        )?;
        writeln!(o, "//!")?;
        for line in HEADER_FIT_DESCRIPTION {
            writeln!(o, "//!{}{line}", if line.is_empty() { "" } else { " " })?;
        }
        writeln!(o)?;
        writeln!(o, "use std::borrow::Cow::Borrowed;")?;
        writeln!(o)?;
        writeln!(
            o,
            "use super::profile::{{ArrivalFit, LatencyProfile, LogNormalFit, QuantileTable, TokenMix}};"
        )?;
        writeln!(o)?;
        writeln!(
            o,
            "/// Latency and error profiles per llmperf provider × Llama-2 size."
        )?;
        writeln!(o, "pub static LATENCY_PROFILES: &[LatencyProfile] = &[")?;
        for p in &self.latency_profiles {
            writeln!(o, "    LatencyProfile {{")?;
            writeln!(o, "        name: Borrowed({:?}),", p.name)?;
            writeln!(o, "        provider: Borrowed({:?}),", p.provider)?;
            writeln!(o, "        model_size: Borrowed({:?}),", p.model_size)?;
            writeln!(o, "        requests: {},", p.requests)?;
            writeln!(o, "        rate_limited: {},", p.rate_limited)?;
            writeln!(o, "        other_errors: {},", p.other_errors)?;
            writeln!(o, "        short_outputs: {},", p.short_outputs)?;
            writeln!(o, "        latency_samples: {},", p.latency_samples)?;
            writeln!(o, "        ttft_s: {},", lognormal(p.ttft_s))?;
            writeln!(
                o,
                "        time_per_output_token_s: {},",
                lognormal(p.time_per_output_token_s)
            )?;
            writeln!(o, "        rate_limit_rate: {},", float(p.rate_limit_rate))?;
            writeln!(
                o,
                "        other_error_rate: {},",
                float(p.other_error_rate)
            )?;
            writeln!(o, "        e2e_p50_s: {},", float(p.e2e_p50_s))?;
            writeln!(o, "        e2e_p99_s: {},", float(p.e2e_p99_s))?;
            writeln!(o, "    }},")?;
        }
        writeln!(o, "];")?;
        writeln!(o)?;
        writeln!(
            o,
            "/// Token mixes per workload type, tabulated at `QUANTILE_PROBS`."
        )?;
        writeln!(o, "pub static TOKEN_MIXES: &[TokenMix] = &[")?;
        for m in &self.token_mixes {
            writeln!(o, "    TokenMix {{")?;
            writeln!(o, "        name: Borrowed({:?}),", m.name)?;
            writeln!(o, "        source: Borrowed({:?}),", m.source)?;
            writeln!(o, "        requests: {},", m.requests)?;
            writeln!(
                o,
                "        input_tokens: QuantileTable({}),",
                array(&m.input_tokens.0, 8, 8)
            )?;
            writeln!(
                o,
                "        output_tokens: QuantileTable({}),",
                array(&m.output_tokens.0, 8, 8)
            )?;
            writeln!(o, "        spearman_in_out: {},", float(m.spearman_in_out))?;
            writeln!(o, "    }},")?;
        }
        writeln!(o, "];")?;
        writeln!(o)?;
        writeln!(o, "/// Arrival burstiness per workload type.")?;
        writeln!(o, "pub static ARRIVALS: &[ArrivalFit] = &[")?;
        for a in &self.arrivals {
            writeln!(o, "    ArrivalFit {{")?;
            writeln!(o, "        name: Borrowed({:?}),", a.name)?;
            writeln!(o, "        source: Borrowed({:?}),", a.source)?;
            writeln!(o, "        requests: {},", a.requests)?;
            writeln!(o, "        span_s: {},", float(a.span_s))?;
            writeln!(o, "        mean_rate_per_s: {},", float(a.mean_rate_per_s))?;
            writeln!(o, "        interarrival_cv: {},", float(a.interarrival_cv))?;
            writeln!(o, "        window_s: {},", float(a.window_s))?;
            writeln!(o, "        p_on_to_off: {},", float(a.p_on_to_off))?;
            writeln!(o, "        p_off_to_on: {},", float(a.p_off_to_on))?;
            writeln!(o, "        on_log_sigma: {},", float(a.on_log_sigma))?;
            writeln!(o, "        on_log_rho: {},", float(a.on_log_rho))?;
            writeln!(o, "        gap_shape: {},", float(a.gap_shape))?;
            writeln!(o, "    }},")?;
        }
        writeln!(o, "];")?;
        writeln!(o)?;
        writeln!(
            o,
            "/// Request-rate multiplier per 10-minute bin of the day (bin 0 = 00:00), mean 1."
        )?;
        writeln!(
            o,
            "pub const DIURNAL: [f64; 144] = {};",
            array(&self.diurnal, 6, 0)
        )?;
        writeln!(o)?;
        writeln!(o, "/// ServeGen clients averaged into `DIURNAL`.")?;
        writeln!(
            o,
            "pub const DIURNAL_CLIENTS: u32 = {};",
            self.diurnal_clients
        )?;
        Ok(())
    }
}

/// How each parameter was fitted; repeated in the header of `params.rs`.
const HEADER_FIT_DESCRIPTION: &[&str] = &[
    "Fits (all floats rounded to 9 significant digits):",
    "* `LATENCY_PROFILES`: `llmperf-leaderboard/individual/<provider>_<size>.json` (Llama-2 chat,",
    "  ~550 input / ~150 output tokens, 5 concurrent). Successful requests (error code none or",
    "  -100 \"output too few tokens\", which is llmperf's own length check, not an API failure)",
    "  with ttft > 0 and >= 2 output tokens give TTFT and time per output token",
    "  (e2e - ttft) / (output - 1). Log-normal by quantile matching: mu = ln p50,",
    "  sigma = (ln p95 - ln p50) / z(0.95), so the body and upper tail match. Error rates by kind",
    "  (429, other) are Jeffreys estimates (k + 0.5) / (n + 1). e2e p50/p99 are empirical.",
    "* `TOKEN_MIXES`: type-7 quantiles at `QUANTILE_PROBS` of input and output tokens of",
    "  `azure-llm-inference-2023` code and conv (2023-11-16, 1 h) and `mooncake-fast25`",
    "  `conversation_trace` (long context).",
    "* `ARRIVALS`: same traces' timestamps in 15 s windows. Active = window has arrivals; on/off",
    "  transition probabilities from the window sequence. Inside windows, the pooled dispersion",
    "  F of 3 s slot counts gives the Gamma gap shape 1 / F (Mooncake stamps are 3 s slots).",
    "  Active-window counts, less that renewal noise (var - F * mean), give the log-normal sigma",
    "  of the rate multiplier and, de-attenuated, its lag-1 autocorrelation.",
    "* `DIURNAL`: `servegen/language/m-large`, 162 clients x 14 days of 10-minute rates. Each client",
    "  is normalised to mean 1 and folded to 144 bins of the day; per bin a 10 % trimmed mean",
    "  over clients, then a circular 3-bin moving average, normalised to mean 1.",
];

/// A float literal rounded to 9 significant digits (the fit rounds the same way).
fn float(x: f64) -> String {
    format!("{:?}", round_sig9(x))
}

fn lognormal(l: LogNormalFit) -> String {
    format!(
        "LogNormalFit {{ mu: {}, sigma: {} }}",
        float(l.mu),
        float(l.sigma)
    )
}

/// An array literal, `per_line` values a line, closing bracket indented by `indent` spaces.
fn array(values: &[f64], per_line: usize, indent: usize) -> String {
    let mut s = String::from("[\n");
    for chunk in values.chunks(per_line) {
        s.push_str(&" ".repeat(indent + 3));
        for v in chunk {
            s.push(' ');
            s.push_str(&float(*v));
            s.push(',');
        }
        s.push('\n');
    }
    s.push_str(&" ".repeat(indent));
    s.push(']');
    s
}

/// Rounds to 9 significant digits, so re-fits agree despite last-bit differences of `ln`/`exp`.
pub fn round_sig9(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    format!("{x:.8e}").parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantile_known_values() {
        assert!((standard_normal_quantile(0.5)).abs() < 1e-9);
        assert!((standard_normal_quantile(0.95) - 1.644_853_626_951_472_2).abs() < 1e-8);
        assert!((standard_normal_quantile(0.01) + 2.326_347_874_040_841).abs() < 1e-8);
        assert!(standard_normal_quantile(0.0).is_infinite());
    }

    #[test]
    fn quantile_table_interpolates() {
        let mut values = [0.0; 29];
        for (v, p) in values.iter_mut().zip(QUANTILE_PROBS) {
            *v = 100.0 * p;
        }
        let t = QuantileTable(values);
        assert!((t.quantile(0.5) - 50.0).abs() < 1e-9);
        assert!((t.quantile(0.123) - 12.3).abs() < 1e-9);
        assert_eq!(t.quantile(0.0), 0.0);
        assert_eq!(t.quantile(1.0), 100.0);
    }

    #[test]
    fn rounding_is_stable() {
        assert_eq!(round_sig9(0.123_456_789_123), 0.123_456_789);
        assert_eq!(round_sig9(round_sig9(1.0 / 3.0)), round_sig9(1.0 / 3.0));
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(1e-7), "1e-7");
    }
}
