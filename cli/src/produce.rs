//! `sentinel produce`: sends events from a file or the replay to a router or to Kafka,
//! with a progress line and a summary of what was acknowledged and rejected.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sentinel_local::replay::ReplayConfig;
use tokio::sync::watch;

use crate::feed::{replay_from, send_all, start_ending_now, Pace, Sender, Source, Tally, Target};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Exit code when some events were rejected or not acknowledged.
const EXIT_NOT_ALL_ACKNOWLEDGED: i32 = 1;
/// Exit code when the arguments or the file cannot be used.
const EXIT_USAGE: i32 = 2;

/// Options of `sentinel produce`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sentinel produce --file events.jsonl                      # to http://127.0.0.1:8080, 1,000 events/s
  sentinel produce --file calls.csv --rate 0 --to http://router:8080 --api-key $KEY
  sentinel produce --replay --duration 600 --speed 30       # 10 minutes of realistic traffic in 20 s
  sentinel produce --replay --kafka broker:9092 --topic llm.telemetry
  sentinel produce --replay --clean --duration 60 --rate 0  # a minute of clean traffic, flat out

A CSV file has a header row naming the flat event fields (service_name, model_name,
latency_ms, prompt_tokens, completion_tokens, total_tokens, cost_usd, error, user_id, ...).

Exit codes: 0 every event acknowledged, 1 some rejected or not acknowledged (the summary
says which and why), 2 bad arguments or an unreadable file.")]
pub struct ProduceArgs {
    /// Events to send: one JSON event per line (`.jsonl`, `.ndjson`, `.json`) or CSV with a
    /// header row (`.csv`).
    #[arg(
        long,
        short,
        value_name = "FILE",
        required_unless_present = "replay",
        conflicts_with = "replay"
    )]
    file: Option<PathBuf>,
    /// The file's format when its extension does not say.
    #[arg(long, value_enum, requires = "file")]
    format: Option<FileFormat>,
    /// Send the realistic replay of LLM traffic with injected incidents, its event time
    /// ending now (fresh event ids on every run).
    #[arg(long)]
    replay: bool,
    /// Event time of the replay, seconds.
    #[arg(long, default_value_t = 1800.0, conflicts_with = "file")]
    duration: f64,
    /// Seed of the replay.
    #[arg(long, default_value_t = 42, conflicts_with = "file")]
    seed: u64,
    /// Mean request rate of the replayed traffic, events per second of event time.
    #[arg(long, default_value_t = 150.0, conflicts_with = "file")]
    replay_rate: f64,
    /// Replay clean traffic only, without the injected incidents (which need about 25
    /// minutes of event time).
    #[arg(long, conflicts_with = "file")]
    clean: bool,
    /// Send the replay at its own timing, this many times faster than the clock, instead of
    /// at `--rate`.
    #[arg(long, conflicts_with = "file")]
    speed: Option<f64>,
    /// Events per second (0: as fast as they are acknowledged).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// The router to send to over HTTP (`POST /api/v1/events`).
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:8080",
        conflicts_with = "kafka"
    )]
    to: String,
    /// API key for the router.
    #[arg(long, env = "SENTINEL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Produce to Kafka (bootstrap brokers) instead of HTTP.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// The Kafka topic.
    #[arg(long, default_value = "llm.telemetry", requires = "kafka")]
    topic: String,
}

/// Formats `--file` can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FileFormat {
    /// One JSON event per line.
    Jsonl,
    /// A header row and one event per row.
    Csv,
}

impl ProduceArgs {
    fn source(&self) -> anyhow::Result<Source> {
        let Some(path) = &self.file else {
            anyhow::ensure!(
                self.duration > 0.0 && self.replay_rate > 0.0,
                "--duration and --replay-rate must be above 0"
            );
            let config = ReplayConfig {
                seed: self.seed,
                duration_s: self.duration,
                base_rate_per_s: self.replay_rate,
                incidents: !self.clean,
                ..ReplayConfig::default()
            };
            let start_ms = start_ending_now(self.duration);
            return Ok(Source::Replay(replay_from(config, start_ms)?));
        };
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let format = match (self.format, extension.as_deref()) {
            (Some(format), _) => format,
            (None, Some("csv")) => FileFormat::Csv,
            (None, Some("jsonl" | "ndjson" | "json")) => FileFormat::Jsonl,
            _ => anyhow::bail!(
                "cannot tell the format of {} from its extension: give --format jsonl or csv",
                path.display()
            ),
        };
        Ok(match format {
            FileFormat::Jsonl => Source::Jsonl(path.clone()),
            FileFormat::Csv => Source::Csv(path.clone()),
        })
    }

    fn pace(&self) -> anyhow::Result<Pace> {
        anyhow::ensure!(self.rate >= 0.0, "--rate must not be negative");
        Ok(match self.speed {
            Some(speed) if speed > 0.0 => Pace::Speed(speed),
            Some(_) => anyhow::bail!("--speed must be above 0"),
            None => Pace::Rate(self.rate),
        })
    }

    fn target(&self) -> Target {
        match &self.kafka {
            Some(brokers) => Target::Kafka {
                brokers: brokers.clone(),
                topic: self.topic.clone(),
            },
            None => Target::Http {
                url: self.to.clone(),
                api_key: self.api_key.clone(),
            },
        }
    }
}

/// Sends the events until they run out or `stop` resolves; returns the exit code after
/// printing the summary, or an error on stderr.
pub async fn run(args: ProduceArgs, stop: impl std::future::Future<Output = ()>) -> i32 {
    match produce(args, stop).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            EXIT_USAGE
        }
    }
}

async fn produce(
    args: ProduceArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<i32> {
    let (events, _) = args.source()?.open(args.pace()?)?;
    let target = args.target();
    let sender = Sender::new(&target)?;
    let destination = match &target {
        Target::Http { url, .. } => format!("{url} over HTTP"),
        Target::Kafka { brokers, topic } => format!("Kafka topic {topic} at {brokers}"),
    };
    eprintln!("sending to {destination}");

    let tally = Arc::new(Mutex::new(Tally::default()));
    let (stop_feed, feed_stopped) = watch::channel(false);
    let mut feed = tokio::spawn(send_all(events, sender, tally.clone(), feed_stopped));
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    let mut interrupted = false;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut feed => break,
            _ = &mut stop, if !interrupted => {
                interrupted = true;
                let _ = stop_feed.send(true);
            }
            _ = progress.tick(), if terminal => {
                eprint!("\r\x1b[2K{}", progress_line(&tally.lock().expect("tally lock"), started));
                let _ = std::io::stderr().flush();
            }
        }
    }
    if terminal {
        eprint!("\r\x1b[2K");
    }
    let tally = tally.lock().expect("tally lock").clone();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent {} in {seconds:.1} s ({:.0}/s): acknowledged {} ({} duplicates), rejected {}, failed {}{}",
        tally.sent,
        tally.sent as f64 / seconds.max(1e-3),
        tally.acknowledged,
        tally.duplicates,
        tally.rejected,
        tally.failed,
        if interrupted { " (interrupted)" } else { "" }
    );
    for line in tally.reason_lines() {
        println!("{line}");
    }
    Ok(exit_code(&tally, interrupted))
}

/// 0 when every event read was acknowledged; otherwise [`EXIT_NOT_ALL_ACKNOWLEDGED`].
fn exit_code(tally: &Tally, interrupted: bool) -> i32 {
    if interrupted || tally.rejected > 0 || tally.failed > 0 {
        EXIT_NOT_ALL_ACKNOWLEDGED
    } else {
        0
    }
}

fn progress_line(tally: &Tally, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64().max(1e-3);
    format!(
        "{:>6.1} s  sent {}  ({:.0}/s)  acknowledged {}  rejected {}  failed {}",
        seconds,
        tally.sent,
        tally.sent as f64 / seconds,
        tally.acknowledged,
        tally.rejected,
        tally.failed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: ProduceArgs,
    }

    fn parse(args: &[&str]) -> Result<ProduceArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("produce").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn the_format_comes_from_the_extension_unless_given() {
        let source = |args: &[&str]| parse(args).unwrap().source();
        assert!(matches!(source(&["--file", "a.csv"]), Ok(Source::Csv(_))));
        assert!(matches!(
            source(&["--file", "a.NDJSON"]),
            Ok(Source::Jsonl(_))
        ));
        assert!(matches!(
            source(&["--file", "a.txt", "--format", "csv"]),
            Ok(Source::Csv(_))
        ));
        let err = source(&["--file", "a.txt"]).unwrap_err();
        assert!(err.to_string().contains("--format"), "{err}");
    }

    #[test]
    fn a_file_or_the_replay_is_required_and_not_both() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--file", "a.csv", "--replay"]).is_err());
        assert!(parse(&["--file", "a.csv", "--speed", "3"]).is_err());
        assert!(parse(&["--replay", "--to", "http://x:1", "--kafka", "b:9092"]).is_err());
        assert!(matches!(
            parse(&["--replay", "--speed", "30"]).unwrap().pace(),
            Ok(Pace::Speed(s)) if s == 30.0
        ));
    }

    #[test]
    fn anything_not_acknowledged_fails_the_run() {
        let acknowledged = Tally {
            sent: 3,
            acknowledged: 3,
            duplicates: 1,
            ..Tally::default()
        };
        assert_eq!(exit_code(&acknowledged, false), 0);
        assert_eq!(exit_code(&acknowledged, true), EXIT_NOT_ALL_ACKNOWLEDGED);
        let rejected = Tally {
            rejected: 1,
            ..acknowledged.clone()
        };
        assert_eq!(exit_code(&rejected, false), EXIT_NOT_ALL_ACKNOWLEDGED);
    }
}
