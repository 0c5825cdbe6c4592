//! The `sentinel` command.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sentinel_config::LogFormat;
use sentinel_node::NodeConfig;
use sentinel_router::RouterConfig;
use tracing_subscriber::EnvFilter;

/// Sentinel: real-time anomaly detection for LLM applications.
#[derive(Parser)]
#[command(version, about)]
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
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(level).with_context(|| format!("log level `{level}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
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
            init_logging(config.log.format, &config.log.level)?;
            runtime()?.block_on(sentinel_node::run(config, termination()))?;
        }
        Command::Router { config } => {
            let config = RouterConfig::load(config.as_deref(), std::env::vars())?;
            init_logging(config.log.format, &config.log.level)?;
            runtime()?.block_on(sentinel_router::run(config, termination()))?;
        }
    }
    Ok(())
}
