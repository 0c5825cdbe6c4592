//! A shard's state machine: applying committed entries, checkpoints and snapshots.
//!
//! The core state is checkpointed with its applied log id every
//! [`EngineOptions::checkpoint_events`](crate::EngineOptions) applied events, on every snapshot
//! and on [`crate::ShardReader::checkpoint`]; rows are written as entries apply. After a restart
//! the state machine reports the checkpoint's log id and openraft re-applies the committed
//! entries after it, rewriting the same rows. A snapshot or checkpoint always precedes a log
//! purge, so the entries to re-apply are always still in the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StoredMembership,
};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::backend::Backend;
use crate::command::{Command, Response};
use crate::error::{decode, encode, read_err, write_err, Error};
use crate::keys;
use crate::snapshot::{SnapshotReader, SnapshotWriter};
use crate::state::{RowWriter, ShardState};
use crate::TypeConfig;

/// Core state is stored in values of at most this size.
const CORE_CHUNK: usize = 1 << 20;
/// Rows of an installed snapshot are written in batches of about this size.
const INSTALL_BATCH: usize = 4 << 20;

type Membership = StoredMembership<u64, BasicNode>;
type Meta = SnapshotMeta<u64, BasicNode>;

/// What a checkpoint records besides the core state.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    last_applied: Option<LogId<u64>>,
    membership: Membership,
    generation: u32,
    core_chunks: u32,
}

/// The applied state of a shard replica.
pub(crate) struct Applied {
    pub(crate) core: ShardState,
    pub(crate) last_applied: Option<LogId<u64>>,
    pub(crate) membership: Membership,
    /// Rows live under this generation; installing a snapshot moves to the next one.
    pub(crate) generation: u32,
    since_checkpoint: u64,
    core_chunks: u32,
}

/// Everything of one shard replica shared by its state machine and readers.
pub(crate) struct ShardStore {
    pub(crate) backend: Arc<Backend>,
    pub(crate) shard: u32,
    pub(crate) state: RwLock<Applied>,
    current_snapshot: Mutex<Option<Meta>>,
}

impl ShardStore {
    /// Loads a shard's last checkpoint and clears leftovers of an interrupted snapshot install.
    pub(crate) fn open(backend: Arc<Backend>, shard: u32) -> Result<Self, Error> {
        let meta: Option<CheckpointMeta> =
            match backend.db.get_pinned(keys::kind(shard, keys::META))? {
                Some(bytes) => Some(decode("checkpoint meta", &bytes)?),
                None => None,
            };
        let applied = match meta {
            None => Applied {
                core: ShardState::new(shard, backend.options.shard_settings.clone())
                    .map_err(|e| Error::corrupt("shard settings", e))?,
                last_applied: None,
                membership: Membership::default(),
                generation: 0,
                since_checkpoint: 0,
                core_chunks: 0,
            },
            Some(meta) => {
                let mut bytes = Vec::new();
                for chunk in 0..meta.core_chunks {
                    let part = backend
                        .db
                        .get_pinned(keys::core_chunk(shard, chunk))?
                        .ok_or_else(|| {
                            Error::corrupt("checkpoint", format!("chunk {chunk} missing"))
                        })?;
                    bytes.extend_from_slice(&part);
                }
                Applied {
                    core: ShardState::from_bytes(&bytes)?,
                    last_applied: meta.last_applied,
                    membership: meta.membership,
                    generation: meta.generation,
                    since_checkpoint: 0,
                    core_chunks: meta.core_chunks,
                }
            }
        };
        let mut stale = WriteBatch::default();
        stale.delete_range(keys::rows(shard, 0), keys::rows(shard, applied.generation));
        stale.delete_range(
            keys::rows_end(shard, applied.generation),
            keys::kind_end(shard, keys::ROWS),
        );
        backend.write(stale, false)?;
        let current_snapshot: Option<Meta> =
            match backend.db.get_pinned(keys::kind(shard, keys::SNAPSHOT))? {
                Some(bytes) => Some(decode("snapshot meta", &bytes)?),
                None => None,
            };
        let dir = backend.snapshot_dir(shard);
        if dir.exists() {
            let keep = current_snapshot
                .as_ref()
                .map(|m| snapshot_file_name(&m.snapshot_id));
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if Some(entry.file_name().to_string_lossy().into_owned()) != keep {
                    std::fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(ShardStore {
            backend,
            shard,
            state: RwLock::new(applied),
            current_snapshot: Mutex::new(current_snapshot),
        })
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.state.read().expect("shard state lock")
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.state.write().expect("shard state lock")
    }

    /// Adds a checkpoint of `applied` (whose core state encodes to `core`) to `batch`.
    fn checkpoint_into(&self, applied: &mut Applied, core: &[u8], batch: &mut WriteBatch) {
        let mut chunks = 0u32;
        for (i, part) in core.chunks(CORE_CHUNK).enumerate() {
            batch.put(keys::core_chunk(self.shard, i as u32), part);
            chunks += 1;
        }
        for stale in chunks..applied.core_chunks {
            batch.delete(keys::core_chunk(self.shard, stale));
        }
        applied.core_chunks = chunks;
        applied.since_checkpoint = 0;
        let meta = CheckpointMeta {
            last_applied: applied.last_applied,
            membership: applied.membership.clone(),
            generation: applied.generation,
            core_chunks: chunks,
        };
        batch.put(keys::kind(self.shard, keys::META), encode(&meta));
    }

    /// Writes a checkpoint of the current state.
    pub(crate) fn checkpoint(&self) -> Result<(), Error> {
        let mut applied = self.write();
        let core = applied.core.to_bytes();
        let mut batch = WriteBatch::default();
        self.checkpoint_into(&mut applied, &core, &mut batch);
        self.backend.write(batch, true)
    }

    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.backend
            .snapshot_dir(self.shard)
            .join(snapshot_file_name(id))
    }

    /// Makes `meta` the current snapshot unless a newer one is current; removes the loser's file.
    fn set_current_snapshot(&self, meta: &Meta) -> Result<(), Error> {
        let mut current = self.current_snapshot.lock().expect("snapshot lock");
        let newer = current
            .as_ref()
            .is_none_or(|c| c.last_log_id <= meta.last_log_id);
        let stale = if newer {
            let mut batch = WriteBatch::default();
            batch.put(keys::kind(self.shard, keys::SNAPSHOT), encode(meta));
            self.backend.write(batch, false)?;
            current.replace(meta.clone())
        } else {
            Some(meta.clone())
        };
        if let Some(stale) = stale.filter(|s| s.snapshot_id != meta.snapshot_id || !newer) {
            remove_if_present(&self.snapshot_path(&stale.snapshot_id))?;
        }
        Ok(())
    }

    async fn open_snapshot(&self, meta: Meta) -> Result<Snapshot<TypeConfig>, Error> {
        let file = tokio::fs::File::open(self.snapshot_path(&meta.snapshot_id)).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl Drop for ShardStore {
    fn drop(&mut self) {
        self.backend.release(self.shard);
    }
}

fn snapshot_file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.snap")
}

fn remove_if_present(path: &std::path::Path) -> Result<(), Error> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// The openraft state machine of one shard replica.
pub struct ShardStateMachine {
    store: Arc<ShardStore>,
}

impl ShardStateMachine {
    pub(crate) fn new(store: Arc<ShardStore>) -> Self {
        ShardStateMachine { store }
    }

    /// Applies entries in order; the rows and, when due, a checkpoint go in one write.
    pub(crate) fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> Result<Vec<Response>, Error> {
        let store = &self.store;
        let mut applied = store.write();
        let mut batch = WriteBatch::default();
        let mut responses = Vec::new();
        for entry in entries {
            let response = match entry.payload {
                EntryPayload::Blank => Response::Empty,
                EntryPayload::Normal(ref command) => {
                    let mut rows = RowWriter {
                        batch: &mut batch,
                        shard: store.shard,
                        generation: applied.generation,
                    };
                    let started = std::time::Instant::now();
                    let response = applied.core.apply(command, entry.log_id.index, &mut rows);
                    if let Response::Ingested(outcome) = &response {
                        store.backend.stats.count_ingest(started.elapsed(), outcome);
                    }
                    response
                }
                EntryPayload::Membership(ref membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    Response::Empty
                }
            };
            applied.last_applied = Some(entry.log_id);
            applied.since_checkpoint += match &entry.payload {
                EntryPayload::Normal(Command::Ingest(batch)) => batch.events.len().max(1) as u64,
                _ => 1,
            };
            responses.push(response);
        }
        if applied.since_checkpoint >= store.backend.options.checkpoint_events {
            let core = applied.core.to_bytes();
            store.checkpoint_into(&mut applied, &core, &mut batch);
        }
        store.backend.write(batch, false)?;
        Ok(responses)
    }

    /// Streams an installed snapshot's rows into a fresh generation; returns its core state.
    fn receive(
        store: &ShardStore,
        meta: &Meta,
        file: std::fs::File,
        generation: u32,
    ) -> Result<ShardState, Error> {
        let (mut reader, core_bytes) = SnapshotReader::open(file)?;
        let core = ShardState::from_bytes(&core_bytes)?;
        let dir = store.backend.snapshot_dir(store.shard);
        std::fs::create_dir_all(&dir)?;
        let part = dir.join(format!("{}.part", snapshot_file_name(&meta.snapshot_id)));
        let mut copy = SnapshotWriter::create(&part, &core_bytes)?;
        let prefix = keys::rows(store.shard, generation);
        let mut batch = WriteBatch::default();
        batch.delete_range(prefix.clone(), keys::rows_end(store.shard, generation));
        while let Some((key, value)) = reader.next_row()? {
            copy.row(&key, &value)?;
            let mut full = prefix.clone();
            full.extend_from_slice(&key);
            batch.put(full, &value);
            if batch.size_in_bytes() >= INSTALL_BATCH {
                store.backend.write(std::mem::take(&mut batch), false)?;
            }
        }
        reader.verify()?;
        store.backend.write(batch, false)?;
        copy.finish(&store.snapshot_path(&meta.snapshot_id))?;
        Ok(core)
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = ShardSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, Membership), StorageError<u64>> {
        let applied = self.store.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.apply_entries(entries).map_err(write_err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        ShardSnapshotBuilder::start(self.store.clone()).await
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let dir = self.store.backend.snapshot_dir(self.store.shard);
        let receive = || -> Result<std::fs::File, Error> {
            std::fs::create_dir_all(&dir)?;
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            Ok(std::fs::File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.join(format!("incoming-{nanos}.part")))?)
        };
        let file = receive().map_err(write_err)?;
        Ok(Box::new(tokio::fs::File::from_std(file)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let install_err = |e: Error| -> StorageError<u64> {
            openraft::StorageIOError::write_snapshot(
                Some(meta.signature()),
                openraft::AnyError::new(&e),
            )
            .into()
        };
        let file = snapshot.into_std().await;
        let generation = self.store.read().generation.wrapping_add(1);
        let core = {
            let (store, meta) = (self.store.clone(), meta.clone());
            tokio::task::spawn_blocking(move || {
                let mut file = file;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
                Self::receive(&store, &meta, file, generation)
            })
            .await
            .map_err(|e| install_err(Error::Io(std::io::Error::other(e))))?
            .map_err(install_err)?
        };
        let store = &self.store;
        {
            let mut applied = store.write();
            let old = applied.generation;
            applied.core = core;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
            applied.generation = generation;
            let mut batch = WriteBatch::default();
            let bytes = applied.core.to_bytes();
            store.checkpoint_into(&mut applied, &bytes, &mut batch);
            batch.delete_range(
                keys::rows(store.shard, old),
                keys::rows_end(store.shard, old),
            );
            store.backend.write(batch, true).map_err(install_err)?;
        }
        store.set_current_snapshot(meta).map_err(install_err)?;
        let dir = store.backend.snapshot_dir(store.shard);
        for entry in std::fs::read_dir(&dir).map_err(|e| install_err(e.into()))? {
            let path = entry.map_err(|e| install_err(e.into()))?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("incoming-"))
            {
                remove_if_present(&path).map_err(install_err)?;
            }
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self
            .store
            .current_snapshot
            .lock()
            .expect("snapshot lock")
            .clone();
        match current {
            None => Ok(None),
            Some(meta) => self
                .store
                .open_snapshot(meta)
                .await
                .map(Some)
                .map_err(read_err),
        }
    }
}

/// Writes a snapshot of the state as it was when the builder was made.
pub struct ShardSnapshotBuilder {
    store: Arc<ShardStore>,
    meta: Meta,
    written: Option<oneshot::Receiver<Result<(), Error>>>,
}

impl ShardSnapshotBuilder {
    /// Checkpoints the state, pins a RocksDB snapshot of the rows and starts writing the file.
    ///
    /// Rows change only through the state machine, which is busy here until the RocksDB
    /// snapshot is pinned, so the rows in the file match the core state exactly.
    async fn start(store: Arc<ShardStore>) -> Self {
        let (taken_tx, taken_rx) = oneshot::channel();
        let (written_tx, written_rx) = oneshot::channel();
        let meta = {
            let mut applied = store.write();
            let core = applied.core.to_bytes();
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let snapshot_id = match applied.last_applied {
                Some(l) => format!(
                    "{}-{}-{}-{nanos}",
                    l.leader_id.term, l.leader_id.node_id, l.index
                ),
                None => format!("empty-{nanos}"),
            };
            let meta = Meta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id,
            };
            let mut batch = WriteBatch::default();
            store.checkpoint_into(&mut applied, &core, &mut batch);
            match store.backend.write(batch, false) {
                Err(e) => {
                    let _ = written_tx.send(Err(e));
                    let _ = taken_tx.send(());
                }
                Ok(()) => {
                    let (store, path, generation) = (
                        store.clone(),
                        store.snapshot_path(&meta.snapshot_id),
                        applied.generation,
                    );
                    std::thread::spawn(move || {
                        let pinned = store.backend.db.snapshot();
                        let _ = taken_tx.send(());
                        let written =
                            write_snapshot_file(&store, &pinned, generation, &core, &path);
                        drop(pinned);
                        drop(store);
                        let _ = written_tx.send(written);
                    });
                }
            }
            meta
        };
        let _ = taken_rx.await;
        ShardSnapshotBuilder {
            store,
            meta,
            written: Some(written_rx),
        }
    }
}

fn write_snapshot_file(
    store: &ShardStore,
    pinned: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    generation: u32,
    core: &[u8],
    path: &std::path::Path,
) -> Result<(), Error> {
    std::fs::create_dir_all(store.backend.snapshot_dir(store.shard))?;
    let mut writer = SnapshotWriter::create(&path.with_extension("part"), core)?;
    let prefix = keys::rows(store.shard, generation);
    let mut options = ReadOptions::default();
    options.set_iterate_upper_bound(keys::rows_end(store.shard, generation));
    options.fill_cache(false);
    for item in pinned.iterator_opt(IteratorMode::From(&prefix, Direction::Forward), options) {
        let (key, value) = item?;
        writer.row(&key[prefix.len()..], &value)?;
    }
    writer.finish(path)
}

impl RaftSnapshotBuilder<TypeConfig> for ShardSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let signature = self.meta.signature();
        let err = |e: Error| -> StorageError<u64> {
            openraft::StorageIOError::write_snapshot(
                Some(signature.clone()),
                openraft::AnyError::new(&e),
            )
            .into()
        };
        let written = self
            .written
            .take()
            .ok_or_else(|| err(Error::corrupt("snapshot", "builder used twice")))?;
        written
            .await
            .map_err(|_| err(Error::corrupt("snapshot", "writer thread ended early")))?
            .map_err(err)?;
        let snapshot = self
            .store
            .open_snapshot(self.meta.clone())
            .await
            .map_err(err)?;
        self.store.set_current_snapshot(&self.meta).map_err(err)?;
        Ok(snapshot)
    }
}
