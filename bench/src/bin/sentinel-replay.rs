//! Runs Sentinel's detection on a realistic replay of LLM traffic with injected
//! incidents, printing every alert as it is raised and a summary of what was caught.

use anyhow::{Context, Result};
use clap::Parser;
use sentinel_bench::outcome::{alert_line, incident_table, run, ReplayOutcome};
use sentinel_bench::replay::{Incident, ReplayConfig};
use sentinel_core::{Anomaly, DetectionConfig};

/// Sentinel's detection on a replay of realistic LLM traffic with injected incidents.
///
/// Example: `sentinel-replay --duration 600 --seed 7`
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Seed of the replay (traffic and incident placement).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Event time to replay, in seconds (30 minutes hold all five incidents).
    #[arg(long, default_value_t = 1800.0)]
    duration: f64,
    /// Mean request rate, events per second of event time.
    #[arg(long, default_value_t = 150.0)]
    rate: f64,
    /// Shards the keys are spread over.
    #[arg(long, default_value_t = 32)]
    shards: u32,
    /// Print alerts as JSON lines (the alert payload) instead of text.
    #[arg(long)]
    json: bool,
    /// Replay clean traffic only, without injected incidents.
    #[arg(long)]
    no_incidents: bool,
}

fn print_alert(alert: &Anomaly, incident: Option<&Incident>, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(alert)?);
        return Ok(());
    }
    println!("{}", alert_line(alert, incident));
    Ok(())
}

fn print_summary(outcome: &ReplayOutcome) {
    let s = &outcome.stats;
    println!();
    println!(
        "replayed {} events over {:.0} min of event time: {} accepted, {} rejected, {} redactions, {} alerts raised, {} repeats folded",
        s.accepted + s.rejected,
        outcome.span_ms as f64 / 60_000.0,
        s.accepted,
        s.rejected,
        s.redactions.total(),
        s.alerts,
        s.repeats,
    );
    println!();
    print!("{}", incident_table(&outcome.incidents));
    println!();
    println!(
        "clean traffic: {} alerts over {} events ({:.2} per 10,000 events)",
        outcome.false_alerts.len(),
        outcome.clean_events,
        outcome.false_alerts_per_10k()
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let replay = ReplayConfig {
        seed: args.seed,
        duration_s: args.duration,
        base_rate_per_s: args.rate,
        incidents: !args.no_incidents,
        ..ReplayConfig::default()
    };
    let mut failure = None;
    let outcome = run(
        replay,
        DetectionConfig::default(),
        args.shards,
        |alert, incident| {
            if failure.is_none() {
                failure = print_alert(alert, incident, args.json).err();
            }
        },
    )
    .context("setting up the replay (the five incidents need about 25 minutes of event time: raise --duration or pass --no-incidents)")?;
    if let Some(e) = failure {
        return Err(e).context("printing an alert");
    }
    if !args.json {
        print_summary(&outcome);
    }
    Ok(())
}
