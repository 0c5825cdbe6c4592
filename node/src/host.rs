//! The Raft groups a node hosts: the metadata group and its shard replicas, each an
//! openraft instance over the node's one storage engine and shared peer channels.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::{BasicNode, Raft, RaftMetrics, SnapshotPolicy};
use sentinel_storage_engine::{
    DocumentReader, Engine, EngineOptions, Error as StorageError, ShardReader, ShardSettings,
    TypeConfig,
};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::intake::Intake;
use crate::placement::Placement;
use crate::registry::{MetaConfig, Registry, METADATA_GROUP};
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
}

impl Replica {
    /// The current Raft metrics.
    pub fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }
}

/// Everything a node hosts.
pub struct Host {
    /// This node's id.
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
    pub intake: Intake,
    registry: DocumentReader<Registry>,
    replicas: RwLock<BTreeMap<u32, Arc<Replica>>>,
    opening: tokio::sync::Mutex<()>,
    shard_raft: Arc<openraft::Config>,
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
    /// Opens the node's storage and every Raft group stored in it.
    pub async fn open(config: NodeConfig) -> Result<Arc<Host>, NodeError> {
        let id = config.node.id;
        let engine = Engine::open(&config.node.data_dir, EngineOptions::default())?;
        let peers = Peers::new(id);
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
        .map_err(|e| NodeError::Raft {
            group: METADATA_GROUP,
            message: e.to_string(),
        })?;
        let intake = Intake::new(&config.ingest)?;
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
        .map_err(|e| NodeError::Raft {
            group: shard,
            message: e.to_string(),
        })?;
        let replica = Arc::new(Replica {
            shard,
            raft,
            reader,
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
