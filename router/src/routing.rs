//! The routing table: which node leads each shard and where every node is, learned from
//! any node's `ClusterStatus`, refreshed periodically and at once when a call finds a
//! leader gone; NotLeader hints update it in between. One gRPC channel per node address.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sentinel_proto::leader_hint;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::{ClusterStatusReply, ClusterStatusRequest};
use sentinel_tls::ClusterTransport;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::config::RouterSection;
use crate::error::CallError;
use crate::metrics::RouterMetrics;

/// Largest gRPC message the router accepts from a node (query pages can be large).
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// NotLeader redirects followed back to back before the router pauses.
const MAX_HOPS: u32 = 3;
/// Shortest pause between two refreshes asked for by failing calls.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);
/// Refresh period while some shard has no leader.
const UNSETTLED_REFRESH: Duration = Duration::from_millis(500);

/// What the router knows of the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Number of shards, fixed at cluster creation.
    pub shard_count: u32,
    /// Node addresses by node id.
    pub nodes: BTreeMap<u64, String>,
    /// Per shard (index = shard id): the leader, when known, and the replicas.
    pub shards: Vec<ShardRoute>,
}

/// Where one shard lives.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShardRoute {
    /// The node leading the shard, when known.
    pub leader: Option<u64>,
    /// The nodes holding a replica (voters and learners).
    pub replicas: Vec<u64>,
}

impl Layout {
    /// The layout a `ClusterStatus` answer describes.
    pub fn from_status(status: &ClusterStatusReply) -> Layout {
        let mut shards = vec![ShardRoute::default(); status.shard_count as usize];
        for info in &status.shards {
            if let Some(route) = shards.get_mut(info.shard as usize) {
                route.leader = info.leader;
                route.replicas = info.replicas.iter().map(|r| r.node).collect();
            }
        }
        Layout {
            shard_count: status.shard_count,
            nodes: status
                .nodes
                .iter()
                .map(|n| (n.id, n.address.clone()))
                .collect(),
            shards,
        }
    }

    /// Whether this layout, a node's answer, may replace `current`: the shard count is
    /// fixed when the cluster is created, so an answer without shards, from a node whose
    /// copy of the registry has not caught up (a member that lost its data and rejoined),
    /// never replaces a table that has them.
    pub fn supersedes(&self, current: Option<&Layout>) -> bool {
        self.shard_count != 0 || current.is_none_or(|c| c.shard_count == 0)
    }

    /// Why the layout cannot serve every shard, or `None` when every shard has a leader.
    pub fn unsettled(&self) -> Option<String> {
        if self.shard_count == 0 {
            return Some("the cluster has no shards yet".into());
        }
        self.shards
            .iter()
            .position(|s| s.leader.is_none_or(|id| !self.nodes.contains_key(&id)))
            .map(|shard| format!("shard {shard} has no leader"))
    }
}

/// What the router last heard from the cluster, which decides its readiness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contact {
    /// When the routing table was last refreshed from a node's answer.
    pub refreshed: Option<Instant>,
    /// Why the last refresh failed, when it did.
    pub refresh_failure: Option<String>,
    /// When a shard leader last answered a call.
    pub leader_answered: Option<Instant>,
    /// When a call to a shard leader last failed (the node did not answer, or could not
    /// serve it).
    pub leader_failed: Option<Instant>,
}

/// Why a router is not ready at `now`, or `None` when it is: its routing table is loaded
/// and every shard has a leader in it, the last refresh succeeded at most `max_age` ago,
/// and shard leaders answer (it is not ready when calls to them failed within `max_age`
/// and none answered in that time).
pub fn readiness(
    layout: Option<&Layout>,
    contact: &Contact,
    now: Instant,
    max_age: Duration,
) -> Option<String> {
    let Some(layout) = layout else {
        return Some("the routing table is not loaded yet".into());
    };
    let recent =
        |at: Option<Instant>| at.is_some_and(|at| now.saturating_duration_since(at) <= max_age);
    if let Some(failure) = &contact.refresh_failure {
        return Some(format!(
            "the routing table could not be refreshed: {failure}"
        ));
    }
    if !recent(contact.refreshed) {
        return Some(format!(
            "the routing table is stale: no node has answered for more than {max_age:?}"
        ));
    }
    if let Some(reason) = layout.unsettled() {
        return Some(reason);
    }
    if recent(contact.leader_failed) && !recent(contact.leader_answered) {
        return Some(format!(
            "calls to shard leaders fail and none has answered for more than {max_age:?}"
        ));
    }
    None
}

/// The routing table and the channels to the nodes.
pub struct RoutingTable {
    seeds: Vec<String>,
    settings: RouterSection,
    transport: ClusterTransport,
    metrics: RouterMetrics,
    layout: RwLock<Option<Arc<Layout>>>,
    contact: Mutex<Contact>,
    channels: Mutex<HashMap<String, Channel>>,
    prompt: Notify,
    rotation: AtomicUsize,
}

/// Whether a failed call may succeed if tried again (possibly elsewhere).
fn retryable(code: Code) -> bool {
    !matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
            | Code::OutOfRange
    )
}

/// Whether a failed call says the node asked is no longer (or not yet) usable as leader.
fn leader_lost(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::FailedPrecondition
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Unknown
    )
}

impl RoutingTable {
    /// An empty table that learns the cluster from `settings.seeds`, calling nodes over
    /// `transport`.
    pub fn new(
        settings: RouterSection,
        metrics: RouterMetrics,
        transport: ClusterTransport,
    ) -> RoutingTable {
        RoutingTable {
            seeds: settings.seeds.clone(),
            settings,
            transport,
            metrics,
            layout: RwLock::new(None),
            contact: Mutex::new(Contact::default()),
            channels: Mutex::new(HashMap::new()),
            prompt: Notify::new(),
            rotation: AtomicUsize::new(0),
        }
    }

    /// The current layout, once a node has answered.
    pub fn layout(&self) -> Option<Arc<Layout>> {
        self.layout.read().expect("layout lock").clone()
    }

    /// Why the router is not ready (see [`readiness`]), or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        let contact = self.contact.lock().expect("contact lock").clone();
        readiness(
            self.layout().as_deref(),
            &contact,
            Instant::now(),
            self.settings.ready_max_age(),
        )
    }

    /// Notes what a call to a shard leader gave: an answer (`answered`) or a failure.
    fn note_leader(&self, answered: bool) {
        let mut contact = self.contact.lock().expect("contact lock");
        let at = Some(Instant::now());
        if answered {
            contact.leader_answered = at;
        } else {
            contact.leader_failed = at;
        }
    }

    /// A client of the node at `address`, sharing one channel per address.
    pub fn client(&self, address: &str) -> Result<NodeClient<Channel>, Status> {
        let mut channels = self.channels.lock().expect("channel lock");
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .transport
                    .channel(address, |endpoint| {
                        endpoint
                            .connect_timeout(Duration::from_secs(1))
                            .timeout(self.settings.rpc_timeout())
                            .tcp_nodelay(true)
                    })
                    .map_err(|e| Status::invalid_argument(format!("address {address}: {e}")))?;
                channels.insert(address.to_owned(), channel.clone());
                channel
            }
        };
        Ok(NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Asks for a refresh soon (coalesced with other requests).
    pub fn prompt_refresh(&self) {
        self.prompt.notify_one();
    }

    /// The cluster status from the first node that answers (known nodes first, then
    /// seeds); the table is updated from it.
    pub async fn cluster_status(&self) -> Result<ClusterStatusReply, CallError> {
        let mut candidates: Vec<String> = self
            .layout()
            .map(|l| l.nodes.values().cloned().collect())
            .unwrap_or_default();
        candidates.extend(self.seeds.iter().cloned());
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        let known = candidates.len() - self.seeds.len();
        if known > 0 {
            candidates[..known].rotate_left(start % known);
        }
        let mut problems = Vec::new();
        let mut asked = Vec::new();
        for address in candidates {
            if asked.contains(&address) {
                continue;
            }
            let answer = async {
                self.client(&address)?
                    .cluster_status(ClusterStatusRequest { digests: false })
                    .await
            }
            .await;
            match answer {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let layout = Layout::from_status(&reply);
                    if layout.supersedes(self.layout().as_deref()) {
                        self.install(layout);
                        return Ok(reply);
                    }
                    problems.push(format!(
                        "{address}: has not caught up with the cluster (it knows no shards)"
                    ));
                }
                Err(status) => problems.push(format!("{address}: {}", status.message())),
            }
            asked.push(address);
        }
        let reason = problems.join("; ");
        self.contact.lock().expect("contact lock").refresh_failure = Some(reason.clone());
        Err(CallError::Unreachable { reason })
    }

    fn install(&self, layout: Layout) {
        *self.layout.write().expect("layout lock") = Some(Arc::new(layout));
        let mut contact = self.contact.lock().expect("contact lock");
        contact.refreshed = Some(Instant::now());
        contact.refresh_failure = None;
    }

    /// Refreshes the table periodically, and soon after [`RoutingTable::prompt_refresh`], until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            let result = match self.cluster_status().await {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(error = %e, "routing table refresh failed");
                    "failed"
                }
            };
            self.metrics
                .table_refreshes
                .with_label_values(&[result])
                .inc();
            let period = match self.not_ready() {
                None => self.settings.refresh(),
                Some(_) => self.settings.refresh().min(UNSETTLED_REFRESH),
            };
            let prompted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(period) => false,
                () = self.prompt.notified() => true,
            };
            if prompted {
                tokio::time::sleep(MIN_REFRESH_GAP).await;
            }
        }
    }

    /// The leader of `shard` as (node id, address), when known.
    fn leader(&self, shard: u32) -> Result<Option<(u64, String)>, CallError> {
        let layout = self.layout().ok_or(CallError::NotReady)?;
        let route = layout
            .shards
            .get(shard as usize)
            .ok_or(CallError::Refused {
                shard,
                code: Code::InvalidArgument,
                message: format!("the cluster has {} shards", layout.shard_count),
            })?;
        Ok(route
            .leader
            .and_then(|id| Some((id, layout.nodes.get(&id)?.clone()))))
    }

    /// Records what a call learned about `shard`'s leader: `leader` (id and address), or
    /// that `previous` no longer leads it (`leader` = `None`).
    fn learn_leader(&self, shard: u32, previous: u64, leader: Option<(u64, String)>) {
        let mut guard = self.layout.write().expect("layout lock");
        let Some(current) = guard.as_mut() else {
            return;
        };
        let layout = Arc::make_mut(current);
        let Some(route) = layout.shards.get_mut(shard as usize) else {
            return;
        };
        match leader {
            Some((id, address)) => {
                route.leader = Some(id);
                layout.nodes.insert(id, address);
            }
            None if route.leader == Some(previous) => route.leader = None,
            None => {}
        }
    }

    /// Calls `shard`'s leader, following NotLeader hints and retrying with exponential
    /// backoff while the shard has no reachable leader, for up to `router.retry_for_ms`.
    pub async fn call_leader<T, F, Fut>(&self, shard: u32, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(NodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.settings.retry_for();
        let mut backoff = Duration::from_millis(self.settings.backoff_initial_ms);
        let mut hops = 0;
        loop {
            let problem = match self.leader(shard)? {
                None => {
                    self.prompt_refresh();
                    format!("shard {shard} has no known leader")
                }
                Some((id, address)) => {
                    let answer = match self.client(&address) {
                        Ok(client) => call(client).await,
                        Err(status) => Err(status),
                    };
                    let status = match answer {
                        Ok(reply) => {
                            self.note_leader(true);
                            return Ok(reply.into_inner());
                        }
                        Err(status) => status,
                    };
                    match leader_hint(&status) {
                        Some(hint) if hint.0 != id => {
                            self.metrics.not_leader_redirects.inc();
                            self.learn_leader(shard, id, Some(hint));
                            hops += 1;
                            if hops <= MAX_HOPS {
                                continue;
                            }
                            self.prompt_refresh();
                            format!("redirected {hops} times")
                        }
                        _ if !retryable(status.code()) => {
                            self.note_leader(true);
                            return Err(CallError::Refused {
                                shard,
                                code: status.code(),
                                message: status.message().to_owned(),
                            });
                        }
                        _ => {
                            self.note_leader(false);
                            if leader_lost(status.code()) {
                                self.learn_leader(shard, id, None);
                                self.prompt_refresh();
                            }
                            format!("node {id} at {address}: {}", status.message())
                        }
                    }
                }
            };
            hops = 0;
            if Instant::now() + backoff > deadline {
                return Err(CallError::Unavailable {
                    shard,
                    reason: problem,
                });
            }
            self.metrics.retries.inc();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(self.settings.backoff_max_ms));
        }
    }

    /// Calls any replica of `shard` (for reads that may be stale), trying the replicas in
    /// turn and then the leader with [`RoutingTable::call_leader`].
    pub async fn call_replica<T, F, Fut>(&self, shard: u32, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(NodeClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let layout = self.layout().ok_or(CallError::NotReady)?;
        let mut replicas: Vec<String> = layout
            .shards
            .get(shard as usize)
            .map(|route| {
                route
                    .replicas
                    .iter()
                    .filter_map(|id| layout.nodes.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default();
        if !replicas.is_empty() {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) % replicas.len();
            replicas.rotate_left(start);
        }
        for address in replicas {
            if let Ok(client) = self.client(&address) {
                match call(client).await {
                    Ok(reply) => return Ok(reply.into_inner()),
                    Err(status) if !retryable(status.code()) => {
                        return Err(CallError::Refused {
                            shard,
                            code: status.code(),
                            message: status.message().to_owned(),
                        })
                    }
                    Err(_) => self.metrics.retries.inc(),
                }
            }
        }
        self.call_leader(shard, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sentinel_proto::v1::{NodeInfo, ReplicaInfo, ShardInfo};

    fn status(leaders: &[Option<u64>]) -> ClusterStatusReply {
        ClusterStatusReply {
            shard_count: leaders.len() as u32,
            replication_factor: 2,
            metadata_leader: Some(1),
            nodes: (1..=2)
                .map(|id| NodeInfo {
                    id,
                    ordinal: id,
                    address: format!("127.0.0.1:{}", 7400 + id),
                    state: "active".into(),
                })
                .collect(),
            shards: leaders
                .iter()
                .enumerate()
                .map(|(shard, leader)| ShardInfo {
                    shard: shard as u32,
                    leader: *leader,
                    term: 1,
                    desired: vec![1, 2],
                    replicas: [1, 2]
                        .map(|node| ReplicaInfo {
                            node,
                            role: "voter".into(),
                            ..ReplicaInfo::default()
                        })
                        .to_vec(),
                })
                .collect(),
        }
    }

    fn table() -> RoutingTable {
        let settings: RouterSection = serde_json::from_value(serde_json::json!({
            "seeds": ["127.0.0.1:1"],
            "retry_for_ms": 300,
            "backoff_initial_ms": 10,
        }))
        .unwrap();
        RoutingTable::new(
            settings,
            RouterMetrics::new().unwrap(),
            ClusterTransport::Insecure,
        )
    }

    #[test]
    fn a_layout_is_ready_when_every_shard_has_a_known_leader() {
        let layout = Layout::from_status(&status(&[Some(1), Some(2)]));
        assert_eq!(layout.unsettled(), None);
        assert_eq!(layout.shards[1].replicas, [1, 2]);
        let layout = Layout::from_status(&status(&[Some(1), None]));
        assert_eq!(layout.unsettled().unwrap(), "shard 1 has no leader");
        let layout = Layout::from_status(&status(&[Some(9)]));
        assert!(layout.unsettled().is_some());
    }

    #[test]
    fn an_answer_without_shards_never_replaces_a_table_with_them() {
        let formed = Layout::from_status(&status(&[Some(1), Some(2)]));
        let lagging = Layout::from_status(&status(&[]));
        assert!(!lagging.supersedes(Some(&formed)));
        assert!(
            lagging.supersedes(None),
            "a cluster still forming has no shards"
        );
        assert!(lagging.supersedes(Some(&lagging)));
        assert!(formed.supersedes(Some(&lagging)));
        assert!(formed.supersedes(Some(&formed)));
    }

    #[test]
    fn hints_move_a_leader_and_failures_forget_only_the_failed_one() {
        let table = table();
        assert!(matches!(table.leader(0), Err(CallError::NotReady)));
        assert!(table.not_ready().is_some());
        table.install(Layout::from_status(&status(&[Some(1), Some(1)])));
        assert_eq!(table.not_ready(), None);
        table.learn_leader(0, 1, Some((3, "127.0.0.1:7403".into())));
        assert_eq!(
            table.leader(0).unwrap().unwrap(),
            (3, "127.0.0.1:7403".into())
        );
        table.learn_leader(0, 1, None);
        assert_eq!(table.leader(0).unwrap().unwrap().0, 3);
        table.learn_leader(1, 1, None);
        assert_eq!(table.leader(1).unwrap(), None);
        assert!(table.not_ready().is_some());
    }

    #[test]
    fn readiness_needs_a_fresh_table_with_leaders_and_leaders_that_answer() {
        let now = Instant::now();
        let age = Duration::from_secs(10);
        let ago = |secs| Some(now - Duration::from_secs(secs));
        let settled = Layout::from_status(&status(&[Some(1), Some(2)]));
        let leaderless = Layout::from_status(&status(&[Some(1), None]));
        let fresh = Contact {
            refreshed: ago(1),
            ..Contact::default()
        };
        let cases = [
            (None, fresh.clone(), Some("not loaded")),
            (Some(&settled), fresh.clone(), None),
            (
                Some(&leaderless),
                fresh.clone(),
                Some("shard 1 has no leader"),
            ),
            (
                Some(&settled),
                Contact {
                    refreshed: ago(11),
                    ..Contact::default()
                },
                Some("stale"),
            ),
            (
                Some(&settled),
                Contact {
                    refresh_failure: Some("127.0.0.1:1: connection refused".into()),
                    ..fresh.clone()
                },
                Some("connection refused"),
            ),
            (
                Some(&settled),
                Contact {
                    leader_failed: ago(2),
                    leader_answered: ago(12),
                    ..fresh.clone()
                },
                Some("calls to shard leaders fail"),
            ),
            (
                Some(&settled),
                Contact {
                    leader_failed: ago(2),
                    leader_answered: ago(3),
                    ..fresh.clone()
                },
                None,
            ),
            (
                Some(&settled),
                Contact {
                    leader_failed: ago(11),
                    ..fresh.clone()
                },
                None,
            ),
        ];
        for (layout, contact, expected) in cases {
            let verdict = readiness(layout, &contact, now, age);
            match expected {
                None => assert_eq!(verdict, None, "{contact:?}"),
                Some(part) => assert!(
                    verdict.as_deref().is_some_and(|v| v.contains(part)),
                    "{contact:?}: {verdict:?}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn a_leaderless_shard_is_retried_then_reported_unavailable() {
        let table = table();
        table.install(Layout::from_status(&status(&[None])));
        let mut calls = 0;
        let err = table
            .call_leader(0, |mut client| {
                calls += 1;
                async move { client.cluster_status(ClusterStatusRequest::default()).await }
            })
            .await;
        assert!(matches!(err, Err(CallError::Unavailable { shard: 0, .. })));
        assert_eq!(calls, 0);
    }
}
