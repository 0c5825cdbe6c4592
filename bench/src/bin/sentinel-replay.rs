//! Runs Sentinel's detection on a realistic replay of LLM traffic with injected
//! incidents, printing every incident as it opens, escalates and resolves, and a summary
//! of what was caught.

use anyhow::{Context, Result};
use clap::Parser;
use sentinel_bench::outcome::{run, Raised, ReplayOutcome};
use sentinel_core::DetectionConfig;
use sentinel_local::replay::{Incident, ReplayConfig};
use sentinel_local::scoreboard::{alert_line, incident_line, incident_table};

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
    /// Print notifications (and, with --anomalies, point anomalies) as JSON lines instead of text.
    #[arg(long)]
    json: bool,
    /// Print every point anomaly as well as incidents.
    #[arg(long)]
    anomalies: bool,
    /// Print only the summary.
    #[arg(long)]
    quiet: bool,
    /// Replay clean traffic only, without injected incidents.
    #[arg(long)]
    no_incidents: bool,
    /// Detection configuration (YAML or JSON, the node's `detection` section); defaults otherwise.
    #[arg(long, value_name = "FILE")]
    detection: Option<std::path::PathBuf>,
}

fn print_raised(raised: Raised<'_>, injected: Option<&Incident>, args: &Args) -> Result<()> {
    if args.quiet {
        return Ok(());
    }
    match raised {
        Raised::Incident(change) if args.json => {
            if change.notify {
                let at = change.incident.updated_at_ms;
                let n = sentinel_core::Notification::of(change.kind, &change.incident, at, None);
                println!("{}", serde_json::to_string(&n)?);
            }
        }
        Raised::Incident(change) => println!("{}", incident_line(change, injected)),
        Raised::Alert(alert) if args.anomalies && args.json => {
            println!("{}", serde_json::to_string(alert)?)
        }
        Raised::Alert(alert) if args.anomalies => println!("{}", alert_line(alert, injected)),
        Raised::Alert(_) => {}
    }
    Ok(())
}

fn print_summary(outcome: &ReplayOutcome) {
    let s = &outcome.stats;
    println!();
    println!(
        "replayed {} events over {:.0} min of event time: {} accepted, {} rejected, {} redactions, {} point anomalies recorded, {} repeats folded",
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
        "clean traffic: {} incidents, {} point anomalies over {} events ({:.2} per 10,000 events); {} notifications in all",
        outcome.false_incidents.len(),
        outcome.false_alerts.len(),
        outcome.clean_events,
        outcome.false_alerts_per_10k(),
        outcome.notifications,
    );
    for (at, service, model, kind) in &outcome.false_incidents {
        println!(
            "  {} {kind} on {service}/{model}",
            sentinel_core::anomaly::rfc3339(*at)
        );
    }
}

fn detection(path: Option<&std::path::Path>) -> Result<DetectionConfig> {
    let Some(path) = path else {
        return Ok(DetectionConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
    let config = detection(args.detection.as_deref())?;
    let mut failure = None;
    let outcome = run(replay, config, args.shards, |raised, injected| {
        if failure.is_none() {
            failure = print_raised(raised, injected, &args).err();
        }
    })
    .context("setting up the replay (the five incidents need about 25 minutes of event time: raise --duration or pass --no-incidents)")?;
    if let Some(e) = failure {
        return Err(e).context("printing what was raised");
    }
    if !args.json {
        print_summary(&outcome);
    }
    Ok(())
}
