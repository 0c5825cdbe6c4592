//! The Raft groups a node hosts: the metadata group and its shard replicas, each an
//! openraft instance over the node's one storage engine and shared peer channels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::Fatal;
use openraft::{BasicNode, Raft, RaftMetrics, RaftTypeConfig, ServerState, SnapshotPolicy};
use prometheus::IntCounter;
use sentinel_storage_engine::{
    DocumentReader, Engine, EngineOptions, Error as StorageError, ShardReader, ShardSettings,
    TypeConfig,
};

use sentinel_tls::ClusterTransport;

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::handover::HandOver;
use crate::intake::ShardIntake;
use crate::placement::Placement;
use crate::registry::{MetaConfig, Registry, METADATA_GROUP};
use crate::steadiness::Steadiness;
use crate::transport::{GroupNetwork, Peers};

/// openraft instance of a shard replica.
pub type ShardRaft = Raft<TypeConfig>;
/// openraft instance of the metadata group.
pub type MetaRaft = Raft<MetaConfig>;

/// One shard replica hosted here.
pub struct Replica {
    /// Shard id.
    pub shard: u32,
    /// Its Raft instance.
    pub raft: ShardRaft,
    /// Its state, for queries.
    pub reader: ShardReader,
    /// The leadership hand-over in progress here, if any.
    pub hand_over: HandOver,
}

impl Replica {
    /// The current Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        last_report(&self.raft)
    }

    /// Goes quiet for a hand-over until `until` at most: heartbeats stop, and writes and
    /// leadership-confirming reads are refused; false when one is already in progress.
    pub fn begin_hand_over(&self, until: tokio::time::Instant) -> bool {
        let begun = self.hand_over.begin(until);
        if begun {
            self.raft.runtime_config().heartbeat(false);
        }
        begun
    }

    /// Ends the hand-over in progress once this node no longer leads or its time is up
    /// (`force`: in any case); heartbeats resume.
    pub fn end_hand_over(&self, node: u64, force: bool) {
        let leading = leads(&self.metrics(), node);
        let ended = if force {
            self.hand_over.end()
        } else {
            self.hand_over
                .end_if_done(leading, tokio::time::Instant::now())
        };
        if ended {
            self.raft.runtime_config().heartbeat(true);
        }
    }
}

/// A group's last report (see [`as_reported`]).
pub fn last_report<C>(raft: &Raft<C>) -> RaftMetrics<u64, BasicNode>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    let reports = raft.metrics();
    let last = reports.borrow().clone();
    as_reported(last, reports.has_changed().is_err())
}

/// `last`, the final report of a core that is `gone` (its report sender dropped): a core
/// that stops, asked to or on an error, reports why first, so one gone while its report
/// still says running ended in a panic.
pub fn as_reported(
    mut last: RaftMetrics<u64, BasicNode>,
    gone: bool,
) -> RaftMetrics<u64, BasicNode> {
    if gone && last.running_state.is_ok() {
        last.running_state = Err(Fatal::Panicked);
    }
    last
}

/// Why a Raft group can no longer serve: its core stopped on an error (a storage failure
/// such as a full disk) or panicked; `None` while it runs and after a requested stop.
pub fn group_failure(metrics: &RaftMetrics<u64, BasicNode>) -> Option<String> {
    match &metrics.running_state {
        Ok(()) | Err(Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

/// Whether `node` leads the group: openraft's last report, trusted only while its core runs
/// (a stopped core's last report still names it leader).
pub fn leads(metrics: &RaftMetrics<u64, BasicNode>, node: u64) -> bool {
    metrics.running_state.is_ok()
        && metrics.state == ServerState::Leader
        && metrics.current_leader == Some(node)
}

/// The leader a replica knows: openraft's `current_leader`, but never the replica itself
/// while it does not lead (a leader removed from its group stops leading, yet keeps the
/// committed vote that names it).
pub fn known_leader(metrics: &RaftMetrics<u64, BasicNode>) -> Option<u64> {
    metrics
        .current_leader
        .filter(|&leader| leader != metrics.id || leads(metrics, leader))
}

/// Everything a node hosts.
pub struct Host {
    /// This node's Raft member id (its configured id is `config.node.id`).
    pub id: u64,
    /// Its configuration.
    pub config: NodeConfig,
    /// Its storage engine.
    pub engine: Arc<Engine>,
    /// Channels to peers.
    pub peers: Arc<Peers>,
    /// The metadata group.
    pub meta: MetaRaft,
    /// Parsing, validation and redaction of incoming events.
    pub intake: ShardIntake,
    registry: DocumentReader<Registry>,
    replicas: RwLock<BTreeMap<u32, Arc<Replica>>>,
    opening: tokio::sync::Mutex<()>,
    shard_raft: Arc<openraft::Config>,
    steadiness: Mutex<Steadiness>,
}

fn raft_config(
    config: &NodeConfig,
    snapshot_every: u64,
) -> Result<Arc<openraft::Config>, NodeError> {
    let raft = &config.raft;
    openraft::Config {
        cluster_name: "sentinel".into(),
        heartbeat_interval: raft.heartbeat_ms,
        election_timeout_min: raft.election_timeout_min_ms,
        election_timeout_max: raft.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 1000,
        max_payload_entries: 64,
        snapshot_max_chunk_size: 1 << 20,
        install_snapshot_timeout: 10_000,
        // The election loop (`elections`) decides elections, counting out pauses.
        enable_elect: false,
        ..Default::default()
    }
    .validate()
    .map(Arc::new)
    .map_err(|e| NodeError::Config {
        key: "raft".into(),
        problem: e.to_string(),
    })
}

impl Host {
    /// Opens the node's storage and every Raft group stored in it, as Raft member `id`;
    /// peers are called over `transport`, and the snapshot bytes they acknowledge
    /// counted in `snapshot_bytes_sent`.
    pub async fn open(
        config: NodeConfig,
        id: u64,
        transport: ClusterTransport,
        snapshot_bytes_sent: IntCounter,
    ) -> Result<Arc<Host>, NodeError> {
        let engine = Engine::open(&config.node.data_dir, EngineOptions::default())?;
        let peers = Peers::new(id, transport, snapshot_bytes_sent);
        let shard_raft = raft_config(&config, config.raft.snapshot_every_entries)?;
        let (log, machine, registry) =
            engine.open_document::<MetaConfig, Registry>(METADATA_GROUP)?;
        let meta = Raft::new(
            id,
            raft_config(&config, 1000)?,
            GroupNetwork::new(peers.clone(), METADATA_GROUP),
            log,
            machine,
        )
        .await
        .map_err(|e| NodeError::raft(METADATA_GROUP, e))?;
        let intake = ShardIntake::new(&config.ingest)?;
        let host = Arc::new(Host {
            id,
            config,
            engine: engine.clone(),
            peers,
            meta,
            intake,
            registry,
            replicas: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            shard_raft,
            steadiness: Mutex::new(Steadiness::default()),
        });
        for group in engine.shard_ids()? {
            if group != METADATA_GROUP {
                host.ensure_replica(group).await?;
            }
        }
        Ok(host)
    }

    /// The shard settings this node's configuration asks for.
    pub fn shard_settings(&self) -> ShardSettings {
        ShardSettings {
            detection: self.config.detection.clone(),
            export: self.config.export.is_some(),
            keys: self.config.ingest.key_limits(),
            ..ShardSettings::default()
        }
    }

    /// The registry as this node last applied it.
    pub fn registry(&self) -> Registry {
        self.registry.read().document.clone()
    }

    /// Number of shards (0 before the cluster is created), without copying the registry.
    pub fn shard_count(&self) -> u32 {
        self.registry.read().document.shards
    }

    /// The placement the registry asks for.
    pub fn placement(&self) -> Placement {
        Placement::compute(&self.registry.read().document)
    }

    /// The address of a node (this node's own even before it is registered).
    pub fn address(&self, node: u64) -> Option<String> {
        if node == self.id {
            return Some(self.config.node.advertised());
        }
        self.registry
            .read()
            .document
            .address(node)
            .map(str::to_owned)
    }

    /// Records whether the node is ready at `now` (see [`Steadiness::observe`]).
    pub fn observe_steadiness(&self, now: tokio::time::Instant, ready: bool) {
        self.steadiness
            .lock()
            .expect("steadiness lock")
            .observe(now, ready);
    }

    /// Whether this node may take a preferred leadership now: steady for
    /// `raft.leader_hold_ms`; otherwise why not.
    pub fn may_take_leadership(&self) -> Result<(), String> {
        let hold = Duration::from_millis(self.config.raft.leader_hold_ms);
        self.steadiness
            .lock()
            .expect("steadiness lock")
            .verdict(tokio::time::Instant::now(), hold)
    }

    /// The first group (the metadata group first, then shards in order) whose Raft core
    /// stopped on an error, with the error.
    pub fn failure(&self) -> Option<(u32, String)> {
        let meta = group_failure(&last_report(&self.meta)).map(|e| (METADATA_GROUP, e));
        meta.or_else(|| {
            self.replicas()
                .iter()
                .find_map(|r| group_failure(&r.metrics()).map(|e| (r.shard, e)))
        })
    }

    /// Resolves with the first group failure (see [`Host::failure`]), checking every
    /// `period`.
    pub async fn failed(&self, period: Duration) -> (u32, String) {
        loop {
            if let Some(failure) = self.failure() {
                return failure;
            }
            tokio::time::sleep(period).await;
        }
    }

    /// The local replica of `shard`, if hosted here.
    pub fn replica(&self, shard: u32) -> Option<Arc<Replica>> {
        self.replicas
            .read()
            .expect("replica map")
            .get(&shard)
            .cloned()
    }

    /// Every local shard replica, by shard id.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .read()
            .expect("replica map")
            .values()
            .cloned()
            .collect()
    }

    /// The local replica of `shard`, created empty when missing: a leader adding this node
    /// fills it by replication.
    pub async fn ensure_replica(&self, shard: u32) -> Result<Arc<Replica>, NodeError> {
        if let Some(replica) = self.replica(shard) {
            return Ok(replica);
        }
        let _opening = self.opening.lock().await;
        if let Some(replica) = self.replica(shard) {
            return Ok(replica);
        }
        let (log, machine, reader) = self.engine.open_shard(shard)?;
        let raft = Raft::new(
            self.id,
            self.shard_raft.clone(),
            GroupNetwork::new(self.peers.clone(), shard),
            log,
            machine,
        )
        .await
        .map_err(|e| NodeError::raft(shard, e))?;
        let replica = Arc::new(Replica {
            shard,
            raft,
            reader,
            hand_over: HandOver::default(),
        });
        self.replicas
            .write()
            .expect("replica map")
            .insert(shard, replica.clone());
        tracing::info!(shard, "opened shard replica");
        Ok(replica)
    }

    /// Stops the local replica of `shard` and deletes its data once nothing uses it any
    /// more: the shard moved away.
    pub async fn drop_replica(self: &Arc<Self>, shard: u32) {
        let Some(replica) = self.replicas.write().expect("replica map").remove(&shard) else {
            return;
        };
        shutdown(&replica).await;
        let host = self.clone();
        tokio::spawn(async move {
            // The caller and queries in flight hold the replica for a moment.
            let mut replica = replica;
            while let Err(shared) = Arc::try_unwrap(replica) {
                replica = shared;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _opening = host.opening.lock().await;
            for _ in 0..200 {
                match host.engine.drop_shard(shard) {
                    Err(StorageError::ShardOpen(_)) => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "could not delete a dropped replica");
                        return;
                    }
                    Ok(()) => {
                        tracing::info!(shard, "dropped shard replica");
                        return;
                    }
                }
            }
            tracing::warn!(shard, "a dropped replica stayed open; its data is kept");
        });
    }

    /// Stops every Raft group and makes all writes durable.
    pub async fn shutdown(&self) {
        let replicas: Vec<Arc<Replica>> =
            std::mem::take(&mut *self.replicas.write().expect("replica map"))
                .into_values()
                .collect();
        for replica in &replicas {
            shutdown(replica).await;
        }
        if let Err(e) = self.meta.shutdown().await {
            tracing::warn!(error = %e, "metadata group did not stop cleanly");
        }
        if let Err(e) = self.engine.sync() {
            tracing::warn!(error = %e, "final sync failed");
        }
    }
}

async fn shutdown(replica: &Replica) {
    if let Err(e) = replica.raft.shutdown().await {
        tracing::warn!(shard = replica.shard, error = %e, "shard replica did not stop cleanly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{AnyError, StorageError, StorageIOError};

    fn metrics(
        state: ServerState,
        leader: Option<u64>,
        running: Result<(), Fatal<u64>>,
    ) -> RaftMetrics<u64, BasicNode> {
        let mut metrics = RaftMetrics::new_initial(1);
        metrics.state = state;
        metrics.current_leader = leader;
        metrics.running_state = running;
        metrics
    }

    #[test]
    fn a_group_whose_core_stopped_on_an_error_neither_leads_nor_hides_it() {
        let disk_full: Fatal<u64> = Fatal::StorageError(StorageError::from(StorageIOError::write(
            AnyError::error("No space left on device"),
        )));
        let cases = [
            (ServerState::Leader, Some(1), Ok(()), true, None),
            (ServerState::Follower, Some(2), Ok(()), false, None),
            (
                ServerState::Leader,
                Some(1),
                Err(Fatal::Stopped),
                false,
                None,
            ),
            (
                ServerState::Shutdown,
                Some(1),
                Err(disk_full),
                false,
                Some("No space left on device"),
            ),
            (
                ServerState::Shutdown,
                Some(1),
                Err(Fatal::Panicked),
                false,
                Some("panicked"),
            ),
        ];
        for (state, leader, running, leading, failure) in cases {
            let m = metrics(state, leader, running);
            assert_eq!(as_reported(m.clone(), false), m);
            assert_eq!(leads(&m, 1), leading, "{m:?}");
            let found = group_failure(&m);
            match failure {
                None => assert_eq!(found, None),
                Some(text) => assert!(
                    found.as_deref().is_some_and(|f| f.contains(text)),
                    "{found:?}"
                ),
            }
        }
    }

    #[test]
    fn a_leader_removed_from_its_group_names_no_leader() {
        let cases = [
            (ServerState::Leader, Some(1), Some(1)),
            (ServerState::Follower, Some(2), Some(2)),
            (ServerState::Follower, Some(1), None),
            (ServerState::Learner, Some(1), None),
            (ServerState::Candidate, None, None),
        ];
        for (state, leader, known) in cases {
            assert_eq!(known_leader(&metrics(state, leader, Ok(()))), known);
        }
    }

    #[test]
    fn a_core_gone_without_a_word_panicked_one_that_said_why_did_not() {
        let running = metrics(ServerState::Leader, Some(1), Ok(()));
        let gone = as_reported(running, true);
        assert_eq!(gone.running_state, Err(Fatal::Panicked));
        assert!(!leads(&gone, 1));
        assert!(group_failure(&gone).is_some_and(|f| f.contains("panicked")));
        let stopped = metrics(ServerState::Shutdown, Some(1), Err(Fatal::Stopped));
        assert_eq!(group_failure(&as_reported(stopped, true)), None);
    }
}
