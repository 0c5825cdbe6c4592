//! Prints recall, precision and the false-alarm rate of each detector set on the
//! false-alarm stream (16 keys, log-normal traffic, 0.5 % of calls with 10× latency).

use anyhow::Result;
use clap::{Parser, ValueEnum};
use sentinel_bench::stream::{detector_sets, evaluate, SpikeSize, StreamConfig};

/// How large the injected spikes are.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Spike {
    /// Ten times the key's median latency.
    Median,
    /// Ten times a fresh latency draw.
    Draw,
}

/// Recall and precision of Sentinel's detector sets on the false-alarm stream.
#[derive(Debug, Parser)]
struct Args {
    /// Events in the stream.
    #[arg(long, default_value_t = 400_000)]
    events: usize,
    /// Seed of the generator.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Spike size.
    #[arg(long, value_enum, default_value_t = Spike::Median)]
    spike: Spike,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stream = StreamConfig {
        seed: args.seed,
        events: args.events,
        spike_size: match args.spike {
            Spike::Median => SpikeSize::TenTimesMedian,
            Spike::Draw => SpikeSize::TenTimesDraw,
        },
        ..StreamConfig::default()
    };
    println!(
        "{:<24} {:>8} {:>10} {:>14} {:>9} {:>10}",
        "detector set", "recall", "precision", "clean flagged", "flagged", "incidents"
    );
    for (name, config) in detector_sets() {
        let c = evaluate(stream, config);
        println!(
            "{:<24} {:>7.2}% {:>10.3} {:>13.3}% {:>9} {:>10}",
            name,
            100.0 * c.recall(),
            c.precision(),
            100.0 * c.false_alarm_rate(),
            c.caught + c.false_alarms,
            c.incidents
        );
    }
    Ok(())
}
