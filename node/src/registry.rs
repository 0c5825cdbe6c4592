//! The cluster registry: the replicated document of the metadata Raft group.
//!
//! It holds the shard layout (set once, when the cluster is created) and the nodes with
//! their addresses and states. Every node holds a replica (voter or learner), so every
//! node derives the same placement from it.

use std::collections::BTreeMap;
use std::io::Cursor;

use sentinel_storage_engine::Document;
use serde::{Deserialize, Serialize};

/// Raft group id of the metadata group (shard groups are numbered from 0).
pub const METADATA_GROUP: u32 = u32::MAX;

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
    /// Registered nodes by id.
    pub nodes: BTreeMap<u64, NodeEntry>,
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
}

impl NodeState {
    /// Lower-case name, as shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Active => "active",
            NodeState::Draining => "draining",
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
    },
    /// Adds a node or updates its address; a draining node stays draining.
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
    /// Forgets a node.
    Remove {
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
}

impl Document for Registry {
    type Command = RegistryCommand;
    type Response = RegistryResponse;

    fn apply(&mut self, command: &RegistryCommand) -> RegistryResponse {
        match command {
            RegistryCommand::Create { shards, replicas } => {
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
            }
            RegistryCommand::Register { id, address } => {
                let state = self
                    .nodes
                    .get(id)
                    .map_or(NodeState::Active, |node| node.state);
                self.nodes.insert(
                    *id,
                    NodeEntry {
                        address: address.clone(),
                        state,
                    },
                );
            }
            RegistryCommand::Drain { id } => match self.nodes.get_mut(id) {
                Some(node) => node.state = NodeState::Draining,
                None => return RegistryResponse::Refused(format!("node {id} is not registered")),
            },
            RegistryCommand::Remove { id } => {
                if self.nodes.remove(id).is_none() {
                    return RegistryResponse::Refused(format!("node {id} is not registered"));
                }
            }
            RegistryCommand::ShardsReady => self.shards_ready = true,
        }
        RegistryResponse::Done
    }
}

impl Registry {
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
        };
        assert_eq!(registry.apply(&create), RegistryResponse::Done);
        assert!(matches!(
            registry.apply(&RegistryCommand::Create {
                shards: 8,
                replicas: 1
            }),
            RegistryResponse::Refused(_)
        ));
        assert_eq!((registry.shards, registry.replicas), (32, 3));
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
