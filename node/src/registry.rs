//! The cluster registry: the replicated document of the metadata Raft group.
//!
//! It holds the shard layout (set once, when the cluster is created) and the nodes with
//! their addresses and states. Every node holds a replica (voter or learner), so every
//! node derives the same placement from it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use sentinel_storage_engine::Document;
use serde::{Deserialize, Serialize};

/// Raft group id of the metadata group (shard groups are numbered from 0).
pub const METADATA_GROUP: u32 = u32::MAX;

/// Member ids per incarnation: a node's k-th data directory makes it member
/// `ordinal + k × MEMBER_STRIDE`, so configured ids (ordinals) stay below it.
pub const MEMBER_STRIDE: u64 = 1000;

/// Why `member`, decommissioned, may not register again.
pub fn decommissioned(member: u64) -> String {
    format!(
        "member {member} was decommissioned; to join again, start node {} with an empty \
         data directory (it joins as a new member)",
        ordinal_of(member)
    )
}

/// The configured id (StatefulSet ordinal) of a member.
pub fn ordinal_of(member: u64) -> u64 {
    member % MEMBER_STRIDE
}

/// Which data directory of its ordinal a member is: 0 for the first.
pub fn incarnation_of(member: u64) -> u64 {
    member / MEMBER_STRIDE
}

openraft::declare_raft_types!(
    /// The openraft types of the metadata group.
    pub MetaConfig:
        D = RegistryCommand,
        R = RegistryResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<MetaConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// Number of shards; 0 until the cluster is created.
    pub shards: u32,
    /// Replicas per shard.
    pub replicas: u32,
    /// Whether every shard group has been initialized by the node that created the cluster.
    pub shards_ready: bool,
    /// Registered nodes by member id.
    pub nodes: BTreeMap<u64, NodeEntry>,
    /// Set once when the cluster is created; every node's data directory records it.
    #[serde(default)]
    pub cluster_id: String,
    /// Members ever admitted per ordinal: the next member of an ordinal is its next
    /// incarnation, so a member id is never used twice.
    #[serde(default)]
    pub incarnations: BTreeMap<u64, u64>,
    /// Members removed after a decommission: they may not register again (their ordinal
    /// joins again only with an empty data directory, as a new member).
    #[serde(default)]
    pub decommissioned: BTreeSet<u64>,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// host:port of its gRPC server.
    pub address: String,
    /// Whether it takes shards.
    pub state: NodeState,
}

/// Whether a node takes shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Holds the shards placement gives it.
    Active,
    /// Being decommissioned: its shards move away, then it is removed.
    Draining,
    /// Unreachable for longer than `cluster.node_down_after_s`: its shards move away
    /// until it registers again.
    Down,
}

impl NodeState {
    /// Lower-case name, as shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        }
    }
}

/// A change to the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Sets the shard layout; refused once set.
    Create {
        /// Number of shards.
        shards: u32,
        /// Replicas per shard.
        replicas: u32,
        /// The new cluster's id.
        #[serde(default)]
        cluster_id: String,
    },
    /// Names a cluster created before cluster ids existed; refused once named.
    Name {
        /// The cluster's id.
        cluster_id: String,
    },
    /// Admits a node with an empty data directory as its ordinal's next member,
    /// forgetting the earlier members of that ordinal.
    Admit {
        /// The node's configured id.
        ordinal: u64,
        /// host:port.
        address: String,
    },
    /// Adds a node or updates its address; a draining node stays draining, a down node
    /// is active again. Refused for a member its ordinal has replaced, and for a
    /// decommissioned one.
    Register {
        /// Node id.
        id: u64,
        /// host:port.
        address: String,
    },
    /// Starts moving a node's shards away.
    Drain {
        /// Node id.
        id: u64,
    },
    /// Forgets a drained node, for good.
    Remove {
        /// Node id.
        id: u64,
    },
    /// Stops placing shards on an active node that stays unreachable.
    MarkDown {
        /// Node id.
        id: u64,
    },
    /// Records that every shard group exists.
    ShardsReady,
}

/// What applying a registry command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryResponse {
    /// Applied (or a blank or membership entry).
    #[default]
    Done,
    /// Refused, changing nothing.
    Refused(String),
    /// A node was admitted under this member id.
    Admitted(u64),
}

impl Document for Registry {
    type Command = RegistryCommand;
    type Response = RegistryResponse;

    fn apply(&mut self, command: &RegistryCommand) -> RegistryResponse {
        match command {
            RegistryCommand::Create {
                shards,
                replicas,
                cluster_id,
            } => {
                if self.shards != 0 {
                    return RegistryResponse::Refused(format!(
                        "the cluster already has {} shards",
                        self.shards
                    ));
                }
                if *shards == 0 || *replicas == 0 {
                    return RegistryResponse::Refused(
                        "shards and replicas must be at least 1".into(),
                    );
                }
                self.shards = *shards;
                self.replicas = *replicas;
                self.cluster_id.clone_from(cluster_id);
            }
            RegistryCommand::Name { cluster_id } => {
                if !self.cluster_id.is_empty() {
                    return RegistryResponse::Refused(format!(
                        "the cluster is already named {}",
                        self.cluster_id
                    ));
                }
                self.cluster_id.clone_from(cluster_id);
            }
            RegistryCommand::Admit { ordinal, address } => {
                if *ordinal >= MEMBER_STRIDE {
                    return RegistryResponse::Refused(format!(
                        "node id {ordinal} is not below {MEMBER_STRIDE}"
                    ));
                }
                let member = ordinal + MEMBER_STRIDE * self.next_incarnation(*ordinal);
                self.nodes.retain(|&id, _| ordinal_of(id) != *ordinal);
                self.insert(member, address, NodeState::Active);
                return RegistryResponse::Admitted(member);
            }
            RegistryCommand::Register { id, address } => {
                if incarnation_of(*id) + 1 < self.next_incarnation(ordinal_of(*id)) {
                    return RegistryResponse::Refused(format!(
                        "member {id} was replaced by a newer member of node {}",
                        ordinal_of(*id)
                    ));
                }
                if self.decommissioned.contains(id) {
                    return RegistryResponse::Refused(decommissioned(*id));
                }
                let state = match self.nodes.get(id).map(|node| node.state) {
                    Some(NodeState::Draining) => NodeState::Draining,
                    _ => NodeState::Active,
                };
                self.insert(*id, address, state);
            }
            RegistryCommand::Drain { id } => match self.nodes.get_mut(id) {
                Some(node) => node.state = NodeState::Draining,
                None => return RegistryResponse::Refused(format!("node {id} is not registered")),
            },
            RegistryCommand::Remove { id } => {
                if self.nodes.remove(id).is_none() {
                    return RegistryResponse::Refused(format!("node {id} is not registered"));
                }
                self.decommissioned.insert(*id);
            }
            RegistryCommand::MarkDown { id } => match self.nodes.get_mut(id) {
                Some(node) if node.state == NodeState::Active => node.state = NodeState::Down,
                Some(_) => {}
                None => return RegistryResponse::Refused(format!("node {id} is not registered")),
            },
            RegistryCommand::ShardsReady => self.shards_ready = true,
        }
        RegistryResponse::Done
    }
}

impl Registry {
    /// Registers `member` at `address` in `state`, counting its incarnation.
    fn insert(&mut self, member: u64, address: &str, state: NodeState) {
        let next = self.incarnations.entry(ordinal_of(member)).or_default();
        *next = (*next).max(incarnation_of(member) + 1);
        self.nodes.insert(
            member,
            NodeEntry {
                address: address.to_owned(),
                state,
            },
        );
    }

    /// The incarnation the next member of `ordinal` gets (registries written before
    /// incarnations were counted know only the members still registered).
    fn next_incarnation(&self, ordinal: u64) -> u64 {
        let registered = self
            .nodes
            .keys()
            .filter(|&&id| ordinal_of(id) == ordinal)
            .map(|&id| incarnation_of(id) + 1);
        registered
            .chain(self.incarnations.get(&ordinal).copied())
            .max()
            .unwrap_or(0)
    }

    /// Ids of the nodes that take shards, ascending.
    pub fn active(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.state == NodeState::Active)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The address of a registered node.
    pub fn address(&self, id: u64) -> Option<&str> {
        self.nodes.get(&id).map(|node| node.address.as_str())
    }

    /// Voters the metadata group should have: the active nodes with the lowest ids, three
    /// of them (five from five nodes on); all other nodes follow as learners.
    pub fn metadata_voters(&self) -> Vec<u64> {
        let active = self.active();
        let count = if active.len() >= 5 { 5 } else { 3 };
        active.into_iter().take(count).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(registry: &mut Registry, id: u64) {
        let answer = registry.apply(&RegistryCommand::Register {
            id,
            address: format!("127.0.0.{}:7400", id + 1),
        });
        assert_eq!(answer, RegistryResponse::Done);
    }

    #[test]
    fn layout_is_set_once() {
        let mut registry = Registry::default();
        let create = RegistryCommand::Create {
            shards: 32,
            replicas: 3,
            cluster_id: "c1".into(),
        };
        assert_eq!(registry.apply(&create), RegistryResponse::Done);
        assert!(matches!(
            registry.apply(&RegistryCommand::Create {
                shards: 8,
                replicas: 1,
                cluster_id: "c2".into(),
            }),
            RegistryResponse::Refused(_)
        ));
        assert_eq!((registry.shards, registry.replicas), (32, 3));
        assert_eq!(registry.cluster_id, "c1");
        assert!(matches!(
            registry.apply(&RegistryCommand::Name {
                cluster_id: "c3".into()
            }),
            RegistryResponse::Refused(_)
        ));
    }

    fn admit(registry: &mut Registry, ordinal: u64) -> u64 {
        match registry.apply(&RegistryCommand::Admit {
            ordinal,
            address: format!("sentinel-{ordinal}.sentinel:7400"),
        }) {
            RegistryResponse::Admitted(member) => member,
            other => panic!("not admitted: {other:?}"),
        }
    }

    #[test]
    fn a_lost_data_directory_comes_back_as_a_new_member_and_the_old_one_is_refused() {
        let mut registry = Registry::default();
        for ordinal in 0..3 {
            assert_eq!(admit(&mut registry, ordinal), ordinal);
        }
        assert_eq!(admit(&mut registry, 2), 1002);
        assert_eq!(registry.active(), vec![0, 1, 1002]);
        assert!(matches!(
            registry.apply(&RegistryCommand::Register {
                id: 2,
                address: "sentinel-2.sentinel:7400".into(),
            }),
            RegistryResponse::Refused(_)
        ));
        register(&mut registry, 1002);
        assert_eq!(admit(&mut registry, 2), 2002);
        // A member id is never used twice, even once its ordinal left the registry.
        assert_eq!(
            registry.apply(&RegistryCommand::Remove { id: 2002 }),
            RegistryResponse::Done
        );
        assert_eq!(admit(&mut registry, 2), 3002);
        assert!(matches!(
            registry.apply(&RegistryCommand::Admit {
                ordinal: MEMBER_STRIDE,
                address: "x:1".into()
            }),
            RegistryResponse::Refused(_)
        ));
    }

    #[test]
    fn a_down_node_leaves_placement_until_it_registers_again() {
        let mut registry = Registry::default();
        for id in 0..4 {
            register(&mut registry, id);
        }
        assert_eq!(
            registry.apply(&RegistryCommand::MarkDown { id: 3 }),
            RegistryResponse::Done
        );
        assert_eq!(registry.active(), vec![0, 1, 2]);
        register(&mut registry, 3);
        assert_eq!(registry.active(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn draining_nodes_leave_placement_and_stay_draining_when_they_reregister() {
        let mut registry = Registry::default();
        for id in 0..4 {
            register(&mut registry, id);
        }
        assert_eq!(
            registry.apply(&RegistryCommand::Drain { id: 2 }),
            RegistryResponse::Done
        );
        register(&mut registry, 2);
        assert_eq!(registry.active(), vec![0, 1, 3]);
        assert_eq!(registry.metadata_voters(), vec![0, 1, 3]);
        assert_eq!(
            registry.apply(&RegistryCommand::Remove { id: 2 }),
            RegistryResponse::Done
        );
        assert!(matches!(
            registry.apply(&RegistryCommand::Drain { id: 2 }),
            RegistryResponse::Refused(_)
        ));
        // Restarted on its data directory, the removed member is refused; its ordinal
        // comes back only as a new member.
        let again = registry.apply(&RegistryCommand::Register {
            id: 2,
            address: "127.0.0.3:7400".into(),
        });
        assert!(
            matches!(&again, RegistryResponse::Refused(why) if why.contains("decommissioned")),
            "{again:?}"
        );
        assert_eq!(registry.active(), vec![0, 1, 3]);
        assert_eq!(
            registry.apply(&RegistryCommand::Admit {
                ordinal: 2,
                address: "127.0.0.3:7400".into()
            }),
            RegistryResponse::Admitted(1002)
        );
        assert_eq!(registry.active(), vec![0, 1, 3, 1002]);
    }

    #[test]
    fn five_nodes_give_five_metadata_voters() {
        let mut registry = Registry::default();
        for id in [9, 3, 5, 1, 7, 2] {
            register(&mut registry, id);
        }
        assert_eq!(registry.metadata_voters(), vec![1, 2, 3, 5, 7]);
    }
}
