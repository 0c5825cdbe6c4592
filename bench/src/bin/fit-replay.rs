//! Fits the replay generator's parameters from the public LLM traces and prints them
//! as the Rust source of `local/src/replay/params.rs`:
//!
//! ```text
//! cargo run -p sentinel-bench --bin fit-replay > local/src/replay/params.rs
//! cargo run -p sentinel-bench --bin fit-replay -- --output local/src/replay/params.rs
//! ```
//!
//! The second form replaces the file only after a successful fit; a failed fit after `>`
//! leaves an empty `params.rs` that no longer compiles (restore it with git).

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser;
use sentinel_local::replay::{fit_traces, FittedParams};

/// Fit the replay generator's parameters from the llm-traces datasets.
#[derive(Debug, Parser)]
#[command(name = "fit-replay", version)]
struct Args {
    /// The `llm-traces` directory (default: `../shared/datasets/llm-traces` from the workspace root).
    traces_dir: Option<PathBuf>,
    /// Write the source to this file (atomically, only on success) instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
}

fn default_traces_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/llm-traces")
}

fn print_summary(params: &FittedParams) {
    for p in &params.latency_profiles {
        eprintln!(
            "{:<15} ttft p50 {:>6.3} s  per-token p50 {:>6.4} s  e2e p50 {:>6.2} s p99 {:>6.2} s  429 {:.4}  other {:.4}",
            p.name,
            p.ttft_s.median(),
            p.time_per_output_token_s.median(),
            p.e2e_p50_s,
            p.e2e_p99_s,
            p.rate_limit_rate,
            p.other_error_rate
        );
    }
    for m in &params.token_mixes {
        eprintln!(
            "{:<13} input p50 {:>6.0} p99 {:>6.0}  output p50 {:>5.0} p99 {:>5.0}",
            m.name,
            m.input_tokens.quantile(0.5),
            m.input_tokens.quantile(0.99),
            m.output_tokens.quantile(0.5),
            m.output_tokens.quantile(0.99)
        );
    }
    for a in &params.arrivals {
        eprintln!(
            "{:<13} rate {:.2}/s  inter-arrival CV {:.2}  active {:.2}  sigma {:.3} rho {:.3}  gap shape {:.3}",
            a.name,
            a.mean_rate_per_s,
            a.interarrival_cv,
            a.on_fraction(),
            a.on_log_sigma,
            a.on_log_rho,
            a.gap_shape
        );
    }
}

fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = args.traces_dir.unwrap_or_else(default_traces_dir);
    let params =
        fit_traces(&dir).with_context(|| format!("fitting traces in {}", dir.display()))?;
    print_summary(&params);
    let source = params.to_rust_source();
    match args.output {
        Some(path) => write_atomically(&path, &source),
        None => std::io::stdout()
            .lock()
            .write_all(source.as_bytes())
            .context("writing params.rs to stdout"),
    }
}
