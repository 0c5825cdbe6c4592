//! The processes under test: `sentinel node`s, `sentinel router`s and the Kafka broker,
//! each in its own namespace, with a wall clock the harness can move (libfaketime) and,
//! for nodes, a data volume of fixed size the harness can fill (a tmpfs mount).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::net::Network;

/// libfaketime from Debian's package of that name (the thread-safe build).
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// Log entries between a shard's snapshots (the default is 10,000).
const SNAPSHOT_EVERY: u32 = 500;
/// Seconds between a shard leader's retention purges (the default is 300).
const PURGE_EVERY_S: u32 = 5;
/// Size of each node's data volume.
const VOLUME: &str = "size=2g";
/// Ports every node and router listens on (each has an address of its own).
pub const NODE_GRPC: u16 = 7400;
pub const NODE_HTTP: u16 = 9400;
pub const ROUTER_HTTP: u16 = 8080;
pub const ROUTER_GRPC: u16 = 7500;
pub const BROKER: u16 = 9092;
/// The topic the Kafka workload produces to, and its partitions.
pub const TOPIC: &str = "llm.telemetry";

/// The member holding the clients, the alert receivers and the harness itself.
pub const CLIENT: &str = "client";

/// The network member (and file name stem) of node `n`.
pub fn node_member(n: usize) -> String {
    format!("node-{n}")
}

/// The network member of router `r`.
pub fn router_member(r: usize) -> String {
    format!("router-{r}")
}

/// One program run in one member's namespace, restartable with the same arguments.
struct Process {
    member: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn start(&mut self, network: &Network) -> Result<()> {
        if self.child.is_some() {
            bail!("{} is running", self.member);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = network
            .command(&self.member, &self.program.display().to_string())
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.member))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let Some(child) = &self.child else {
            bail!("{} is not running", self.member)
        };
        // SAFETY: kill(2) on the pid of a child this process has not reaped.
        if unsafe { libc::kill(child.id() as libc::pid_t, signal) } != 0 {
            bail!(
                "signal {signal} to {}: {}",
                self.member,
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process has exited by itself (it is then forgotten).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }
}

/// Every process of a run, and the run's directory (logs, volumes, clock files).
pub struct Processes {
    dir: PathBuf,
    nodes: BTreeMap<usize, Process>,
    routers: Vec<Process>,
    broker: Process,
    volumes: Vec<PathBuf>,
}

/// How the processes are configured.
pub struct Layout {
    pub sentinel: PathBuf,
    pub broker: PathBuf,
    /// Nodes started at first; one more is kept as the spare membership changes add.
    pub nodes: usize,
    pub routers: usize,
    pub shards: u32,
    pub replicas: u32,
    /// The routers' log filter (`SENTINEL_LOG__LEVEL`).
    pub router_log: String,
}

impl Processes {
    /// Prepares (does not start) the processes of `layout` on `network`, which already
    /// holds members `node-<n>` (one more than `layout.nodes`), `router-<n>` and `broker`.
    pub fn new(layout: &Layout, network: &Network, dir: &Path) -> Result<Processes> {
        // Every node started at first is a seed of every node and router, as the
        // StatefulSet's pods 0 to 2 are: a node that lost its data asks them all before
        // it would create a cluster.
        let seeds: Vec<String> = (0..layout.nodes)
            .map(|n| format!("{}:{NODE_GRPC}", network.address(&node_member(n))))
            .collect();
        let seeds = format!("[{}]", seeds.join(", "));
        let mut processes = Processes {
            dir: dir.to_owned(),
            nodes: BTreeMap::new(),
            routers: Vec::new(),
            broker: Process {
                member: "broker".into(),
                program: layout.broker.clone(),
                args: broker_args(network),
                env: vec![("RUST_LOG".into(), "warn".into())],
                log: dir.join("broker.log"),
                child: None,
            },
            volumes: Vec::new(),
        };
        for n in 0..=layout.nodes {
            let member = node_member(n);
            let address = network.address(&member);
            let data = dir.join(&member);
            processes.mount_volume(&data)?;
            let clock = processes.clock_file(n);
            std::fs::write(&clock, "+0\n")?;
            let mut env = clock_env(&clock);
            env.extend([
                ("SENTINEL_NODE__ID".into(), n.to_string()),
                (
                    "SENTINEL_NODE__LISTEN".into(),
                    format!("{address}:{NODE_GRPC}"),
                ),
                (
                    "SENTINEL_NODE__DATA_DIR".into(),
                    data.join("data").display().to_string(),
                ),
                ("SENTINEL_NODE__SEEDS".into(), seeds.clone()),
                (
                    "SENTINEL_HTTP__LISTEN".into(),
                    format!("{address}:{NODE_HTTP}"),
                ),
                ("SENTINEL_CLUSTER__SHARDS".into(), layout.shards.to_string()),
                (
                    "SENTINEL_CLUSTER__REPLICAS".into(),
                    layout.replicas.to_string(),
                ),
                ("SENTINEL_SECURITY__INSECURE".into(), "true".into()),
                ("SENTINEL_LOG__LEVEL".into(), "info,openraft=warn".into()),
                // Snapshots and log purges every few seconds, so that a replica cut off
                // for a while catches up by snapshot, and a full disk bites at once.
                (
                    "SENTINEL_RAFT__SNAPSHOT_EVERY_ENTRIES".into(),
                    SNAPSHOT_EVERY.to_string(),
                ),
                // Retention purges during every clock jump, so that a jump past the
                // retention period would delete what it should not, if it could.
                (
                    "SENTINEL_RETENTION__PURGE_EVERY_S".into(),
                    PURGE_EVERY_S.to_string(),
                ),
            ]);
            processes.nodes.insert(
                n,
                Process {
                    member,
                    program: layout.sentinel.clone(),
                    args: vec!["node".into()],
                    env,
                    log: dir.join(format!("{}.log", node_member(n))),
                    child: None,
                },
            );
        }
        for r in 0..layout.routers {
            let member = router_member(r);
            let address = network.address(&member);
            processes.routers.push(Process {
                member: member.clone(),
                program: layout.sentinel.clone(),
                args: vec!["router".into()],
                env: vec![
                    ("SENTINEL_ROUTER__SEEDS".into(), seeds.clone()),
                    (
                        "SENTINEL_HTTP__LISTEN".into(),
                        format!("{address}:{ROUTER_HTTP}"),
                    ),
                    (
                        "SENTINEL_GRPC__LISTEN".into(),
                        format!("{address}:{ROUTER_GRPC}"),
                    ),
                    ("SENTINEL_SECURITY__INSECURE".into(), "true".into()),
                    (
                        "SENTINEL_KAFKA__BROKERS".into(),
                        format!("{}:{BROKER}", network.address("broker")),
                    ),
                    ("SENTINEL_KAFKA__TOPICS".into(), TOPIC.into()),
                    ("SENTINEL_LOG__LEVEL".into(), layout.router_log.clone()),
                ],
                log: dir.join(format!("{member}.log")),
                child: None,
            });
        }
        Ok(processes)
    }

    /// Mounts a tmpfs of `VOLUME` at `path` (unmounted on drop).
    fn mount_volume(&mut self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path)?;
        let done = Command::new("mount")
            .args(["-t", "tmpfs", "-o", VOLUME, "tmpfs"])
            .arg(path)
            .output()
            .context("running mount")?;
        if !done.status.success() {
            bail!(
                "mount tmpfs at {}: {}",
                path.display(),
                String::from_utf8_lossy(&done.stderr).trim()
            );
        }
        self.volumes.push(path.to_owned());
        Ok(())
    }

    /// Adds `env` to every node's environment (for its next start).
    pub fn add_node_env(&mut self, env: &[(String, String)]) {
        for node in self.nodes.values_mut() {
            node.env.extend(env.iter().cloned());
        }
    }

    pub fn start_broker(&mut self, network: &Network) -> Result<()> {
        self.broker.start(network)
    }

    pub fn start_node(&mut self, n: usize, network: &Network) -> Result<()> {
        self.node(n)?.start(network)
    }

    pub fn start_router(&mut self, r: usize, network: &Network) -> Result<()> {
        self.routers[r].start(network)
    }

    fn node(&mut self, n: usize) -> Result<&mut Process> {
        self.nodes
            .get_mut(&n)
            .with_context(|| format!("no node {n}"))
    }

    /// SIGKILL to node `n`.
    pub fn kill_node(&mut self, n: usize) -> Result<()> {
        self.node(n)?.kill();
        Ok(())
    }

    pub fn kill_router(&mut self, r: usize) {
        self.routers[r].kill();
    }

    /// SIGSTOP (`pause`) or SIGCONT to node `n`.
    pub fn pause_node(&mut self, n: usize, pause: bool) -> Result<()> {
        self.node(n)?
            .signal(if pause { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// SIGTERM to node `n`, waiting for it to exit; its status.
    pub fn terminate_node(&mut self, n: usize) -> Result<std::process::ExitStatus> {
        let process = self.node(n)?;
        process.signal(libc::SIGTERM)?;
        let mut child = process.child.take().expect("signalled, so running");
        Ok(child.wait()?)
    }

    /// How many routers the run has.
    pub fn routers(&self) -> usize {
        self.routers.len()
    }

    /// Whether node `n` has a live process.
    pub fn node_running(&self, n: usize) -> bool {
        self.nodes.get(&n).is_some_and(|p| p.child.is_some())
    }

    /// Node `n`'s exit status if it has exited by itself (it is then forgotten).
    pub fn reap_node(&mut self, n: usize) -> Option<std::process::ExitStatus> {
        self.nodes.get_mut(&n)?.exited()
    }

    /// Processes that exited by themselves since the last call, with their status.
    pub fn exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let all = self
            .nodes
            .values_mut()
            .chain(self.routers.iter_mut())
            .chain([&mut self.broker]);
        all.filter_map(|p| p.exited().map(|s| (p.member.clone(), s)))
            .collect()
    }

    /// Moves node `n`'s wall clock to `seconds` from the true time.
    pub fn set_clock(&self, n: usize, seconds: i64) -> Result<()> {
        let path = self.clock_file(n);
        std::fs::write(&path, format!("{seconds:+}\n"))
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Fills node `n`'s data volume until the file system refuses more.
    pub fn fill_volume(&self, n: usize) -> Result<u64> {
        let mut filler = File::create(self.filler(n))?;
        let block = vec![0u8; 1 << 20];
        let mut written = 0u64;
        while filler.write_all(&block).is_ok() {
            written += block.len() as u64;
        }
        let _ = filler.flush();
        Ok(written)
    }

    /// Frees what `fill_volume` took.
    pub fn free_volume(&self, n: usize) -> Result<()> {
        match std::fs::remove_file(self.filler(n)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The file holding node `n`'s clock offset (libfaketime's timestamp file).
    fn clock_file(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{}.faketime", node_member(n)))
    }

    fn filler(&self, n: usize) -> PathBuf {
        self.dir.join(node_member(n)).join("filler")
    }

    /// Deletes node `n`'s data (it must not be running).
    pub fn wipe(&self, n: usize) -> Result<()> {
        let data = self.dir.join(node_member(n)).join("data");
        match std::fs::remove_dir_all(&data) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The last `lines` lines of every log, for a failure message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let logs = self
            .nodes
            .values()
            .chain(&self.routers)
            .chain([&self.broker]);
        for process in logs {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out += &format!("--- {}\n", process.log.display());
            for line in tail.iter().rev() {
                out += line;
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for process in self
            .nodes
            .values_mut()
            .chain(self.routers.iter_mut())
            .chain([&mut self.broker])
        {
            // A paused process must be let run to die of SIGKILL promptly.
            let _ = process.signal(libc::SIGCONT);
            process.kill();
        }
        for volume in &self.volumes {
            let _ = Command::new("umount").arg("--lazy").arg(volume).output();
        }
    }
}

/// The broker's arguments: in-memory storage, listening on its member's address.
fn broker_args(network: &Network) -> Vec<String> {
    let url = format!("tcp://{}:{BROKER}", network.address("broker"));
    [
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
        "--storage-engine",
        "memory://tansu/",
        "--cluster-id",
        "sentinel-jepsen",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The environment that gives a process the wall clock in `file` (an offset such as
/// `+300`, read again at most once a second); its monotonic clock stays true.
fn clock_env(file: &Path) -> Vec<(String, String)> {
    vec![
        ("LD_PRELOAD".into(), FAKETIME_LIB.into()),
        ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
        ("FAKETIME_CACHE_DURATION".into(), "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ]
}

/// Fails unless the machine has what the processes need.
pub fn check_machine() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the harness needs root: it makes network namespaces and mounts");
    }
    if !Path::new(FAKETIME_LIB).exists() {
        bail!("{FAKETIME_LIB} is missing (Debian package libfaketime)");
    }
    for tool in ["ip", "nft", "mount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()?;
        if !found.status.success() {
            bail!("{tool} is missing (Debian packages iproute2, nftables, mount)");
        }
    }
    Ok(())
}
