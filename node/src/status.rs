//! What the cluster looks like: this node's Raft groups, and every node's view merged.

use std::collections::BTreeMap;

use openraft::{BasicNode, RaftMetrics};
use sentinel_proto::v1::{
    ClusterStatusReply, LocalReplica, LocalStatusReply, LocalStatusRequest, NodeInfo, ReplicaInfo,
    ShardInfo,
};
use sentinel_proto::ErrorCode;
use tonic::Status;

use crate::calls::{client, meta_metrics, STATUS_TIMEOUT};
use crate::host::{known_leader, Host};
use crate::placement::Placement;
use crate::registry::{ordinal_of, NodeState, METADATA_GROUP};

/// Shards whose replica set, as their leader sees it, includes `node`.
pub fn shards_on(status: &ClusterStatusReply, node: u64) -> u32 {
    status
        .shards
        .iter()
        .filter(|shard| shard.leader.is_none() || shard.replicas.iter().any(|r| r.node == node))
        .count() as u32
}

/// One Raft group as this node sees it.
fn local_replica(
    group: u32,
    metrics: &RaftMetrics<u64, BasicNode>,
    digest: String,
) -> LocalReplica {
    let membership = metrics.membership_config.membership();
    LocalReplica {
        group,
        leader: known_leader(metrics),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        applied_index: metrics.last_applied.map_or(0, |l| l.index),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        matched: metrics
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(&node, log)| (node, log.map_or(0, |l| l.index)))
                    .collect()
            })
            .unwrap_or_default(),
        digest,
    }
}

/// The Raft groups hosted here, with their state digests when asked.
pub async fn local_status(
    host: &Host,
    digests: bool,
) -> Result<LocalStatusReply, sentinel_storage_engine::Error> {
    let mut replicas = vec![local_replica(
        METADATA_GROUP,
        &meta_metrics(host),
        String::new(),
    )];
    for replica in host.replicas() {
        let digest = if digests {
            let reader = replica.reader.clone();
            tokio::task::spawn_blocking(move || reader.digest())
                .await
                .expect("digest task")?
        } else {
            String::new()
        };
        replicas.push(local_replica(replica.shard, &replica.metrics(), digest));
    }
    Ok(LocalStatusReply {
        node: host.id,
        replicas,
    })
}

/// Every node's view, gathered and merged: nodes, shards, leaders, lag, digests.
pub async fn cluster_status(host: &Host, digests: bool) -> ClusterStatusReply {
    let registry = host.registry();
    let placement = Placement::compute(&registry);
    let calls = registry.nodes.iter().map(|(&id, node)| {
        let address = node.address.clone();
        async move {
            let answer = async {
                if id == host.id {
                    return local_status(host, digests)
                        .await
                        .map_err(|e| ErrorCode::Internal.status(e.to_string()));
                }
                let mut client = client(host, &address)?;
                let mut request = tonic::Request::new(LocalStatusRequest { digests });
                request.set_timeout(if digests {
                    STATUS_TIMEOUT * 15
                } else {
                    STATUS_TIMEOUT
                });
                client.local_status(request).await.map(|r| r.into_inner())
            };
            (id, answer.await)
        }
    });
    let reports: BTreeMap<u64, Result<LocalStatusReply, Status>> =
        futures::future::join_all(calls).await.into_iter().collect();
    let nodes = registry
        .nodes
        .iter()
        .map(|(&id, node)| NodeInfo {
            id,
            ordinal: ordinal_of(id),
            address: node.address.clone(),
            state: match reports.get(&id) {
                Some(Ok(_)) => node.state.name().to_owned(),
                _ if node.state == NodeState::Down => node.state.name().to_owned(),
                _ => "unreachable".to_owned(),
            },
        })
        .collect();
    let mut views: BTreeMap<u32, BTreeMap<u64, &LocalReplica>> = BTreeMap::new();
    for (&node, report) in &reports {
        if let Ok(report) = report {
            for replica in &report.replicas {
                views
                    .entry(replica.group)
                    .or_default()
                    .insert(node, replica);
            }
        }
    }
    let shards = (0..registry.shards)
        .map(|shard| {
            let view = views.remove(&shard).unwrap_or_default();
            let leader = view
                .iter()
                .filter(|(&node, r)| r.leader == Some(node))
                .max_by_key(|(_, r)| r.term)
                .map(|(_, r)| *r);
            let replicas = match leader {
                Some(leader) => leader
                    .voters
                    .iter()
                    .map(|n| (*n, "voter"))
                    .chain(leader.learners.iter().map(|n| (*n, "learner")))
                    .map(|(node, role)| {
                        let local = view.get(&node);
                        ReplicaInfo {
                            node,
                            role: role.to_owned(),
                            applied_index: local.map_or(0, |r| r.applied_index),
                            lag: leader
                                .last_log_index
                                .saturating_sub(local.map_or(0, |r| r.applied_index)),
                            digest: local.map(|r| r.digest.clone()).unwrap_or_default(),
                        }
                    })
                    .collect(),
                None => Vec::new(),
            };
            ShardInfo {
                shard,
                leader: leader.and_then(|l| l.leader),
                term: leader.map_or(0, |l| l.term),
                desired: placement.replicas(shard).to_vec(),
                replicas,
            }
        })
        .collect();
    ClusterStatusReply {
        shard_count: registry.shards,
        replication_factor: registry.replicas,
        metadata_leader: known_leader(&meta_metrics(host)),
        nodes,
        shards,
    }
}
