//! Where shards live: a consistent-hash ring of the active nodes, and a balanced choice
//! of each shard's preferred leader.
//!
//! The ring is computed here rather than taken from a crate because every node must
//! compute the same placement from the same registry across versions and platforms: the
//! hash (SHA-256 of fixed byte strings) and the walk are pinned by tests. Each node puts
//! [`VIRTUAL_NODES`] points on the ring; a shard's replicas are the first R distinct
//! nodes clockwise from the shard's point, so a new node takes over only the shards whose
//! replica set it enters. Leaders are then chosen among each shard's replicas, shard by
//! shard, on the replica that leads the fewest shards so far, which spreads leaders
//! within one of even.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::registry::Registry;

/// Points each node puts on the ring.
pub const VIRTUAL_NODES: u32 = 128;

/// Desired replicas of every shard.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    /// Per shard, its replicas with the preferred leader first, then in ring order.
    shards: Vec<Vec<u64>>,
}

fn point(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("eight bytes"))
}

impl Placement {
    /// The placement the registry asks for (empty before the cluster is created).
    pub fn compute(registry: &Registry) -> Placement {
        let nodes = registry.active();
        let mut ring: Vec<(u64, u64)> = nodes
            .iter()
            .flat_map(|&node| {
                (0..VIRTUAL_NODES).map(move |v| {
                    (
                        point(&[b"node", &node.to_be_bytes(), &v.to_be_bytes()]),
                        node,
                    )
                })
            })
            .collect();
        ring.sort_unstable();
        let wanted = (registry.replicas as usize).min(nodes.len());
        let mut led: BTreeMap<u64, usize> = nodes.iter().map(|&n| (n, 0)).collect();
        let shards = (0..registry.shards)
            .map(|shard| {
                let mut replicas = Vec::with_capacity(wanted);
                if wanted > 0 {
                    let at = point(&[b"shard", &shard.to_be_bytes()]);
                    let start = ring.partition_point(|&(p, _)| p < at);
                    for i in 0..ring.len() {
                        let node = ring[(start + i) % ring.len()].1;
                        if !replicas.contains(&node) {
                            replicas.push(node);
                            if replicas.len() == wanted {
                                break;
                            }
                        }
                    }
                    let leader = (0..replicas.len())
                        .min_by_key(|&i| (led[&replicas[i]], i))
                        .expect("at least one replica");
                    *led.get_mut(&replicas[leader]).expect("known node") += 1;
                    let chosen = replicas.remove(leader);
                    replicas.insert(0, chosen);
                }
                replicas
            })
            .collect();
        Placement { shards }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// The nodes that should hold `shard`, preferred leader first.
    pub fn replicas(&self, shard: u32) -> &[u64] {
        self.shards
            .get(shard as usize)
            .map_or(&[][..], |r| r.as_slice())
    }

    /// The node that should lead `shard`.
    pub fn preferred_leader(&self, shard: u32) -> Option<u64> {
        self.replicas(shard).first().copied()
    }

    /// Whether `node` should hold a replica of `shard`.
    pub fn holds(&self, shard: u32, node: u64) -> bool {
        self.replicas(shard).contains(&node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{RegistryCommand, RegistryResponse};
    use sentinel_storage_engine::Document;

    fn registry(nodes: &[u64], shards: u32, replicas: u32) -> Registry {
        let mut registry = Registry::default();
        assert_eq!(
            registry.apply(&RegistryCommand::Create {
                shards,
                replicas,
                cluster_id: "c".into(),
            }),
            RegistryResponse::Done
        );
        for &id in nodes {
            registry.apply(&RegistryCommand::Register {
                id,
                address: format!("node-{id}:7400"),
            });
        }
        registry
    }

    fn counts(placement: &Placement, leaders: bool) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for shard in 0..placement.shard_count() {
            let replicas = placement.replicas(shard);
            let take = if leaders { 1 } else { replicas.len() };
            for &node in &replicas[..take] {
                *out.entry(node).or_default() += 1;
            }
        }
        out
    }

    #[test]
    fn placement_is_pinned() {
        let placement = Placement::compute(&registry(&[0, 1, 2, 3], 8, 3));
        let shards: Vec<Vec<u64>> = (0..8).map(|s| placement.replicas(s).to_vec()).collect();
        assert_eq!(
            shards,
            vec![
                vec![1, 2, 3],
                vec![3, 2, 1],
                vec![2, 1, 3],
                vec![3, 2, 1],
                vec![0, 1, 3],
                vec![0, 3, 2],
                vec![1, 3, 2],
                vec![2, 3, 1],
            ]
        );
    }

    #[test]
    fn replicas_are_distinct_and_capped_by_the_node_count() {
        let placement = Placement::compute(&registry(&[4, 9], 32, 3));
        for shard in 0..32 {
            let mut replicas = placement.replicas(shard).to_vec();
            replicas.sort_unstable();
            assert_eq!(replicas, vec![4, 9]);
        }
        assert_eq!(
            Placement::compute(&registry(&[], 4, 3)).replicas(0),
            &[] as &[u64]
        );
    }

    #[test]
    fn leaders_are_spread_within_one_and_replicas_roughly_evenly() {
        let placement = Placement::compute(&registry(&[0, 1, 2, 3, 4], 64, 3));
        let leaders = counts(&placement, true);
        let (min, max) = (
            leaders.values().min().unwrap(),
            leaders.values().max().unwrap(),
        );
        assert!(max - min <= 1, "leaders per node: {leaders:?}");
        let replicas = counts(&placement, false);
        let (min, max) = (
            *replicas.values().min().unwrap() as f64,
            *replicas.values().max().unwrap() as f64,
        );
        assert!(max / min < 1.6, "replicas per node: {replicas:?}");
    }

    #[test]
    fn adding_a_node_moves_only_shards_it_enters() {
        let before = Placement::compute(&registry(&[0, 1, 2], 64, 3));
        let with_four = registry(&[0, 1, 2], 64, 2);
        let two_of_three = Placement::compute(&with_four);
        let mut grown = with_four.clone();
        grown.apply(&RegistryCommand::Register {
            id: 3,
            address: "node-3:7400".into(),
        });
        let after = Placement::compute(&grown);
        let mut moved = 0;
        for shard in 0..64 {
            let old: Vec<u64> = {
                let mut r = two_of_three.replicas(shard).to_vec();
                r.sort_unstable();
                r
            };
            let new: Vec<u64> = {
                let mut r = after.replicas(shard).to_vec();
                r.sort_unstable();
                r
            };
            if old != new {
                moved += 1;
                assert!(new.contains(&3), "shard {shard} moved without node 3");
            }
        }
        assert!(moved > 0 && moved < 64, "{moved} shards moved");
        assert_eq!(before.shard_count(), 64);
    }
}
