//! The `sentinel` command.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use sentinel_config::LogFormat;
use sentinel_node::NodeConfig;
use sentinel_router::RouterConfig;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

mod dev;
mod feed;
mod produce;
mod query;

/// Sentinel: real-time anomaly detection for LLM applications.
#[derive(Parser)]
#[command(name = "sentinel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a shard server (a StatefulSet pod): hosts shard replicas, serves gRPC,
    /// `/metrics` and `/health/*`.
    ///
    /// Every configuration key can be set by environment variable, e.g.
    /// `SENTINEL_NODE__ID=2 SENTINEL_NODE__SEEDS='[sentinel-0.sentinel:7400]'`.
    ///
    /// Example: `sentinel node --config node.yaml`
    Node {
        /// YAML configuration file (see `node/sentinel-node.example.yaml`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Runs a stateless router (a Deployment): the REST API for ingestion and queries,
    /// forwarding events in per-shard batches to shard leaders and fanning queries out.
    ///
    /// Every configuration key can be set by environment variable, e.g.
    /// `SENTINEL_ROUTER__SEEDS='[sentinel-0.sentinel:7400]' SENTINEL_HTTP__LISTEN=0.0.0.0:8080`.
    ///
    /// Example: `sentinel router --config router.yaml`
    Router {
        /// YAML configuration file (see `router/sentinel-router.example.yaml`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Runs a local cluster (3 nodes and a router, no external services) fed realistic
    /// LLM traffic with injected incidents, and shows the anomalies it raises.
    Dev(dev::DevArgs),
    /// Sends events from a JSONL or CSV file, or from the realistic replay, to a router
    /// over HTTP or to Kafka, and reports what was acknowledged and rejected.
    Produce(produce::ProduceArgs),
    /// The query client (anomalies, baselines, telemetry, incidents, silences, cluster),
    /// over a router's gRPC API.
    #[command(flatten)]
    Query(query::QueryCommand),
    /// Prints the shell completion script.
    #[command(after_help = "Examples:
  sentinel completions bash > /etc/bash_completion.d/sentinel
  sentinel completions zsh > \"${fpath[1]}/_sentinel\"
  sentinel completions fish > ~/.config/fish/completions/sentinel.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints the man page (roff), or writes one page per command into a directory.
    #[command(after_help = "Examples:
  sentinel man | man -l -
  sentinel man --out-dir /usr/local/share/man/man1")]
    Man {
        /// Write `sentinel.1` and `sentinel-<command>.1` here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Sends the process's log to stderr (coloured on a terminal), or appended to the file `to`.
fn init_logging(format: LogFormat, level: &str, to: Option<&Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level).with_context(|| format!("log level `{level}`"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let builder = match to {
        Some(path) => {
            let file = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the log file {}", path.display()))?;
            builder
                .with_ansi(false)
                .with_writer(BoxMakeWriter::new(Mutex::new(file)))
        }
        // Colours only for a terminal: a pod's or a unit's log is read as text.
        None => builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(BoxMakeWriter::new(std::io::stderr)),
    };
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Warns once about the `SENTINEL_*` variables a server ignores (the original Sentinel's
/// and its SDKs' variables, misspellings without a double underscore).
fn warn_ignored_variables() {
    let ignored = sentinel_config::ignored_variables(std::env::vars());
    if !ignored.is_empty() {
        tracing::warn!(
            variables = %ignored.join(", "),
            "ignoring environment variables that are not configuration: keys are set by SENTINEL_<SECTION>__<KEY> (see docs/configuration.md)"
        );
    }
}

/// Resolves on the first SIGTERM or SIGINT; a second one ends the process at once.
async fn first_termination() {
    termination().await;
    tokio::spawn(async {
        termination().await;
        eprintln!("interrupted again: exiting without a clean shutdown");
        std::process::exit(130);
    });
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node { config } => {
            let config = NodeConfig::load(config.as_deref(), std::env::vars())?;
            init_logging(config.log.format, &config.log.level, None)?;
            warn_ignored_variables();
            runtime()?.block_on(sentinel_node::run(config, termination()))?;
        }
        Command::Router { config } => {
            let config = RouterConfig::load(config.as_deref(), std::env::vars())?;
            init_logging(config.log.format, &config.log.level, None)?;
            warn_ignored_variables();
            runtime()?.block_on(sentinel_router::run(config, termination()))?;
        }
        Command::Dev(args) => runtime()?.block_on(dev::run(args, first_termination()))?,
        Command::Produce(args) => {
            std::process::exit(runtime()?.block_on(produce::run(args, first_termination())))
        }
        Command::Query(command) => std::process::exit(query::run(command)),
        Command::Completions { shell } => clap_complete::generate(
            shell,
            &mut Cli::command(),
            "sentinel",
            &mut std::io::stdout(),
        ),
        Command::Man { out_dir: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page")?,
        Command::Man { out_dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
        }
    }
    Ok(())
}
