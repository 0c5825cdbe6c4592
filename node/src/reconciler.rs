//! The reconciler: every `raft.reconcile_ms`, moves shard replicas and leaderships to
//! where placement wants them, keeps the metadata group's members and voters in line with
//! the registry, and marks long-silent nodes down. What to do is decided by `steps`; this
//! module carries it out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use sentinel_proto::v1::{CampaignRequest, LocalStatusRequest};

use crate::calls::{change, client, meta_metrics, propose, STATUS_TIMEOUT};
use crate::error::RoundError;
use crate::handover::HandOverTiming;
use crate::host::{known_leader, leads, Host, Replica};
use crate::metrics::NodeMetrics;
use crate::placement::Placement;
use crate::registry::{NodeState, Registry, RegistryCommand};
use crate::status::{cluster_status, shards_on};
use crate::steps::{
    holds_all, next_metadata_step, next_shard_step, overdue, GroupView, MetadataStep, ShardStep,
};

/// Moves replicas and leaderships toward placement, one step per group per round.
pub struct Reconciler {
    host: Arc<Host>,
    metrics: NodeMetrics,
    last_campaign: HashMap<u32, Instant>,
    strays: HashMap<u32, u32>,
    /// Nodes that did not answer the metadata leader, since when.
    silent_since: HashMap<u64, Instant>,
    /// When the metadata leader last asked every node.
    probed: Option<Instant>,
}

/// Rounds a replica must look stray before it is dropped.
const STRAY_ROUNDS: u32 = 3;
/// How long one step of a round may take. A membership change answers only once it is
/// committed, and a group that lost its quorum never commits it: waiting would stop the
/// reconciliation of every other group here. openraft goes on with a change given up on.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the metadata leader asks every node whether it is up.
const PROBE_EVERY: Duration = Duration::from_secs(5);

impl Reconciler {
    /// A reconciler for `host`.
    pub fn new(host: Arc<Host>, metrics: NodeMetrics) -> Reconciler {
        Reconciler {
            host,
            metrics,
            last_campaign: HashMap::new(),
            strays: HashMap::new(),
            silent_since: HashMap::new(),
            probed: None,
        }
    }

    /// Runs one round over the metadata group and every local replica.
    pub async fn round(&mut self) {
        let registry = self.host.registry();
        if registry.shards == 0 {
            return;
        }
        let placement = Placement::compute(&registry);
        for replica in self.host.replicas() {
            replica.end_hand_over(self.host.id, false);
        }
        if leads(&meta_metrics(&self.host), self.host.id) {
            if let Err(e) = bounded(STEP_TIMEOUT, self.metadata()).await {
                tracing::info!(error = %e, "metadata reconciliation step failed");
            }
        }
        for replica in self.host.replicas() {
            if let Err(e) = bounded(STEP_TIMEOUT, self.step(&replica, &placement)).await {
                tracing::info!(shard = replica.shard, error = %e, "reconciliation step failed");
            }
        }
    }

    /// One replica's step: its leader's work, or dropping it once placement moved it away.
    async fn step(&mut self, replica: &Replica, placement: &Placement) -> Result<(), RoundError> {
        let metrics = replica.metrics();
        if leads(&metrics, self.host.id) {
            self.strays.remove(&replica.shard);
            self.lead(replica, &metrics, placement).await
        } else if !placement.holds(replica.shard, self.host.id) {
            self.maybe_drop(replica, &metrics, placement).await
        } else {
            self.strays.remove(&replica.shard);
            Ok(())
        }
    }

    fn action(&self, action: &str) {
        self.metrics
            .rebalance_actions
            .with_label_values(&[action])
            .inc();
    }

    /// The metadata leader's round: every registered node a member, the right voters, and
    /// drained nodes removed.
    async fn metadata(&mut self) -> Result<(), RoundError> {
        let registry = self.host.registry();
        self.watch_nodes(&registry).await?;
        let host = &self.host;
        let view = GroupView::of(&meta_metrics(host));
        let Some(step) = next_metadata_step(&registry, &view) else {
            return Ok(());
        };
        match step {
            MetadataStep::NameCluster => {
                self.action("name_cluster");
                let cluster_id = crate::identity::new_cluster_id(&host.config.node.advertised());
                Ok(propose(host, RegistryCommand::Name { cluster_id }).await?)
            }
            MetadataStep::AddLearners(missing) => {
                self.action("metadata_add_learner");
                let nodes = missing
                    .into_iter()
                    .map(|(id, address)| (id, BasicNode::new(address)))
                    .collect();
                change(&host.meta, ChangeMembers::AddNodes(nodes), true).await
            }
            MetadataStep::ReplaceVoters(voters) => {
                self.action("metadata_voters");
                change(&host.meta, ChangeMembers::ReplaceAllVoters(voters), true).await
            }
            MetadataStep::RemoveMembers(gone) => {
                self.action("metadata_remove");
                change(&host.meta, ChangeMembers::RemoveNodes(gone), true).await
            }
            MetadataStep::LeaveJoint(voters) => {
                self.action("metadata_voters");
                change(&host.meta, ChangeMembers::ReplaceAllVoters(voters), true).await
            }
            MetadataStep::RemoveDrained(draining) => {
                let status = cluster_status(host, false).await;
                for id in draining {
                    if shards_on(&status, id) == 0 {
                        self.action("remove_node");
                        propose(host, RegistryCommand::Remove { id }).await?;
                        tracing::info!(node = id, "decommissioned node removed");
                    }
                }
                Ok(())
            }
        }
    }

    /// The metadata leader asks every node now and then whether it is up: a node down
    /// that answers again is active again; an active node silent for
    /// `cluster.node_down_after_s` is marked down, so its shards re-replicate.
    async fn watch_nodes(&mut self, registry: &Registry) -> Result<(), RoundError> {
        let now = Instant::now();
        if self
            .probed
            .is_some_and(|at| now.duration_since(at) < PROBE_EVERY)
        {
            return Ok(());
        }
        self.probed = Some(now);
        let host = &self.host;
        let calls =
            registry
                .nodes
                .iter()
                .filter(|(&id, _)| id != host.id)
                .map(|(&id, node)| async move {
                    let mut request = tonic::Request::new(LocalStatusRequest { digests: false });
                    request.set_timeout(STATUS_TIMEOUT);
                    let answered = match client(host, &node.address) {
                        Ok(mut peer) => peer.local_status(request).await.is_ok(),
                        Err(_) => false,
                    };
                    (id, answered)
                });
        let answers = futures::future::join_all(calls).await;
        self.silent_since
            .retain(|id, _| registry.nodes.contains_key(id));
        for (id, answered) in answers {
            if answered {
                self.silent_since.remove(&id);
                let node = &registry.nodes[&id];
                if node.state == NodeState::Down {
                    self.action("node_up");
                    tracing::info!(node = id, "a node marked down answers again");
                    let address = node.address.clone();
                    propose(host, RegistryCommand::Register { id, address }).await?;
                }
            } else {
                self.silent_since.entry(id).or_insert(now);
            }
        }
        let down_after = Duration::from_secs(host.config.cluster.node_down_after_s);
        let active = registry.active();
        if let Some(id) = overdue(
            &active,
            host.id,
            &self.silent_since,
            now,
            down_after,
            registry.replicas,
        ) {
            self.action("mark_down");
            tracing::warn!(
                node = id,
                after_s = down_after.as_secs(),
                "a node stayed unreachable: marking it down, its shards move to the others"
            );
            propose(host, RegistryCommand::MarkDown { id }).await?;
        }
        Ok(())
    }

    /// A shard leader's round: add learners, promote caught-up ones, remove replicas
    /// placement no longer wants, hand leadership to the preferred replica.
    async fn lead(
        &mut self,
        replica: &Replica,
        metrics: &RaftMetrics<u64, BasicNode>,
        placement: &Placement,
    ) -> Result<(), RoundError> {
        let shard = replica.shard;
        if replica.hand_over.in_progress() {
            // Any change now would be a write that refreshes the voters' leases.
            return Ok(());
        }
        let view = GroupView::of(metrics);
        let addressable = |node| self.host.address(node).is_some();
        let Some(step) =
            next_shard_step(self.host.id, placement.replicas(shard), &view, addressable)
        else {
            return Ok(());
        };
        let raft = &replica.raft;
        match step {
            ShardStep::AddLearner(node) => {
                let Some(address) = self.host.address(node) else {
                    return Ok(());
                };
                self.action("add_learner");
                raft.add_learner(node, BasicNode::new(address), false)
                    .await
                    .map(|_| ())
                    .map_err(RoundError::raft)
            }
            ShardStep::Promote(learners) => {
                self.action("promote");
                change(raft, ChangeMembers::AddVoterIds(learners), false).await
            }
            ShardStep::RemoveVoters(extra) => {
                self.action("remove_voter");
                change(raft, ChangeMembers::RemoveVoters(extra), false).await
            }
            ShardStep::RemoveLearners(stray) => {
                self.action("remove_learner");
                change(raft, ChangeMembers::RemoveNodes(stray), false).await
            }
            ShardStep::Campaign(target) => self.campaign(replica, target).await,
            ShardStep::LeaveJoint(voters) => {
                self.action("leave_joint");
                change(raft, ChangeMembers::ReplaceAllVoters(voters), false).await
            }
        }
    }

    /// Hands the leadership to `target`, which holds every entry (a voter grants its vote
    /// only to a log at least as long as its own): this node goes quiet and asks `target`
    /// to stand once every voter's lease has run out (`handover`); at most once per
    /// hand-over's length per shard.
    async fn campaign(&mut self, replica: &Replica, target: u64) -> Result<(), RoundError> {
        let shard = replica.shard;
        let timing = HandOverTiming::of(&self.host.config.raft);
        if self
            .last_campaign
            .get(&shard)
            .is_some_and(|at| at.elapsed() < timing.give_up_after)
        {
            return Ok(());
        }
        let Some(address) = self.host.address(target) else {
            return Ok(());
        };
        let mut peer = client(&self.host, &address)?;
        if !replica.begin_hand_over(tokio::time::Instant::now() + timing.give_up_after) {
            return Ok(());
        }
        self.last_campaign.insert(shard, Instant::now());
        self.action("transfer_leader");
        let asked = peer
            .campaign(CampaignRequest {
                group: shard,
                hand_over: false,
                delay_ms: timing.stand_after.as_millis() as u32,
            })
            .await;
        if asked.is_err() {
            replica.end_hand_over(self.host.id, true);
        }
        asked?;
        Ok(())
    }

    /// Drops a replica placement no longer wants once the group no longer counts it: as
    /// its leader reports, or — when this replica knows no leader (a member removed
    /// before it heard of it stands for election alone) — as the replica placement
    /// prefers for the shard reports.
    async fn maybe_drop(
        &mut self,
        replica: &Replica,
        metrics: &RaftMetrics<u64, BasicNode>,
        placement: &Placement,
    ) -> Result<(), RoundError> {
        let shard = replica.shard;
        let known = known_leader(metrics);
        let Some(asked) = known.or_else(|| {
            placement
                .replicas(shard)
                .iter()
                .copied()
                .find(|&n| n != self.host.id)
        }) else {
            return Ok(());
        };
        let Some(address) = self.host.address(asked) else {
            return Ok(());
        };
        let report = client(&self.host, &address)?
            .local_status(LocalStatusRequest { digests: false })
            .await?
            .into_inner();
        let counted = report
            .replicas
            .iter()
            .find(|r| {
                r.group == shard && r.leader.is_some() && (known.is_none() || r.leader == known)
            })
            .map(|r| r.voters.contains(&self.host.id) || r.learners.contains(&self.host.id));
        if counted != Some(false) {
            self.strays.remove(&shard);
            return Ok(());
        }
        let strikes = self.strays.entry(shard).or_default();
        *strikes += 1;
        if *strikes >= STRAY_ROUNDS {
            self.strays.remove(&shard);
            self.action("drop_replica");
            self.host.drop_replica(shard).await;
        }
        Ok(())
    }
}

/// `step`, given up on after `limit`.
async fn bounded(
    limit: Duration,
    step: impl Future<Output = Result<(), RoundError>>,
) -> Result<(), RoundError> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or(Err(RoundError::TimedOut(limit)))
}

/// Hands the leaderships held here to other caught-up voters before this node stops, as
/// [`Reconciler::campaign`] does but with every successor standing whatever its steadiness.
pub async fn hand_over(host: &Host) {
    let timing = HandOverTiming::of(&host.config.raft);
    let deadline = Instant::now() + timing.give_up_after;
    for replica in host.replicas() {
        let metrics = replica.metrics();
        if !leads(&metrics, host.id) {
            continue;
        }
        let successor = metrics
            .membership_config
            .membership()
            .voter_ids()
            .find(|&n| n != host.id && holds_all(&metrics, n));
        let Some(address) = successor.and_then(|n| host.address(n)) else {
            continue;
        };
        if let Ok(mut peer) = client(host, &address) {
            replica.begin_hand_over(tokio::time::Instant::now() + timing.give_up_after);
            let mut request = tonic::Request::new(CampaignRequest {
                group: replica.shard,
                hand_over: true,
                delay_ms: timing.stand_after.as_millis() as u32,
            });
            request.set_timeout(STATUS_TIMEOUT);
            if let Err(status) = peer.campaign(request).await {
                replica.end_hand_over(host.id, true);
                tracing::info!(shard = replica.shard, %status, "leadership hand-over refused");
            }
        }
    }
    while Instant::now() < deadline
        && host.replicas().iter().any(|r| {
            leads(&r.metrics(), host.id)
                && r.metrics()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count()
                    > 1
        })
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_that_never_finishes_is_given_up_on() {
        let limit = Duration::from_millis(20);
        let never = bounded(limit, std::future::pending()).await;
        assert!(
            matches!(never, Err(RoundError::TimedOut(l)) if l == limit),
            "{never:?}"
        );
        assert!(bounded(limit, async { Ok(()) }).await.is_ok());
    }
}
