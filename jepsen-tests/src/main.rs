//! `sentinel-jepsen`: runs a Sentinel cluster on a private network under a fault
//! schedule with a workload of client-known events, then checks that nothing acknowledged
//! was lost or applied twice, that reads were consistent, and that the cluster recovered.
//! Exit status 0: valid; 1: an anomaly (the summary shows it); 2: the run itself failed.

mod alerts;
mod checker;
mod history;
mod nemesis;
mod net;
mod processes;
mod relay;
mod run;
mod schedule;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::processes::Layout;
use crate::run::Options;
use crate::schedule::Schedule;

/// Fault-injection test of a Sentinel cluster (needs root: namespaces, nftables, mounts).
#[derive(Parser)]
#[command(name = "sentinel-jepsen")]
struct Args {
    /// Fault schedule: none, smoke, partition, partition-halves, partition-leader,
    /// partition-bridge, partition-flap, partition-routers, partition-sinks, kill,
    /// kill-leader, pause, clock, disk, membership, router-kill, combined-crash,
    /// combined-clock, combined-membership.
    #[arg(long, default_value = "smoke")]
    schedule: Schedule,
    /// Seed of the schedule's and the workload's draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long the workload and the faults run, in seconds (recovery comes after).
    #[arg(long, default_value_t = 100)]
    time_limit: u64,
    /// Events per second, all clients together (40 % REST, 30 % gRPC, 30 % Kafka).
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
    /// Senders per share of the rate: 2 × this over REST, this over gRPC and over Kafka
    /// (each waits for its answers, so more keep the rate up while answers are slow).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    clients: u64,
    /// Nodes started at first (one more is kept as the spare membership changes add).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long, default_value_t = 2)]
    routers: usize,
    #[arg(long, default_value_t = 16)]
    shards: u32,
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// The routers' log filter; `info,sentinel_router::forward=debug` logs how every
    /// batch read from Kafka was answered, offset by offset.
    #[arg(long, default_value = "info")]
    router_log: String,
    /// Distinct (service, model) keys of the events.
    #[arg(long, default_value_t = 32)]
    keys: usize,
    /// The bound, in seconds, on each recovery step after the last repair.
    #[arg(long, default_value_t = 180)]
    recovery_limit: u64,
    /// The `sentinel` binary (default: beside this one).
    #[arg(long)]
    sentinel: Option<PathBuf>,
    /// The Kafka-protocol broker (tansu), as `scripts/setup` installs it.
    #[arg(
        long,
        env = "TEST_KAFKA_BROKER_BIN",
        default_value = "/var/cache/sentinel/tools/bin/tansu"
    )]
    broker: PathBuf,
    /// Directory of the history, verdict, summary and process logs.
    #[arg(long, default_value = "jepsen-run")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let sentinel = args.sentinel.unwrap_or_else(|| {
        let me = std::env::current_exe().expect("the harness's own path");
        me.with_file_name("sentinel")
    });
    let options = Options {
        seed: args.seed,
        time_limit: Duration::from_secs(args.time_limit),
        schedule: args.schedule,
        layout: Layout {
            sentinel,
            broker: args.broker,
            nodes: args.nodes,
            routers: args.routers,
            shards: args.shards,
            replicas: args.replicas,
            router_log: args.router_log,
        },
        rate: args.rate,
        clients: args.clients as usize,
        keys: args.keys,
        out: args.out,
        recovery_limit: Duration::from_secs(args.recovery_limit),
    };
    match run::run(&options) {
        Ok(verdict) if verdict.valid => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
