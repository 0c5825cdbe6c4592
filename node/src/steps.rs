//! The reconciler's decisions, as pure functions of what a round sees: the next step that
//! brings a shard group or the metadata group toward placement, and which node to mark
//! down. `reconciler` only executes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use openraft::{BasicNode, RaftMetrics};

use crate::registry::{NodeState, Registry};

/// Entries a learner may be behind the leader and still count as caught up.
pub const CAUGHT_UP_ENTRIES: u64 = 64;

/// A Raft group's membership and its members' progress, as its leader sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The voters a half-done membership change (a joint configuration) goes to.
    pub joint_to: Option<BTreeSet<u64>>,
    /// Voters.
    pub voters: BTreeSet<u64>,
    /// Learners.
    pub learners: BTreeSet<u64>,
    /// Members within [`CAUGHT_UP_ENTRIES`] of the leader's log (the leader itself too).
    pub caught_up: BTreeSet<u64>,
    /// Members known to hold the leader's whole log.
    pub holds_all: BTreeSet<u64>,
}

impl GroupView {
    /// The view in a leader's metrics.
    pub fn of(metrics: &RaftMetrics<u64, BasicNode>) -> GroupView {
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        let members = voters.iter().chain(&learners).copied();
        GroupView {
            joint_to: match membership.get_joint_config().as_slice() {
                [_, .., last] => Some(last.clone()),
                _ => None,
            },
            caught_up: members.clone().filter(|&n| caught_up(metrics, n)).collect(),
            holds_all: members.filter(|&n| holds_all(metrics, n)).collect(),
            voters,
            learners,
        }
    }
}

/// Whether the leader knows `node` holds all but the last few entries.
pub fn caught_up(metrics: &RaftMetrics<u64, BasicNode>, node: u64) -> bool {
    if metrics.id == node {
        return true;
    }
    let last = metrics.last_log_index.unwrap_or(0);
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&node))
        .and_then(|matched| *matched)
        .is_some_and(|matched| last.saturating_sub(matched.index) <= CAUGHT_UP_ENTRIES)
}

/// Whether the leader knows `node` holds its whole log.
pub fn holds_all(metrics: &RaftMetrics<u64, BasicNode>, node: u64) -> bool {
    let last = metrics.last_log_index;
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&node))
        .is_some_and(|matched| matched.map(|m| m.index) == last)
}

/// One step a shard leader takes toward placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardStep {
    /// Add a wanted node as a learner.
    AddLearner(u64),
    /// Make caught-up wanted learners voters.
    Promote(BTreeSet<u64>),
    /// Remove voters placement no longer wants (a leader removing itself steps down).
    RemoveVoters(BTreeSet<u64>),
    /// Remove learners placement does not want.
    RemoveLearners(BTreeSet<u64>),
    /// Ask the preferred replica, which holds the whole log, to stand for election.
    Campaign(u64),
    /// Finish a membership change left half done (its leader lost the leadership or
    /// gave up waiting between the two steps): make these the voters.
    LeaveJoint(BTreeSet<u64>),
}

/// The next step of the leader `own` of a group whose replicas should be `desired` (the
/// preferred leader first), adding only nodes `addressable` says it can reach; `None`
/// when the group is where placement wants it.
pub fn next_shard_step(
    own: u64,
    desired: &[u64],
    group: &GroupView,
    addressable: impl Fn(u64) -> bool,
) -> Option<ShardStep> {
    if desired.is_empty() {
        return None;
    }
    if let Some(to) = &group.joint_to {
        return Some(ShardStep::LeaveJoint(to.clone()));
    }
    if let Some(&node) = desired
        .iter()
        .find(|&&n| !group.voters.contains(&n) && !group.learners.contains(&n) && addressable(n))
    {
        return Some(ShardStep::AddLearner(node));
    }
    let promote: BTreeSet<u64> = desired
        .iter()
        .filter(|n| group.learners.contains(n) && group.caught_up.contains(n))
        .copied()
        .collect();
    if !promote.is_empty() {
        return Some(ShardStep::Promote(promote));
    }
    let extra: BTreeSet<u64> = group
        .voters
        .iter()
        .filter(|n| !desired.contains(n))
        .copied()
        .collect();
    if desired.iter().all(|n| group.voters.contains(n)) && !extra.is_empty() {
        return Some(ShardStep::RemoveVoters(extra));
    }
    let stray: BTreeSet<u64> = group
        .learners
        .iter()
        .filter(|n| !desired.contains(n))
        .copied()
        .collect();
    if !stray.is_empty() {
        return Some(ShardStep::RemoveLearners(stray));
    }
    let preferred = desired[0];
    (preferred != own && group.voters.contains(&preferred) && group.holds_all.contains(&preferred))
        .then_some(ShardStep::Campaign(preferred))
}

/// One step the metadata leader takes toward the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataStep {
    /// Give the cluster its id (a cluster created before ids existed).
    NameCluster,
    /// Add registered nodes that are not members yet, as learners (id → address).
    AddLearners(BTreeMap<u64, String>),
    /// Make these the voters (every one of them caught up).
    ReplaceVoters(BTreeSet<u64>),
    /// Remove members the registry no longer lists.
    RemoveMembers(BTreeSet<u64>),
    /// Remove from the registry those of these draining nodes that hold no shard any more.
    RemoveDrained(Vec<u64>),
    /// Finish a membership change left half done: make these the voters.
    LeaveJoint(BTreeSet<u64>),
}

/// The metadata leader's next step for a registry of a created cluster and the metadata
/// group's `view`; `None` when nothing is to do or the voters are still catching up.
pub fn next_metadata_step(registry: &Registry, view: &GroupView) -> Option<MetadataStep> {
    if let Some(to) = &view.joint_to {
        return Some(MetadataStep::LeaveJoint(to.clone()));
    }
    if registry.cluster_id.is_empty() {
        return Some(MetadataStep::NameCluster);
    }
    let members: BTreeSet<u64> = view.voters.union(&view.learners).copied().collect();
    let missing: BTreeMap<u64, String> = registry
        .nodes
        .iter()
        .filter(|(id, _)| !members.contains(id))
        .map(|(&id, node)| (id, node.address.clone()))
        .collect();
    if !missing.is_empty() {
        return Some(MetadataStep::AddLearners(missing));
    }
    let desired: BTreeSet<u64> = registry.metadata_voters().into_iter().collect();
    if !desired.is_empty() && view.voters != desired {
        let ready = desired
            .iter()
            .all(|n| view.voters.contains(n) || view.caught_up.contains(n));
        return ready.then_some(MetadataStep::ReplaceVoters(desired));
    }
    let gone: BTreeSet<u64> = members
        .iter()
        .filter(|id| !registry.nodes.contains_key(id))
        .copied()
        .collect();
    if !gone.is_empty() {
        return Some(MetadataStep::RemoveMembers(gone));
    }
    let draining: Vec<u64> = registry
        .nodes
        .iter()
        .filter(|(_, node)| node.state == NodeState::Draining)
        .map(|(&id, _)| id)
        .collect();
    (!draining.is_empty() && registry.shards > 0).then_some(MetadataStep::RemoveDrained(draining))
}

/// The active node (not `own`) silent for at least `down_after`, when marking it down
/// leaves at least `replicas` active nodes for its shards to move to.
pub fn overdue(
    active: &[u64],
    own: u64,
    silent_since: &HashMap<u64, Instant>,
    now: Instant,
    down_after: Duration,
    replicas: u32,
) -> Option<u64> {
    if active.len() <= replicas as usize {
        return None;
    }
    active.iter().copied().find(|id| {
        *id != own
            && silent_since
                .get(id)
                .is_some_and(|since| now.saturating_duration_since(*since) >= down_after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::NodeEntry;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// A group of `voters` and `learners`, every member caught up and holding the log
    /// except those in `behind`.
    fn group(voters: &[u64], learners: &[u64], behind: &[u64]) -> GroupView {
        let members: BTreeSet<u64> = voters.iter().chain(learners).copied().collect();
        let ahead: BTreeSet<u64> = members.difference(&set(behind)).copied().collect();
        GroupView {
            joint_to: None,
            voters: set(voters),
            learners: set(learners),
            caught_up: ahead.clone(),
            holds_all: ahead,
        }
    }

    #[test]
    fn a_shard_leader_moves_its_group_to_placement_one_step_at_a_time() {
        use ShardStep::*;
        let anyone = |_| true;
        // (leader, desired replicas, group, next step)
        let cases: Vec<(u64, Vec<u64>, GroupView, Option<ShardStep>)> = vec![
            (1, vec![1, 2, 3], group(&[1, 2, 3], &[], &[]), None),
            (1, vec![], group(&[1], &[], &[]), None),
            (
                1,
                vec![1, 2, 3],
                group(&[1, 2], &[], &[]),
                Some(AddLearner(3)),
            ),
            (
                1,
                vec![1, 2, 3],
                group(&[1], &[2, 3], &[]),
                Some(Promote(set(&[2, 3]))),
            ),
            (
                1,
                vec![1, 2, 3],
                group(&[1], &[2, 3], &[3]),
                Some(Promote(set(&[2]))),
            ),
            (1, vec![1, 2, 3], group(&[1, 2], &[3], &[3]), None),
            // A voter placement moved away goes only once every wanted node votes.
            (1, vec![1, 2, 4], group(&[1, 2, 3], &[4], &[4]), None),
            (
                1,
                vec![1, 2, 4],
                group(&[1, 2, 3, 4], &[], &[]),
                Some(RemoveVoters(set(&[3]))),
            ),
            // The leader itself may be the one to go.
            (
                3,
                vec![1, 2, 4],
                group(&[1, 2, 3, 4], &[], &[]),
                Some(RemoveVoters(set(&[3]))),
            ),
            (
                1,
                vec![1, 2, 3],
                group(&[1, 2, 3], &[5], &[]),
                Some(RemoveLearners(set(&[5]))),
            ),
            // The preferred leader stands only when it holds the whole log.
            (
                2,
                vec![1, 2, 3],
                group(&[1, 2, 3], &[], &[]),
                Some(Campaign(1)),
            ),
            (2, vec![1, 2, 3], group(&[1, 2, 3], &[], &[1]), None),
        ];
        for (own, desired, view, step) in cases {
            assert_eq!(
                next_shard_step(own, &desired, &view, anyone),
                step,
                "leader {own}, desired {desired:?}, {view:?}"
            );
        }
        let joint = GroupView {
            joint_to: Some(set(&[1, 2])),
            ..group(&[1, 2, 3], &[], &[])
        };
        assert_eq!(
            next_shard_step(1, &[1, 2, 4], &joint, anyone),
            Some(LeaveJoint(set(&[1, 2]))),
            "a change left half done is finished before anything else"
        );
        // A node without an address is passed over, not waited for.
        assert_eq!(
            next_shard_step(1, &[1, 2, 3], &group(&[1], &[], &[]), |n| n != 2),
            Some(AddLearner(3))
        );
    }

    fn registry(nodes: &[(u64, NodeState)]) -> Registry {
        Registry {
            shards: 8,
            replicas: 3,
            shards_ready: true,
            cluster_id: "c-1".into(),
            nodes: nodes
                .iter()
                .map(|&(id, state)| {
                    let address = format!("10.0.0.{id}:7400");
                    (id, NodeEntry { address, state })
                })
                .collect(),
            ..Registry::default()
        }
    }

    #[test]
    fn the_metadata_leader_keeps_every_registered_node_a_member_and_the_right_voters() {
        use MetadataStep::*;
        use NodeState::{Active, Draining};
        let three = registry(&[(0, Active), (1, Active), (2, Active)]);
        assert_eq!(
            next_metadata_step(&three, &group(&[0, 1, 2], &[], &[])),
            None
        );
        let unnamed = Registry {
            cluster_id: String::new(),
            ..three.clone()
        };
        assert_eq!(
            next_metadata_step(&unnamed, &group(&[0, 1, 2], &[], &[])),
            Some(NameCluster)
        );
        assert_eq!(
            next_metadata_step(&three, &group(&[0, 1], &[], &[])),
            Some(AddLearners(BTreeMap::from([(2, "10.0.0.2:7400".into())])))
        );
        // Voters are replaced once the new ones caught up.
        assert_eq!(
            next_metadata_step(&three, &group(&[0], &[1, 2], &[2])),
            None
        );
        assert_eq!(
            next_metadata_step(&three, &group(&[0], &[1, 2], &[])),
            Some(ReplaceVoters(set(&[0, 1, 2])))
        );
        // Five active nodes make five voters.
        let five = registry(&[
            (0, Active),
            (1, Active),
            (2, Active),
            (3, Active),
            (4, Active),
        ]);
        assert_eq!(
            next_metadata_step(&five, &group(&[0, 1, 2], &[3, 4], &[])),
            Some(ReplaceVoters(set(&[0, 1, 2, 3, 4])))
        );
        assert_eq!(
            next_metadata_step(&three, &group(&[0, 1, 2], &[7], &[])),
            Some(RemoveMembers(set(&[7])))
        );
        let draining = registry(&[(0, Active), (1, Active), (2, Active), (3, Draining)]);
        assert_eq!(
            next_metadata_step(&draining, &group(&[0, 1, 2], &[3], &[])),
            Some(RemoveDrained(vec![3]))
        );
        let joint = GroupView {
            joint_to: Some(set(&[0, 1])),
            ..group(&[0, 1, 2], &[], &[])
        };
        assert_eq!(
            next_metadata_step(&three, &joint),
            Some(LeaveJoint(set(&[0, 1])))
        );
    }

    #[test]
    fn a_node_silent_long_enough_is_marked_down_only_when_its_shards_have_somewhere_to_go() {
        let now = Instant::now();
        let hour = Duration::from_secs(3600);
        let silent = HashMap::from([(3, now - hour), (2, now - Duration::from_secs(60))]);
        let down_after = Duration::from_secs(1800);
        assert_eq!(
            overdue(&[0, 1, 2, 3], 0, &silent, now, down_after, 3),
            Some(3)
        );
        // Not the leader itself, not a node silent for a minute only.
        assert_eq!(overdue(&[0, 1, 2, 3], 3, &silent, now, down_after, 3), None);
        // Three nodes for three replicas: marking one down would only shrink its groups.
        assert_eq!(overdue(&[0, 1, 3], 0, &silent, now, down_after, 3), None);
    }
}
