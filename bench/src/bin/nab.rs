//! `nab`: scores Sentinel's detectors on the Numenta Anomaly Benchmark.
//!
//! Runs each detector over the corpus, tunes one threshold per detector and profile
//! as NAB does, prints the normalised scores and writes NAB's results layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use sentinel_bench::nab::results::{
    read_run, write_json, write_run, FinalResults, ThresholdEntry, Thresholds,
};
use sentinel_bench::nab::scorer::{optimize_threshold, CorpusSweep, Evaluation};
use sentinel_bench::nab::{run_detector, Corpus, DetectorKind, DetectorRun, Profile};

/// Score detectors on the NAB corpus with NAB's rules.
#[derive(Debug, Parser)]
#[command(name = "nab", version)]
struct Args {
    /// NAB directory holding `data/`, `combined_windows.json` and `profiles.json`
    /// [default: ../shared/datasets/nab from the workspace root].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Comma-separated detectors to run [default: all].
    #[arg(long, value_delimiter = ',')]
    detectors: Vec<String>,
    /// Where to write results, `thresholds.json` and `final_results.json`
    /// [default: target/nab-results in the workspace].
    /// JSON entries are keyed by detector name; a detector run here wins over
    /// imported results of the same name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also score every detector found in this NAB results directory
    /// (`<dir>/<detector>/<category>/<detector>_<file>.csv`).
    #[arg(long)]
    nab_results: Option<PathBuf>,
    /// Worker threads for running detectors.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

/// One table row: a detector's evaluations under every profile.
struct Row {
    /// Detector name, the key in the JSON outputs.
    name: String,
    /// Label in the printed table.
    label: String,
    seconds: Option<f64>,
    evaluations: Vec<Evaluation>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench crate has no parent directory")?;
    let data = args
        .data
        .unwrap_or_else(|| workspace.join("../shared/datasets/nab"));
    let out = args
        .out
        .unwrap_or_else(|| workspace.join("target/nab-results"));
    let kinds = if args.detectors.is_empty() {
        DetectorKind::ALL.to_vec()
    } else {
        args.detectors
            .iter()
            .map(|name| name.parse::<DetectorKind>())
            .collect::<Result<Vec<_>, _>>()?
    };

    let started = Instant::now();
    let corpus = Corpus::load(&data).with_context(|| format!("loading {}", data.display()))?;
    let profiles = Profile::load_default(&data)?;
    if profiles.is_empty() {
        bail!(
            "{} defines no profiles",
            data.join("profiles.json").display()
        );
    }
    let sweep = CorpusSweep::new(&corpus);
    println!(
        "NAB corpus {}: {} files, {} rows, {} windows; loaded in {:.2}s",
        data.display(),
        corpus.files.len(),
        corpus.row_count(),
        corpus.window_count(),
        started.elapsed().as_secs_f64()
    );

    let null = run_detector(DetectorKind::Null, &corpus, args.threads);
    let null_raw = profiles
        .iter()
        .map(|p| Ok(sweep.optimize(&null.scores, &p.cost)?.score))
        .collect::<Result<Vec<f64>>>()?;
    write_run(&out, &corpus, &null)?;

    let evaluate = |run: &DetectorRun| -> Result<Vec<Evaluation>> {
        profiles
            .iter()
            .zip(&null_raw)
            .map(|(p, &null)| Ok(optimize_threshold(&sweep, &run.scores, p, null)?))
            .collect()
    };

    let mut rows = Vec::new();
    for kind in kinds {
        let t = Instant::now();
        let run = if kind == DetectorKind::Null {
            null.clone()
        } else {
            run_detector(kind, &corpus, args.threads)
        };
        let seconds = t.elapsed().as_secs_f64();
        write_run(&out, &corpus, &run)?;
        rows.push(Row {
            name: run.name.clone(),
            label: run.name.clone(),
            seconds: Some(seconds),
            evaluations: evaluate(&run)?,
        });
    }
    if let Some(dir) = &args.nab_results {
        for name in detector_dirs(dir)? {
            let run = read_run(dir, &name, &corpus)
                .with_context(|| format!("reading NAB results of `{name}`"))?;
            rows.push(Row {
                label: format!("{name} (from {})", dir.display()),
                name,
                seconds: None,
                evaluations: evaluate(&run)?,
            });
        }
    }

    print_table(&profiles, &rows);
    let mut thresholds = Thresholds::new();
    let mut finals = FinalResults::new();
    // Detectors run here come first, so they win over imported results of the same name.
    for row in &rows {
        if thresholds.contains_key(&row.name) {
            continue;
        }
        let t: BTreeMap<_, _> = row
            .evaluations
            .iter()
            .map(|e| {
                let entry = ThresholdEntry {
                    threshold: e.best.threshold,
                    score: e.best.score,
                };
                (e.profile.clone(), entry)
            })
            .collect();
        thresholds.insert(row.name.clone(), t);
        finals.insert(
            row.name.clone(),
            row.evaluations
                .iter()
                .map(|e| (e.profile.clone(), e.normalized))
                .collect(),
        );
    }
    write_json(&out.join("thresholds.json"), &thresholds)?;
    write_json(&out.join("final_results.json"), &finals)?;
    println!(
        "results in {} (total {:.2}s)",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Names of the detector subdirectories of a NAB results directory, sorted.
fn detector_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Prints normalised scores per profile, then counts and threshold of the first profile.
fn print_table(profiles: &[Profile], rows: &[Row]) {
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(8).max(8);
    let mut header = format!("{:<width$}", "detector");
    for p in profiles {
        header.push_str(&format!(" {:>18}", p.name));
    }
    header.push_str(&format!(
        " | {:>4} {:>6} {:>4} {:>12} {:>8}",
        "TP", "FP", "FN", "threshold", "time"
    ));
    println!("{header}");
    println!("{}", "-".repeat(header.chars().count()));
    for row in rows {
        let mut line = format!("{:<width$}", row.label);
        for e in &row.evaluations {
            line.push_str(&format!(" {:>18.2}", e.normalized));
        }
        if let Some(first) = row.evaluations.first() {
            line.push_str(&format!(
                " | {:>4} {:>6} {:>4} {:>12.10}",
                first.tally.detected_windows,
                first.tally.false_positives,
                first.tally.missed_windows,
                first.best.threshold
            ));
        }
        match row.seconds {
            Some(s) => line.push_str(&format!(" {:>7.2}s", s)),
            None => line.push_str(&format!(" {:>8}", "-")),
        }
        println!("{line}");
    }
    println!(
        "TP/FP/FN at the {} threshold: detected windows / detections outside windows / missed windows",
        profiles.first().map_or("", |p| p.name.as_str())
    );
}
