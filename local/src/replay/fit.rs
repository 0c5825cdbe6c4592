//! Fits the replay generator's parameters from the public LLM serving traces
//! (`../shared/datasets/llm-traces`: llmperf-leaderboard, Azure 2023, Mooncake, ServeGen).

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use sentinel_core::window::quantile_of_sorted;
use serde::Deserialize;
use thiserror::Error;

use super::profile::{
    round_sig9, standard_normal_quantile, ArrivalFit, FittedParams, LatencyProfile, LogNormalFit,
    QuantileTable, TokenMix, DIURNAL_BINS, QUANTILE_PROBS,
};

/// Length of an arrival modulation window, seconds.
const WINDOW_S: f64 = 15.0;
/// Length of a slot inside a window, seconds (Mooncake timestamps are 3 s slots).
const SLOT_S: f64 = 3.0;
/// Fewest usable requests a latency profile is fitted from.
const MIN_LATENCY_SAMPLES: usize = 10;
/// Fewest requests a token mix or arrival fit is made from.
const MIN_TRACE_REQUESTS: usize = 100;
/// ServeGen window length, seconds.
const SERVEGEN_WINDOW_S: f64 = 600.0;
/// Fraction trimmed from each side when averaging client profiles.
const DIURNAL_TRIM: f64 = 0.1;

/// Why the traces could not be fitted.
#[derive(Debug, Error)]
pub enum FitError {
    /// A file or directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A line or document of a file is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Parse {
        /// The malformed file.
        path: PathBuf,
        /// 1-based line number (0 when unknown).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A file parses but its contents cannot support a fit.
    #[error("{}: {message}", path.display())]
    Data {
        /// The file or directory concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Fits every parameter from the traces directory `dir` (the `llm-traces` folder).
///
/// Fails with a [`FitError`] naming the file (and line) when a trace is missing, malformed
/// or too small to fit.
pub fn fit_traces(dir: &Path) -> Result<FittedParams, FitError> {
    let latency_profiles = fit_latency_profiles(&dir.join("llmperf-leaderboard/individual"))?;

    let code_path = dir.join("azure-llm-inference-2023/AzureLLMInferenceTrace_code.csv");
    let conv_path = dir.join("azure-llm-inference-2023/AzureLLMInferenceTrace_conv.csv");
    let moon_path = dir.join("mooncake-fast25/conversation_trace.jsonl");
    let code = read_azure(&code_path)?;
    let conv = read_azure(&conv_path)?;
    let moon = read_mooncake(&moon_path)?;

    let sources = [
        ("code", "azure-llm-inference-2023/code", &code, &code_path),
        (
            "conversation",
            "azure-llm-inference-2023/conv",
            &conv,
            &conv_path,
        ),
        (
            "long-context",
            "mooncake-fast25/conversation",
            &moon,
            &moon_path,
        ),
    ];
    let mut token_mixes = Vec::new();
    let mut arrivals = Vec::new();
    for (name, source, requests, path) in sources {
        if requests.len() < MIN_TRACE_REQUESTS {
            return Err(data_error(
                path,
                format!(
                    "only {} requests; need {MIN_TRACE_REQUESTS}",
                    requests.len()
                ),
            ));
        }
        token_mixes.push(fit_token_mix(name, source, requests));
        arrivals.push(fit_arrivals(name, source, requests, path)?);
    }

    let (diurnal, diurnal_clients) = fit_diurnal(&dir.join("servegen/language/m-large"))?;
    Ok(FittedParams {
        latency_profiles,
        token_mixes,
        arrivals,
        diurnal,
        diurnal_clients,
    })
}

/// One request of a token/arrival trace: arrival time (s), input and output tokens.
#[derive(Debug, Clone, Copy)]
struct TraceRequest {
    time_s: f64,
    input: f64,
    output: f64,
}

fn read_text(path: &Path) -> Result<String, FitError> {
    fs::read_to_string(path).map_err(|source| FitError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_error(path: &Path, line: usize, message: impl Into<String>) -> FitError {
    FitError::Parse {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

fn data_error(path: &Path, message: impl Into<String>) -> FitError {
    FitError::Data {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn parse_field<T: std::str::FromStr>(
    path: &Path,
    line: usize,
    name: &str,
    field: Option<&str>,
) -> Result<T, FitError> {
    let field = field.ok_or_else(|| parse_error(path, line, format!("missing column {name}")))?;
    field
        .trim()
        .parse()
        .map_err(|_| parse_error(path, line, format!("bad {name} {field:?}")))
}

fn read_azure(path: &Path) -> Result<Vec<TraceRequest>, FitError> {
    let text = read_text(path)?;
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "TIMESTAMP,ContextTokens,GeneratedTokens" => {}
        _ => {
            return Err(parse_error(
                path,
                1,
                "expected header TIMESTAMP,ContextTokens,GeneratedTokens",
            ))
        }
    }
    let mut first_ns: Option<i64> = None;
    let mut out = Vec::new();
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut cols = line.split(',');
        let stamp = cols
            .next()
            .ok_or_else(|| parse_error(path, n, "empty line"))?;
        let time = NaiveDateTime::parse_from_str(stamp.trim(), "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|e| parse_error(path, n, format!("bad TIMESTAMP {stamp:?}: {e}")))?;
        let ns = time
            .and_utc()
            .timestamp_nanos_opt()
            .ok_or_else(|| parse_error(path, n, "TIMESTAMP out of range"))?;
        let base = *first_ns.get_or_insert(ns);
        let input: u64 = parse_field(path, n, "ContextTokens", cols.next())?;
        let output: u64 = parse_field(path, n, "GeneratedTokens", cols.next())?;
        out.push(TraceRequest {
            time_s: (ns - base) as f64 * 1e-9,
            input: input as f64,
            output: output as f64,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: u64,
    output_length: u64,
}

fn read_mooncake(path: &Path) -> Result<Vec<TraceRequest>, FitError> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let rec: MooncakeLine =
            serde_json::from_str(line).map_err(|e| parse_error(path, i + 1, e.to_string()))?;
        out.push(TraceRequest {
            time_s: rec.timestamp / 1000.0,
            input: rec.input_length as f64,
            output: rec.output_length as f64,
        });
    }
    Ok(out)
}

/// Type-7 quantile of sorted, non-empty `xs`.
fn quantile_sorted(xs: &[f64], p: f64) -> f64 {
    quantile_of_sorted(xs, p).unwrap_or(f64::NAN)
}

fn sorted(mut xs: Vec<f64>) -> Vec<f64> {
    xs.sort_by(f64::total_cmp);
    xs
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

fn population_variance(xs: &[f64]) -> f64 {
    let m = mean(xs);
    xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / xs.len() as f64
}

#[derive(Deserialize)]
struct LlmperfRecord {
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    ttft_s: Option<f64>,
    #[serde(default)]
    end_to_end_latency_s: Option<f64>,
    #[serde(default)]
    number_output_tokens: Option<u64>,
}

/// llmperf's code for "output too few tokens": a length check of the benchmark, not an API error.
const LLMPERF_SHORT_OUTPUT: i64 = -100;

/// The files of `dir` ending in `.ext`, sorted by path.
fn files_with_extension(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, FitError> {
    let io = |source| FitError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == ext) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn fit_latency_profiles(dir: &Path) -> Result<Vec<LatencyProfile>, FitError> {
    let files = files_with_extension(dir, "json")?;
    if files.is_empty() {
        return Err(data_error(dir, "no <provider>_<size>.json files"));
    }
    files.iter().map(|p| fit_latency_profile(p)).collect()
}

fn fit_latency_profile(path: &Path) -> Result<LatencyProfile, FitError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let (provider, size) = stem
        .rsplit_once('_')
        .filter(|(p, s)| !p.is_empty() && !s.is_empty())
        .ok_or_else(|| data_error(path, "file name is not <provider>_<size>.json"))?;
    let text = read_text(path)?;
    let records: Vec<LlmperfRecord> =
        serde_json::from_str(&text).map_err(|e| parse_error(path, e.line(), e.to_string()))?;

    let mut rate_limited = 0u32;
    let mut other_errors = 0u32;
    let mut short_outputs = 0u32;
    let (mut ttft, mut tpot, mut e2e) = (Vec::new(), Vec::new(), Vec::new());
    for r in &records {
        match r.error_code {
            Some(429) => rate_limited += 1,
            Some(LLMPERF_SHORT_OUTPUT) => short_outputs += 1,
            Some(_) => other_errors += 1,
            None => {}
        }
        if matches!(r.error_code, Some(c) if c != LLMPERF_SHORT_OUTPUT) {
            continue;
        }
        let (Some(t), Some(e), Some(out)) =
            (r.ttft_s, r.end_to_end_latency_s, r.number_output_tokens)
        else {
            continue;
        };
        if t > 0.0 && e > t && out >= 2 && t.is_finite() && e.is_finite() {
            ttft.push(t);
            tpot.push((e - t) / (out - 1) as f64);
            e2e.push(e);
        }
    }
    if ttft.len() < MIN_LATENCY_SAMPLES {
        return Err(data_error(
            path,
            format!(
                "only {} successful requests with timings; need {MIN_LATENCY_SAMPLES}",
                ttft.len()
            ),
        ));
    }
    let n = records.len() as f64;
    let jeffreys = |k: u32| round_sig9((f64::from(k) + 0.5) / (n + 1.0));
    let e2e = sorted(e2e);
    Ok(LatencyProfile {
        name: Cow::Owned(stem.clone()),
        provider: Cow::Owned(provider.to_owned()),
        model_size: Cow::Owned(size.to_owned()),
        requests: count_u32(records.len()),
        rate_limited,
        other_errors,
        short_outputs,
        latency_samples: count_u32(ttft.len()),
        ttft_s: fit_log_normal(sorted(ttft)),
        time_per_output_token_s: fit_log_normal(sorted(tpot)),
        rate_limit_rate: jeffreys(rate_limited),
        other_error_rate: jeffreys(other_errors),
        e2e_p50_s: round_sig9(quantile_sorted(&e2e, 0.5)),
        e2e_p99_s: round_sig9(quantile_sorted(&e2e, 0.99)),
    })
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Log-normal matching the median and the 95th percentile of sorted, positive `xs`.
fn fit_log_normal(xs: Vec<f64>) -> LogNormalFit {
    let p50 = quantile_sorted(&xs, 0.5);
    let p95 = quantile_sorted(&xs, 0.95);
    let sigma = ((p95.ln() - p50.ln()) / standard_normal_quantile(0.95)).max(1e-3);
    LogNormalFit {
        mu: round_sig9(p50.ln()),
        sigma: round_sig9(sigma),
    }
}

fn fit_token_mix(name: &str, source: &str, requests: &[TraceRequest]) -> TokenMix {
    let inputs: Vec<f64> = requests.iter().map(|r| r.input).collect();
    let outputs: Vec<f64> = requests.iter().map(|r| r.output).collect();
    let spearman = spearman(&inputs, &outputs);
    let table = |xs: Vec<f64>| {
        let xs = sorted(xs);
        QuantileTable(QUANTILE_PROBS.map(|p| round_sig9(quantile_sorted(&xs, p))))
    };
    TokenMix {
        name: Cow::Owned(name.to_owned()),
        source: Cow::Owned(source.to_owned()),
        requests: count_u32(requests.len()),
        input_tokens: table(inputs),
        output_tokens: table(outputs),
        spearman_in_out: round_sig9(spearman),
    }
}

/// Ranks with ties averaged.
fn ranks(xs: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[a].total_cmp(&xs[b]));
    let mut rank = vec![0.0; xs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && xs[order[j + 1]] == xs[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0;
        for &k in &order[i..=j] {
            rank[k] = average;
        }
        i = j + 1;
    }
    rank
}

fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let (ma, mb) = (mean(&ra), mean(&rb));
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - ma) * (y - mb);
        va += (x - ma) * (x - ma);
        vb += (y - mb) * (y - mb);
    }
    if va > 0.0 && vb > 0.0 {
        cov / (va * vb).sqrt()
    } else {
        0.0
    }
}

fn fit_arrivals(
    name: &str,
    source: &str,
    requests: &[TraceRequest],
    path: &Path,
) -> Result<ArrivalFit, FitError> {
    let times = sorted(requests.iter().map(|r| r.time_s).collect());
    let (Some(&t0), Some(&last)) = (times.first(), times.last()) else {
        return Err(data_error(path, "no requests"));
    };
    let span = last - t0;
    let slots_per_window = (WINDOW_S / SLOT_S).round() as usize;
    let windows = (span / WINDOW_S).floor() as usize;
    if windows < 8 {
        return Err(data_error(
            path,
            format!(
                "trace spans {span:.0} s; need at least {} s",
                8.0 * WINDOW_S
            ),
        ));
    }

    // Nearest slot, not floor: Mooncake stamps jitter by a few ms around multiples of 3 s.
    let mut slots = vec![0.0f64; windows * slots_per_window];
    for &t in &times {
        let slot = ((t - t0) / SLOT_S).round() as usize;
        if let Some(c) = slots.get_mut(slot) {
            *c += 1.0;
        }
    }
    let counts: Vec<f64> = slots
        .chunks(slots_per_window)
        .map(|c| c.iter().sum())
        .collect();

    // Dispersion of slot counts inside active windows → Gamma gap shape.
    let (mut within_var, mut within_mean) = (0.0, 0.0);
    for chunk in slots.chunks(slots_per_window) {
        let m = mean(chunk);
        if m > 0.0 {
            let k = chunk.len() as f64;
            within_var += population_variance(chunk) * k / (k - 1.0);
            within_mean += m;
        }
    }
    let dispersion = within_var / within_mean;
    let gap_shape = if dispersion > 0.0 {
        (1.0 / dispersion).clamp(0.01, 100.0)
    } else {
        100.0
    };

    // On/off window chain.
    let (mut on_on, mut on_off, mut off_on, mut off_off) = (0u32, 0u32, 0u32, 0u32);
    for pair in counts.windows(2) {
        match (pair[0] > 0.0, pair[1] > 0.0) {
            (true, true) => on_on += 1,
            (true, false) => on_off += 1,
            (false, true) => off_on += 1,
            (false, false) => off_off += 1,
        }
    }
    let ratio = |a: u32, b: u32, empty: f64| {
        if a + b == 0 {
            empty
        } else {
            f64::from(a) / f64::from(a + b)
        }
    };
    let p_on_to_off = ratio(on_off, on_on, 0.0);
    let p_off_to_on = ratio(off_on, off_off, 1.0);
    if p_on_to_off > 0.0 && p_off_to_on <= 0.0 {
        return Err(data_error(
            path,
            "arrivals stop for good: no idle window is followed by an active one",
        ));
    }

    // Rate multiplier of active windows, net of the renewal noise.
    let active: Vec<f64> = counts.iter().copied().filter(|&c| c > 0.0).collect();
    let (m, v) = (mean(&active), population_variance(&active));
    let excess = v - dispersion * m;
    let on_log_sigma = if excess > 0.0 {
        (1.0 + excess / (m * m)).ln().sqrt()
    } else {
        0.0
    };
    let (mut cov, mut pairs) = (0.0, 0u32);
    for pair in counts.windows(2) {
        if pair[0] > 0.0 && pair[1] > 0.0 {
            cov += (pair[0] - m) * (pair[1] - m);
            pairs += 1;
        }
    }
    let on_log_rho = if excess > 0.0 && pairs > 0 {
        (cov / f64::from(pairs) / excess).clamp(0.0, 0.95)
    } else {
        0.0
    };

    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let gap_mean = mean(&gaps);
    let interarrival_cv = population_variance(&gaps).sqrt() / gap_mean;

    Ok(ArrivalFit {
        name: Cow::Owned(name.to_owned()),
        source: Cow::Owned(source.to_owned()),
        requests: count_u32(requests.len()),
        span_s: round_sig9(span),
        mean_rate_per_s: round_sig9(requests.len() as f64 / span),
        interarrival_cv: round_sig9(interarrival_cv),
        window_s: WINDOW_S,
        p_on_to_off: round_sig9(p_on_to_off),
        p_off_to_on: round_sig9(p_off_to_on),
        on_log_sigma: round_sig9(on_log_sigma),
        on_log_rho: round_sig9(on_log_rho),
        gap_shape: round_sig9(gap_shape),
    })
}

fn fit_diurnal(dir: &Path) -> Result<([f64; DIURNAL_BINS], u32), FitError> {
    let files = files_with_extension(dir, "csv")?;

    let mut profiles: Vec<[f64; DIURNAL_BINS]> = Vec::new();
    for path in &files {
        let rates = read_servegen(path)?;
        let days = rates.len() / DIURNAL_BINS;
        if days == 0 {
            return Err(data_error(
                path,
                format!("{} windows; need a full day ({DIURNAL_BINS})", rates.len()),
            ));
        }
        let rates = &rates[..days * DIURNAL_BINS];
        let client_mean = mean(rates);
        if client_mean <= 0.0 {
            continue;
        }
        let mut profile = [0.0; DIURNAL_BINS];
        for (i, r) in rates.iter().enumerate() {
            profile[i % DIURNAL_BINS] += r / (days as f64 * client_mean);
        }
        profiles.push(profile);
    }
    if profiles.is_empty() {
        return Err(data_error(dir, "no client with a non-zero rate series"));
    }

    let trim = (profiles.len() as f64 * DIURNAL_TRIM).floor() as usize;
    let mut combined = [0.0; DIURNAL_BINS];
    for (bin, value) in combined.iter_mut().enumerate() {
        let column = sorted(profiles.iter().map(|p| p[bin]).collect());
        *value = mean(&column[trim..column.len() - trim]);
    }
    let mut smoothed = [0.0; DIURNAL_BINS];
    for (bin, value) in smoothed.iter_mut().enumerate() {
        let prev = combined[(bin + DIURNAL_BINS - 1) % DIURNAL_BINS];
        let next = combined[(bin + 1) % DIURNAL_BINS];
        *value = (prev + combined[bin] + next) / 3.0;
    }
    let total_mean = mean(&smoothed);
    if total_mean <= 0.0 {
        return Err(data_error(dir, "the combined diurnal profile is all zero"));
    }
    Ok((
        smoothed.map(|v| round_sig9(v / total_mean)),
        count_u32(profiles.len()),
    ))
}

/// The rate column of a ServeGen per-client trace, checked to be consecutive 10-minute windows.
fn read_servegen(path: &Path) -> Result<Vec<f64>, FitError> {
    let text = read_text(path)?;
    let mut rates = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let mut cols = line.split(',');
        let start: f64 = parse_field(path, n, "window_start_s", cols.next())?;
        let rate: f64 = parse_field(path, n, "rate_req_per_s", cols.next())?;
        let expected = rates.len() as f64 * SERVEGEN_WINDOW_S;
        if (start - expected).abs() > 0.5 {
            return Err(parse_error(
                path,
                n,
                format!("window starts at {start} s; expected {expected} s"),
            ));
        }
        if !rate.is_finite() || rate < 0.0 {
            return Err(parse_error(path, n, format!("bad rate {rate}")));
        }
        rates.push(rate);
    }
    Ok(rates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_type7() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&xs, 0.0), 1.0);
        assert_eq!(quantile_sorted(&xs, 1.0), 4.0);
        assert!((quantile_sorted(&xs, 0.5) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn spearman_of_monotone_and_ties() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(ranks(&[5.0, 1.0, 5.0]), vec![1.5, 0.0, 1.5]);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let err = fit_traces(Path::new("/nonexistent/llm-traces")).unwrap_err();
        assert!(matches!(err, FitError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/llm-traces"));
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let dir = std::env::temp_dir().join(format!("fit-replay-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("trace.csv");
        fs::write(
            &csv,
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,x\n",
        )
        .unwrap();
        let err = read_azure(&csv).unwrap_err();
        assert!(matches!(err, FitError::Parse { line: 2, .. }), "{err}");
        fs::write(&csv, "0,1.0\n700,2.0\n").unwrap();
        let err = read_servegen(&csv).unwrap_err();
        assert!(matches!(err, FitError::Parse { line: 2, .. }), "{err}");
        let json = dir.join("acme_7b.json");
        fs::write(&json, "[{\"error_code\": 429}]").unwrap();
        let err = fit_latency_profile(&json).unwrap_err();
        assert!(matches!(err, FitError::Data { .. }), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
