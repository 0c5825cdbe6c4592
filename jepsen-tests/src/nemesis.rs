//! The nemesis: applies a schedule's faults to the network and the processes, and
//! remembers what it broke so that `heal_all` can repair everything.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, Result};
use sentinel_local::rng::Rng;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::{ClusterStatusReply, ClusterStatusRequest, DecommissionQuery};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::net::Network;
use crate::processes::{node_member, router_member, Processes, CLIENT, NODE_GRPC, ROUTER_GRPC};
use crate::schedule::{Cut, Fault, Target};

/// How long a decommission may take before the nemesis gives up on it.
const DECOMMISSION_LIMIT: Duration = Duration::from_secs(120);

/// The faults in force and the means to make more.
pub struct Nemesis {
    pub network: Network,
    pub processes: Processes,
    /// Nodes started at first (ordinals below); the spare has ordinal `nodes`.
    pub nodes: usize,
    rng: Rng,
    killed: BTreeSet<usize>,
    paused: BTreeSet<usize>,
    skewed: BTreeSet<usize>,
    filled: BTreeSet<usize>,
    /// Nodes whose disk has been full: they may stop on the error they hit, even after
    /// the space is back.
    disk_victims: BTreeSet<usize>,
    routers_killed: BTreeSet<usize>,
    partitioned: bool,
}

impl Nemesis {
    pub fn new(network: Network, processes: Processes, nodes: usize, seed: u64) -> Nemesis {
        Nemesis {
            network,
            processes,
            nodes,
            rng: Rng::from_stream(seed, 0x6e65_6d32),
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            skewed: BTreeSet::new(),
            filled: BTreeSet::new(),
            disk_victims: BTreeSet::new(),
            routers_killed: BTreeSet::new(),
            partitioned: false,
        }
    }

    /// Node ordinals that may be running (the spare too once started).
    fn ordinals(&self) -> Vec<usize> {
        (0..=self.nodes)
            .filter(|&n| n < self.nodes || self.processes.node_running(n))
            .collect()
    }

    /// The gRPC address of node `n`.
    pub fn node_address(&self, n: usize) -> String {
        format!("{}:{NODE_GRPC}", self.network.address(&node_member(n)))
    }

    /// The node ordinal registered at `address`.
    fn ordinal_at(&self, address: &str) -> Option<usize> {
        (0..=self.nodes).find(|&n| self.node_address(n) == address)
    }

    /// The cluster as the first running, unpaused node that answers sees it.
    pub async fn status(&self, digests: bool) -> Option<ClusterStatusReply> {
        for n in self.ordinals() {
            if !self.processes.node_running(n) || self.paused.contains(&n) {
                continue;
            }
            let Ok(channel) = Channel::from_shared(format!("http://{}", self.node_address(n)))
            else {
                continue;
            };
            let mut client =
                NodeClient::new(channel.timeout(Duration::from_secs(10)).connect_lazy());
            if let Ok(reply) = client
                .cluster_status(ClusterStatusRequest { digests })
                .await
            {
                return Some(reply.into_inner());
            }
        }
        None
    }

    /// The ordinal `target` names now.
    async fn resolve(&mut self, target: Target) -> usize {
        match target {
            Target::Node(n) => n,
            Target::MostLeader => {
                let mut led: BTreeMap<usize, usize> = BTreeMap::new();
                if let Some(status) = self.status(false).await {
                    let addresses: BTreeMap<u64, String> = status
                        .nodes
                        .iter()
                        .map(|n| (n.id, n.address.clone()))
                        .collect();
                    for shard in &status.shards {
                        if let Some(ordinal) = shard
                            .leader
                            .and_then(|l| addresses.get(&l))
                            .and_then(|a| self.ordinal_at(a))
                        {
                            *led.entry(ordinal).or_default() += 1;
                        }
                    }
                }
                led.into_iter()
                    .max_by_key(|(n, count)| (*count, std::cmp::Reverse(*n)))
                    .map_or(0, |(n, _)| n)
            }
        }
    }

    /// Applies `fault`; what was done, for the history.
    pub async fn apply(&mut self, fault: Fault) -> Result<Value> {
        Ok(match fault {
            Fault::Partition { cut } => {
                let cuts = self.cuts(cut).await;
                self.network.set_grudge(&grudge(&cuts))?;
                self.partitioned = true;
                json!({"cuts": cuts})
            }
            Fault::Heal => {
                self.network.set_grudge(&BTreeMap::new())?;
                self.partitioned = false;
                json!({})
            }
            Fault::Kill { target } => {
                let n = self.resolve(target).await;
                self.processes.kill_node(n)?;
                self.killed.insert(n);
                json!({"node": n})
            }
            Fault::Wipe { target } => {
                let n = self.resolve(target).await;
                self.processes.kill_node(n)?;
                self.processes.wipe(n)?;
                self.killed.insert(n);
                json!({"node": n})
            }
            Fault::Restart => {
                let restarted = std::mem::take(&mut self.killed);
                for &n in &restarted {
                    self.processes.start_node(n, &self.network)?;
                }
                json!({"nodes": restarted})
            }
            Fault::Pause { target } => {
                let n = self.resolve(target).await;
                if self.processes.node_running(n) {
                    self.processes.pause_node(n, true)?;
                    self.paused.insert(n);
                }
                json!({"node": n})
            }
            Fault::Resume => {
                let resumed = std::mem::take(&mut self.paused);
                for &n in &resumed {
                    if self.processes.node_running(n) {
                        self.processes.pause_node(n, false)?;
                    }
                }
                json!({"nodes": resumed})
            }
            Fault::ClockJump { target, seconds } => {
                let n = self.resolve(target).await;
                self.processes.set_clock(n, seconds)?;
                self.skewed.insert(n);
                json!({"node": n, "seconds": seconds})
            }
            Fault::ClockReset => {
                let reset = std::mem::take(&mut self.skewed);
                for &n in &reset {
                    self.processes.set_clock(n, 0)?;
                }
                json!({"nodes": reset})
            }
            Fault::DiskFull { target } => {
                let n = self.resolve(target).await;
                let bytes = self.processes.fill_volume(n)?;
                self.filled.insert(n);
                self.disk_victims.insert(n);
                json!({"node": n, "filled_bytes": bytes})
            }
            Fault::DiskFree => {
                let freed = std::mem::take(&mut self.filled);
                let mut restarted = BTreeMap::new();
                for &n in &freed {
                    self.processes.free_volume(n)?;
                    // A node that stopped on the full disk starts again, as its pod would.
                    let status = self.processes.reap_node(n).map(|s| s.to_string());
                    if !self.processes.node_running(n) && !self.killed.contains(&n) {
                        self.processes.start_node(n, &self.network)?;
                        restarted.insert(n, status.unwrap_or_else(|| "exited".into()));
                    }
                }
                json!({"nodes": freed, "restarted_after_exit": restarted})
            }
            Fault::ScaleOut => {
                let spare = self.nodes;
                if !self.processes.node_running(spare) {
                    self.processes.start_node(spare, &self.network)?;
                }
                json!({"node": spare})
            }
            Fault::Decommission => self.decommission_spare().await?,
            Fault::KillRouter { router } => {
                self.processes.kill_router(router);
                self.routers_killed.insert(router);
                json!({"router": router})
            }
            Fault::RestartRouter => {
                let restarted = std::mem::take(&mut self.routers_killed);
                for &r in &restarted {
                    self.processes.start_router(r, &self.network)?;
                }
                json!({"routers": restarted})
            }
        })
    }

    /// Processes that exited by themselves since the last call: member, status, and
    /// whether it was expected. A node whose disk has been full may stop on the error it
    /// hit; it is started again at once (once its disk has space), as its pod would be.
    pub fn exits(&mut self) -> Result<Vec<(String, String, bool)>> {
        let mut exits = Vec::new();
        for (member, status) in self.processes.exited() {
            let victim = self
                .disk_victims
                .iter()
                .copied()
                .find(|&n| node_member(n) == member);
            if let Some(n) = victim.filter(|n| !self.filled.contains(n) && !self.killed.contains(n))
            {
                self.processes.start_node(n, &self.network)?;
            }
            exits.push((member, status.to_string(), victim.is_some()));
        }
        Ok(exits)
    }

    /// Repairs every fault in force; the repairs made.
    pub async fn heal_all(&mut self) -> Result<Vec<(Fault, Value)>> {
        let mut done = Vec::new();
        let repairs = [
            (self.partitioned, Fault::Heal),
            (!self.paused.is_empty(), Fault::Resume),
            (!self.killed.is_empty(), Fault::Restart),
            (!self.skewed.is_empty(), Fault::ClockReset),
            (!self.filled.is_empty(), Fault::DiskFree),
            (!self.routers_killed.is_empty(), Fault::RestartRouter),
        ];
        for (needed, repair) in repairs {
            if needed {
                done.push((repair, self.apply(repair).await?));
            }
        }
        Ok(done)
    }

    /// The pairs of member groups `cut` separates (a bridge's middle node is in none).
    async fn cuts(&mut self, cut: Cut) -> Vec<(Vec<String>, Vec<String>)> {
        let names = |ordinals: &[usize]| ordinals.iter().map(|&n| node_member(n)).collect();
        let mut nodes = self.ordinals();
        match cut {
            Cut::Isolate(target) => {
                let n = self.resolve(target).await;
                nodes.retain(|&m| m != n);
                vec![(names(&[n]), names(&nodes))]
            }
            Cut::Halves | Cut::Bridge => {
                self.shuffle(&mut nodes);
                let bridge = usize::from(cut == Cut::Bridge);
                let rest = nodes.split_off(bridge);
                let (a, b) = rest.split_at(rest.len() / 2);
                vec![(names(a), names(b))]
            }
            Cut::Routers => (0..self.processes.routers())
                .map(|r| {
                    self.shuffle(&mut nodes);
                    (vec![router_member(r)], names(&nodes[..nodes.len() / 2]))
                })
                .collect(),
            Cut::Sinks => {
                self.shuffle(&mut nodes);
                vec![(names(&nodes[..nodes.len() / 2]), vec![CLIENT.to_owned()])]
            }
        }
    }

    /// Puts `items` in a random order.
    fn shuffle(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
    }

    /// Drains the spare node through a router, stops it and deletes its data.
    async fn decommission_spare(&mut self) -> Result<Value> {
        let spare = self.nodes;
        if !self.processes.node_running(spare) {
            return Ok(json!({"skipped": "the spare node is not running"}));
        }
        let address = self.node_address(spare);
        let deadline = tokio::time::Instant::now() + DECOMMISSION_LIMIT;
        let router = format!(
            "http://{}:{ROUTER_GRPC}",
            self.network.address(&router_member(0))
        );
        let mut client = SentinelClient::new(
            Channel::from_shared(router)?
                .timeout(Duration::from_secs(30))
                .connect_lazy(),
        );
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            let member = self
                .status(false)
                .await
                .and_then(|s| s.nodes.iter().find(|n| n.address == address).map(|n| n.id));
            let Some(member) = member else {
                self.processes.terminate_node(spare)?;
                self.processes.wipe(spare)?;
                return Ok(json!({"node": spare, "left": true}));
            };
            match client
                .decommission(DecommissionQuery { node_id: member })
                .await
            {
                Ok(reply) => {
                    last = format!("{} shards remaining", reply.into_inner().shards_remaining)
                }
                Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        bail!("node {spare} did not leave within {DECOMMISSION_LIMIT:?}; last answer: {last}")
    }
}

/// Who drops whose packets so that each pair of `cuts` cannot talk (both ways).
fn grudge(cuts: &[(Vec<String>, Vec<String>)]) -> BTreeMap<String, BTreeSet<String>> {
    let mut grudge: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in cuts {
        for (side, other) in [(a, b), (b, a)] {
            for member in side {
                grudge
                    .entry(member.clone())
                    .or_default()
                    .extend(other.iter().cloned());
            }
        }
    }
    grudge
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pair_of_a_cut_is_blocked_both_ways_and_no_one_else() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cuts = [
            (names(&["node-1", "node-2"]), names(&["node-3", "node-4"])),
            (names(&["router-0"]), names(&["node-1"])),
        ];
        let grudge = grudge(&cuts);
        assert!(!grudge.contains_key("node-0"));
        assert_eq!(
            grudge["node-1"],
            BTreeSet::from(["node-3", "node-4", "router-0"].map(String::from))
        );
        assert_eq!(
            grudge["node-4"],
            BTreeSet::from(["node-1", "node-2"].map(String::from))
        );
        assert_eq!(grudge["router-0"], BTreeSet::from(["node-1".to_owned()]));
    }
}
