//! Cluster membership: creating or joining the cluster, recording a node's identity,
//! admitting and decommissioning nodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers};
use sentinel_proto::leader_hint;
use sentinel_proto::v1::{DecommissionReply, JoinReply, JoinRequest};
use sentinel_proto::ErrorCode;
use sentinel_storage_engine::Command;
use tokio::sync::watch;
use tonic::Status;

use crate::calls::{meta_metrics, node_client, propose, write};
use crate::error::NodeError;
use crate::host::Host;
use crate::identity::Identity;
use crate::registry::{
    decommissioned, ordinal_of, NodeState, RegistryCommand, RegistryResponse, METADATA_GROUP,
};
use crate::status::{cluster_status, shards_on};
use crate::transport::Peers;

/// Finishes creating the cluster (a founder), or registers again unless this node's
/// replica of the registry shows it active at its address (a draining, down or removed
/// node asks the metadata leader). A decommissioned member, known as one here or to the
/// metadata leader, stops with an error. Returns once this node is in the registry.
pub async fn form(host: &Arc<Host>, identity: &Identity) -> Result<(), NodeError> {
    let address = host.config.node.advertised();
    if host.registry().decommissioned.contains(&host.id) {
        return Err(NodeError::Join(decommissioned(host.id)));
    }
    if identity.founder {
        let initialized = host
            .meta
            .is_initialized()
            .await
            .map_err(|e| NodeError::raft(METADATA_GROUP, e))?;
        if !initialized {
            let members = BTreeMap::from([(host.id, BasicNode::new(address.clone()))]);
            if let Err(e) = host.meta.initialize(members).await {
                tracing::warn!(error = %e, "metadata group already initialized");
            }
        }
        return create(host, &address, &identity.cluster_id).await;
    }
    let registered = host
        .registry()
        .nodes
        .get(&host.id)
        .is_some_and(|node| node.address == address && node.state == NodeState::Active);
    if !registered {
        let request = JoinRequest {
            node_id: host.id,
            address: address.clone(),
            ordinal: host.config.node.id,
            fresh: false,
            cluster_id: identity.cluster_id.clone(),
        };
        join(&host.peers, &host.config.node.other_seeds(), request).await?;
    }
    while host.registry().address(host.id).is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The founder's steps, each skipped when already done (a crash may interrupt them).
async fn create(host: &Arc<Host>, address: &str, cluster_id: &str) -> Result<(), NodeError> {
    let cluster = &host.config.cluster;
    loop {
        let registry = host.registry();
        let step = if registry.shards == 0 {
            Some(RegistryCommand::Create {
                shards: cluster.shards,
                replicas: cluster.replicas,
                cluster_id: cluster_id.to_owned(),
            })
        } else if registry.address(host.id) != Some(address) {
            Some(RegistryCommand::Register {
                id: host.id,
                address: address.to_owned(),
            })
        } else if !registry.shards_ready {
            initialize_shards(host, registry.shards, address).await?;
            Some(RegistryCommand::ShardsReady)
        } else {
            None
        };
        let Some(step) = step else { return Ok(()) };
        if let Err(status) = propose(host, step).await {
            tracing::info!(%status, "waiting for the metadata group");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Records the identity of a data directory written before identities were, once the
/// cluster has an id (its metadata leader names a cluster that has none).
pub async fn record_identity(
    host: Arc<Host>,
    mut identity: Identity,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let cluster_id = host.registry().cluster_id;
        if !cluster_id.is_empty() {
            identity.cluster_id = cluster_id;
            match crate::identity::save(&host.config.node.data_dir, &identity) {
                Ok(()) => {
                    tracing::info!(cluster = %identity.cluster_id, "recorded the node's identity")
                }
                Err(e) => tracing::warn!(error = %e, "could not record the node's identity"),
            }
            return;
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Starts every shard group with this node as its only voter; placement then spreads them.
async fn initialize_shards(host: &Arc<Host>, shards: u32, address: &str) -> Result<(), NodeError> {
    for shard in 0..shards {
        let replica = host.ensure_replica(shard).await?;
        if !replica
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::raft(shard, e))?
        {
            let members = BTreeMap::from([(host.id, BasicNode::new(address))]);
            replica
                .raft
                .initialize(members)
                .await
                .map_err(|e| NodeError::raft(shard, e))?;
        }
        let settings = host.shard_settings();
        if replica.reader.settings() != settings {
            replica
                .raft
                .wait(Some(Duration::from_secs(30)))
                .current_leader(host.id, "the creating node leads the new shard")
                .await
                .map_err(|e| NodeError::raft(shard, e))?;
            replica
                .raft
                .client_write(Command::Configure(Box::new(settings)))
                .await
                .map_err(|e| NodeError::raft(shard, e))?;
        }
    }
    tracing::info!(shards, "created the shard groups");
    Ok(())
}

/// Asks the seeds (following redirects to the metadata leader) to admit a node, until
/// one does; a refusal (a member its ordinal replaced, another cluster's data:
/// PERMISSION_DENIED) is final.
pub async fn join(
    peers: &Peers,
    seeds: &[String],
    request: JoinRequest,
) -> Result<JoinReply, NodeError> {
    if seeds.is_empty() {
        return Err(NodeError::Join("no seed other than this node".into()));
    }
    let mut attempt = 0usize;
    loop {
        let seed = &seeds[attempt % seeds.len()];
        attempt += 1;
        let mut target = seed.clone();
        for _ in 0..3 {
            let answer = match node_client(peers, &target) {
                Ok(mut client) => client.join(request.clone()).await,
                Err(status) => Err(status),
            };
            match answer {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    tracing::info!(
                        via = %target,
                        member = reply.member,
                        shards = reply.shard_count,
                        replicas = reply.replication_factor,
                        "joined the cluster"
                    );
                    return Ok(reply);
                }
                Err(status) => match leader_hint(&status) {
                    Some((_, leader)) => target = leader,
                    None if status.code() == tonic::Code::PermissionDenied => {
                        return Err(NodeError::Join(status.message().to_owned()));
                    }
                    None => {
                        tracing::info!(seed = %target, %status, "join attempt failed");
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Admits a node: registers it (a node with an empty data directory as its ordinal's
/// next member) and makes it a learner of the metadata group.
pub async fn admit(host: &Host, request: JoinRequest) -> Result<JoinReply, Status> {
    let registry = host.registry();
    if !request.fresh
        && !request.cluster_id.is_empty()
        && !registry.cluster_id.is_empty()
        && request.cluster_id != registry.cluster_id
    {
        return Err(ErrorCode::PermissionDenied.status(format!(
            "cluster_id: the node's data belongs to cluster {}, this is cluster {}",
            request.cluster_id, registry.cluster_id
        )));
    }
    let address = request.address;
    let command = match request.fresh {
        true => RegistryCommand::Admit {
            ordinal: request.ordinal,
            address: address.clone(),
        },
        false => RegistryCommand::Register {
            id: request.node_id,
            address: address.clone(),
        },
    };
    let id = match write(host, command).await? {
        RegistryResponse::Admitted(member) => member,
        RegistryResponse::Done => request.node_id,
        RegistryResponse::Refused(reason) => return Err(ErrorCode::PermissionDenied.status(reason)),
    };
    let membership = meta_metrics(host).membership_config.clone();
    let node = BasicNode::new(address);
    let change = match membership.membership().get_node(&id) {
        None => Some(ChangeMembers::AddNodes(BTreeMap::from([(id, node)]))),
        Some(known) if *known != node => {
            Some(ChangeMembers::SetNodes(BTreeMap::from([(id, node)])))
        }
        Some(_) => None,
    };
    if let Some(change) = change {
        host.meta
            .change_membership(change, true)
            .await
            .map_err(|e| ErrorCode::Unavailable.status(format!("metadata membership: {e}")))?;
    }
    let registry = host.registry();
    tracing::info!(node = id, ordinal = ordinal_of(id), "admitted a node");
    Ok(JoinReply {
        shard_count: registry.shards,
        replication_factor: registry.replicas,
        member: id,
        cluster_id: registry.cluster_id,
    })
}

/// Starts draining a node; answers how many shards still have a replica on it.
pub async fn decommission(host: &Host, id: u64) -> Result<DecommissionReply, Status> {
    let registry = host.registry();
    match registry.nodes.get(&id) {
        None => {
            return Err(ErrorCode::NotFound.status(format!("node_id: node {id} is not registered")))
        }
        Some(node) if node.state == NodeState::Active => {
            propose(host, RegistryCommand::Drain { id }).await?
        }
        Some(_) => {}
    }
    let status = cluster_status(host, false).await;
    Ok(DecommissionReply {
        shards_remaining: shards_on(&status, id),
    })
}
