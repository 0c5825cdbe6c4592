//! Cluster membership: creating or joining the cluster, admitting and decommissioning
//! nodes, the cluster-wide status, and the reconciler that moves shard replicas and
//! leaderships to where placement wants them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::{
    CampaignRequest, ClusterStatusReply, DecommissionReply, JoinReply, JoinRequest, LocalReplica,
    LocalStatusReply, LocalStatusRequest, NodeInfo, ReplicaInfo, ShardInfo,
};
use sentinel_proto::{leader_hint, not_leader};
use sentinel_storage_engine::Command;
use tokio::sync::watch;
use tonic::Status;

use crate::error::NodeError;
use crate::host::{Host, Replica};
use crate::identity::Identity;
use crate::metrics::NodeMetrics;
use crate::placement::Placement;
use crate::registry::{
    ordinal_of, NodeState, Registry, RegistryCommand, RegistryResponse, METADATA_GROUP,
};
use crate::transport::{Peers, MAX_MESSAGE_BYTES};

/// Entries a learner may be behind the leader and still count as caught up.
pub const CAUGHT_UP_ENTRIES: u64 = 64;

/// How long a node waits for a peer's status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the node at `address`.
pub fn client(host: &Host, address: &str) -> Result<NodeClient<tonic::transport::Channel>, Status> {
    node_client(&host.peers, address)
}

/// A client of the node at `address` over `peers`' channels.
fn node_client(
    peers: &Peers,
    address: &str,
) -> Result<NodeClient<tonic::transport::Channel>, Status> {
    let channel = peers
        .channel(address)
        .map_err(|e| Status::invalid_argument(format!("address `{address}`: {e}")))?;
    Ok(NodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn meta_metrics(host: &Host) -> RaftMetrics<u64, BasicNode> {
    host.meta.metrics().borrow().clone()
}

/// Proposes a registry change on the metadata leader (this node) or names the leader.
async fn propose(host: &Host, command: RegistryCommand) -> Result<(), Status> {
    match write(host, command).await? {
        RegistryResponse::Refused(reason) => Err(Status::failed_precondition(reason)),
        _ => Ok(()),
    }
}

/// Writes a registry change on the metadata leader (this node) and answers what it
/// applied to, or names the leader.
async fn write(host: &Host, command: RegistryCommand) -> Result<RegistryResponse, Status> {
    match host.meta.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(e) => Err(match e.forward_to_leader::<BasicNode>() {
            Some(forward) => not_leader(
                METADATA_GROUP,
                forward
                    .leader_id
                    .zip(forward.leader_node.as_ref())
                    .map(|(id, node)| (id, node.addr.as_str())),
            ),
            None => Status::unavailable(format!("metadata group: {e}")),
        }),
    }
}

/// Finishes creating the cluster (a founder), or registers again when the address
/// changed or the node was marked down. Returns once this node is in the registry.
pub async fn form(host: &Arc<Host>, identity: &Identity) -> Result<(), NodeError> {
    let address = host.config.node.advertised();
    if identity.founder {
        let initialized = host
            .meta
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft {
                group: METADATA_GROUP,
                message: e.to_string(),
            })?;
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
        .is_some_and(|node| node.address == address && node.state != NodeState::Down);
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
            .map_err(|e| NodeError::Raft {
                group: shard,
                message: e.to_string(),
            })?
        {
            let members = BTreeMap::from([(host.id, BasicNode::new(address))]);
            replica
                .raft
                .initialize(members)
                .await
                .map_err(|e| NodeError::Raft {
                    group: shard,
                    message: e.to_string(),
                })?;
        }
        let settings = host.shard_settings();
        if replica.reader.settings() != settings {
            replica
                .raft
                .wait(Some(Duration::from_secs(30)))
                .current_leader(host.id, "the creating node leads the new shard")
                .await
                .map_err(|e| NodeError::Raft {
                    group: shard,
                    message: e.to_string(),
                })?;
            replica
                .raft
                .client_write(Command::Configure(Box::new(settings)))
                .await
                .map_err(|e| NodeError::Raft {
                    group: shard,
                    message: e.to_string(),
                })?;
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
        return Err(Status::permission_denied(format!(
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
        RegistryResponse::Refused(reason) => return Err(Status::permission_denied(reason)),
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
            .map_err(|e| Status::unavailable(format!("metadata membership: {e}")))?;
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
            return Err(Status::not_found(format!(
                "node_id: node {id} is not registered"
            )))
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

/// Shards whose replica set, as their leader sees it, includes `node`.
fn shards_on(status: &ClusterStatusReply, node: u64) -> u32 {
    status
        .shards
        .iter()
        .filter(|shard| shard.leader.is_none() || shard.replicas.iter().any(|r| r.node == node))
        .count() as u32
}

fn local_replica(
    group: u32,
    metrics: &RaftMetrics<u64, BasicNode>,
    digest: String,
) -> LocalReplica {
    let membership = metrics.membership_config.membership();
    LocalReplica {
        group,
        leader: metrics.current_leader,
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
                        .map_err(|e| Status::internal(e.to_string()));
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
        metadata_leader: meta_metrics(host).current_leader,
        nodes,
        shards,
    }
}

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
/// How often the metadata leader asks every node whether it is up.
const PROBE_EVERY: Duration = Duration::from_secs(5);

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
        if meta_metrics(&self.host).current_leader == Some(self.host.id) {
            if let Err(e) = self.metadata(&placement).await {
                tracing::info!(error = %e, "metadata reconciliation step failed");
            }
        }
        for replica in self.host.replicas() {
            let metrics = replica.metrics();
            let result = if metrics.current_leader == Some(self.host.id) {
                self.strays.remove(&replica.shard);
                self.lead(&replica, &metrics, &placement).await
            } else if !placement.holds(replica.shard, self.host.id) {
                self.maybe_drop(&replica, &metrics, &placement).await
            } else {
                self.strays.remove(&replica.shard);
                Ok(())
            };
            if let Err(e) = result {
                tracing::info!(shard = replica.shard, error = %e, "reconciliation step failed");
            }
        }
    }

    fn node(&self, id: u64) -> Option<BasicNode> {
        self.host.address(id).map(BasicNode::new)
    }

    fn action(&self, action: &str) {
        self.metrics
            .rebalance_actions
            .with_label_values(&[action])
            .inc();
    }

    /// The metadata leader's round: every registered node a member, the right voters, and
    /// drained nodes removed.
    async fn metadata(&mut self, placement: &Placement) -> Result<(), String> {
        let registry = self.host.registry();
        self.watch_nodes(&registry).await?;
        let host = &self.host;
        let metrics = meta_metrics(host);
        let membership = metrics.membership_config.membership().clone();
        if membership.get_joint_config().len() > 1 {
            return Ok(());
        }
        if registry.cluster_id.is_empty() {
            self.action("name_cluster");
            let cluster_id = crate::identity::new_cluster_id(&host.config.node.advertised());
            return propose(host, RegistryCommand::Name { cluster_id })
                .await
                .map_err(|s| s.message().to_owned());
        }
        let members: BTreeSet<u64> = membership.nodes().map(|(&id, _)| id).collect();
        let missing: BTreeMap<u64, BasicNode> = registry
            .nodes
            .iter()
            .filter(|(id, _)| !members.contains(id))
            .map(|(&id, node)| (id, BasicNode::new(node.address.clone())))
            .collect();
        if !missing.is_empty() {
            self.action("metadata_add_learner");
            return change(&host.meta, ChangeMembers::AddNodes(missing), true).await;
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let desired: BTreeSet<u64> = registry.metadata_voters().into_iter().collect();
        if !desired.is_empty() && voters != desired {
            let ready = desired
                .iter()
                .all(|&n| voters.contains(&n) || caught_up(&metrics, n));
            if ready {
                self.action("metadata_voters");
                return change(&host.meta, ChangeMembers::ReplaceAllVoters(desired), true).await;
            }
            return Ok(());
        }
        let gone: BTreeSet<u64> = members
            .iter()
            .filter(|id| !registry.nodes.contains_key(id))
            .copied()
            .collect();
        if !gone.is_empty() {
            self.action("metadata_remove");
            return change(&host.meta, ChangeMembers::RemoveNodes(gone), true).await;
        }
        let draining: Vec<u64> = registry
            .nodes
            .iter()
            .filter(|(_, node)| node.state == NodeState::Draining)
            .map(|(&id, _)| id)
            .collect();
        if !draining.is_empty() && placement.shard_count() > 0 {
            let status = cluster_status(host, false).await;
            for id in draining {
                if shards_on(&status, id) == 0 {
                    self.action("remove_node");
                    propose(host, RegistryCommand::Remove { id })
                        .await
                        .map_err(|s| s.message().to_owned())?;
                    tracing::info!(node = id, "decommissioned node removed");
                }
            }
        }
        Ok(())
    }

    /// The metadata leader asks every node now and then whether it is up: a node down
    /// that answers again is active again; an active node silent for
    /// `cluster.node_down_after_s` is marked down, so its shards re-replicate.
    async fn watch_nodes(&mut self, registry: &Registry) -> Result<(), String> {
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
                    propose(host, RegistryCommand::Register { id, address })
                        .await
                        .map_err(|s| s.message().to_owned())?;
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
            propose(host, RegistryCommand::MarkDown { id })
                .await
                .map_err(|s| s.message().to_owned())?;
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
    ) -> Result<(), String> {
        let shard = replica.shard;
        let desired = placement.replicas(shard);
        if desired.is_empty() {
            return Ok(());
        }
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1 {
            return Ok(());
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners: BTreeSet<u64> = membership.learner_ids().collect();
        for &node in desired {
            if !voters.contains(&node) && !learners.contains(&node) {
                let Some(address) = self.node(node) else {
                    continue;
                };
                self.action("add_learner");
                return replica
                    .raft
                    .add_learner(node, address, false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
            }
        }
        let promote: BTreeSet<u64> = desired
            .iter()
            .filter(|n| learners.contains(n) && caught_up(metrics, **n))
            .copied()
            .collect();
        if !promote.is_empty() {
            self.action("promote");
            return change(&replica.raft, ChangeMembers::AddVoterIds(promote), false).await;
        }
        let all_voters = desired.iter().all(|n| voters.contains(n));
        let extra: BTreeSet<u64> = voters
            .iter()
            .filter(|n| !desired.contains(n))
            .copied()
            .collect();
        if all_voters && !extra.is_empty() {
            // A leader removing itself steps down once the change commits.
            self.action("remove_voter");
            return change(&replica.raft, ChangeMembers::RemoveVoters(extra), false).await;
        }
        let stray: BTreeSet<u64> = learners
            .iter()
            .filter(|n| !desired.contains(n))
            .copied()
            .collect();
        if !stray.is_empty() {
            self.action("remove_learner");
            return change(&replica.raft, ChangeMembers::RemoveNodes(stray), false).await;
        }
        let preferred = desired[0];
        if preferred != self.host.id && voters.contains(&preferred) {
            return self.campaign(shard, preferred, metrics).await;
        }
        Ok(())
    }

    /// Asks `target` to stand for election when it holds every entry (a voter grants its
    /// vote only to a log at least as long as its own); at most every few election
    /// timeouts per shard.
    async fn campaign(
        &mut self,
        shard: u32,
        target: u64,
        metrics: &RaftMetrics<u64, BasicNode>,
    ) -> Result<(), String> {
        let pause = Duration::from_millis(self.host.config.raft.election_timeout_max_ms * 2);
        if self
            .last_campaign
            .get(&shard)
            .is_some_and(|at| at.elapsed() < pause)
            || !holds_all(metrics, target)
        {
            return Ok(());
        }
        self.last_campaign.insert(shard, Instant::now());
        let Some(address) = self.host.address(target) else {
            return Ok(());
        };
        self.action("transfer_leader");
        client(&self.host, &address)
            .map_err(|s| s.message().to_owned())?
            .campaign(CampaignRequest {
                group: shard,
                hand_over: false,
            })
            .await
            .map(|_| ())
            .map_err(|s| s.message().to_owned())
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
    ) -> Result<(), String> {
        let shard = replica.shard;
        let known = metrics.current_leader.filter(|&l| l != self.host.id);
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
        let report = client(&self.host, &address)
            .map_err(|s| s.message().to_owned())?
            .local_status(LocalStatusRequest { digests: false })
            .await
            .map_err(|s| s.message().to_owned())?
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

/// Whether the leader knows `node` holds all but the last few entries.
fn caught_up(metrics: &RaftMetrics<u64, BasicNode>, node: u64) -> bool {
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

/// Proposes a membership change; `retain` keeps removed voters as learners.
/// Whether the leader knows `node` holds its whole log.
fn holds_all(metrics: &RaftMetrics<u64, BasicNode>, node: u64) -> bool {
    let last = metrics.last_log_index;
    metrics
        .replication
        .as_ref()
        .and_then(|r| r.get(&node))
        .is_some_and(|matched| matched.map(|m| m.index) == last)
}

async fn change<C>(
    raft: &openraft::Raft<C>,
    change: ChangeMembers<u64, BasicNode>,
    retain: bool,
) -> Result<(), String>
where
    C: openraft::RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Responder = openraft::impls::OneshotResponder<C>,
    >,
{
    raft.change_membership(change, retain)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Hands the leaderships held here to other caught-up voters before this node stops.
pub async fn hand_over(host: &Host) {
    let deadline =
        Instant::now() + Duration::from_millis(host.config.raft.election_timeout_max_ms * 2);
    for replica in host.replicas() {
        let metrics = replica.metrics();
        if !crate::host::leads(&metrics, host.id) {
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
            let mut request = tonic::Request::new(CampaignRequest {
                group: replica.shard,
                hand_over: true,
            });
            request.set_timeout(STATUS_TIMEOUT);
            if let Err(status) = peer.campaign(request).await {
                tracing::info!(shard = replica.shard, %status, "leadership hand-over refused");
            }
        }
    }
    while Instant::now() < deadline
        && host.replicas().iter().any(|r| {
            crate::host::leads(&r.metrics(), host.id)
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
