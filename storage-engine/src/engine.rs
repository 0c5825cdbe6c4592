//! The node's storage engine: opens shard replicas and document groups on the one
//! RocksDB, drops shards that moved away, and reports its size and counters.

use std::path::Path;
use std::sync::Arc;

use openraft::LogId;
use rocksdb::WriteBatch;

use crate::backend::{Backend, EngineOptions, EngineStats};
use crate::document::{Document, DocumentConfig, DocumentMachine, DocumentReader};
use crate::error::{decode, encode, Error};
use crate::keys;
use crate::log::ShardLog;
use crate::machine::{ShardStateMachine, ShardStore};
use crate::reader::ShardReader;
use crate::TypeConfig;

/// What RocksDB reports of its size and of slowed or stopped writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksDbStats {
    /// Bytes of the SST files the current version of the database uses.
    pub live_sst_bytes: u64,
    /// Bytes compaction must rewrite to bring every level within its target size.
    pub pending_compaction_bytes: u64,
    /// Bytes held by the memtables, active and immutable.
    pub memtable_bytes: u64,
    /// Whether RocksDB stopped writes (too many level-0 files, memtables or pending
    /// compaction bytes).
    pub write_stopped: bool,
    /// The rate RocksDB slows writes to, in bytes a second; 0 while it does not.
    pub delayed_write_rate: u64,
}

/// Size and free space of the file system holding the engine's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeStats {
    /// Bytes of the file system.
    pub size_bytes: u64,
    /// Bytes an unprivileged process may still write.
    pub available_bytes: u64,
}

/// One RocksDB holding the Raft logs and state of every shard replica on a node.
pub struct Engine {
    backend: Arc<Backend>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.backend.dir)
            .finish()
    }
}

impl Engine {
    /// Opens (creating if needed) the engine in `dir`.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Arc<Engine>, Error> {
        Ok(Arc::new(Engine {
            backend: Backend::open(dir, options)?,
        }))
    }

    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.backend.dir
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &EngineStats {
        &self.backend.stats
    }

    /// RocksDB's size and write-stall properties.
    pub fn rocksdb_stats(&self) -> Result<RocksDbStats, Error> {
        let property = |name: &str| -> Result<u64, Error> {
            Ok(self.backend.db.property_int_value(name)?.unwrap_or(0))
        };
        Ok(RocksDbStats {
            live_sst_bytes: property("rocksdb.live-sst-files-size")?,
            pending_compaction_bytes: property("rocksdb.estimate-pending-compaction-bytes")?,
            memtable_bytes: property("rocksdb.cur-size-all-mem-tables")?,
            write_stopped: property("rocksdb.is-write-stopped")? != 0,
            delayed_write_rate: property("rocksdb.actual-delayed-write-rate")?,
        })
    }

    /// Size and free space of the file system holding the engine's directory.
    pub fn volume_stats(&self) -> Result<VolumeStats, Error> {
        let stats = rustix::fs::statvfs(&self.backend.dir).map_err(std::io::Error::from)?;
        Ok(VolumeStats {
            size_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
            available_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        })
    }

    /// Groups (shards and documents) that have data on this node, ascending. What a
    /// dropped replica leaves behind (`drop_shard`) is not data: those are the last kinds
    /// of a group's keys, so a group whose first key is one of them holds nothing else.
    pub fn shard_ids(&self) -> Result<Vec<u32>, Error> {
        let mut out = Vec::new();
        let mut iter = self.backend.db.raw_iterator();
        iter.seek_to_first();
        while iter.valid() {
            let Some(shard) = iter.key().and_then(keys::shard_of_key) else {
                break;
            };
            if !iter.key().is_some_and(|key| keys::is_kept(shard, key)) {
                out.push(shard);
            }
            if shard == u32::MAX {
                break;
            }
            iter.seek(keys::shard_end(shard));
        }
        iter.status()?;
        Ok(out)
    }

    /// Opens one shard replica: its Raft log, its state machine and a reader for queries.
    pub fn open_shard(
        &self,
        shard: u32,
    ) -> Result<(ShardLog, ShardStateMachine, ShardReader), Error> {
        self.backend.claim(shard)?;
        let store = match ShardStore::open(self.backend.clone(), shard) {
            Ok(store) => Arc::new(store),
            Err(e) => {
                self.backend.release(shard);
                return Err(e);
            }
        };
        Ok((
            ShardLog::new(self.backend.clone(), shard),
            ShardStateMachine::new(store.clone()),
            ShardReader::new(store),
        ))
    }

    /// Opens a document group (state small enough to live in memory whole): its Raft log,
    /// its state machine and a reader.
    #[allow(clippy::type_complexity)]
    pub fn open_document<C: DocumentConfig<S>, S: Document>(
        &self,
        group: u32,
    ) -> Result<(ShardLog<C>, DocumentMachine<C, S>, DocumentReader<S>), Error> {
        self.backend.claim(group)?;
        let (machine, reader) = match DocumentMachine::open(self.backend.clone(), group) {
            Ok(opened) => opened,
            Err(e) => {
                self.backend.release(group);
                return Err(e);
            }
        };
        Ok((ShardLog::new(self.backend.clone(), group), machine, reader))
    }

    /// Deletes every key and snapshot of a shard that is not open (the shard moved away)
    /// but its Raft vote and the last log id it held ([`Engine::dropped_log_id`]): a
    /// replica opened here again must not take a leader or candidate older than one it
    /// already followed, nor vote for a log shorter than one it acknowledged, or a stale
    /// leader could commit on it.
    pub fn drop_shard(&self, shard: u32) -> Result<(), Error> {
        if self.backend.is_open(shard) {
            return Err(Error::ShardOpen(shard));
        }
        let held = ShardLog::<TypeConfig>::new(self.backend.clone(), shard).last_log_id()?;
        let dropped = held.max(self.dropped_log_id(shard)?);
        let from = shard.to_be_bytes().to_vec();
        let to = keys::shard_end(shard);
        let vote = keys::kind(shard, keys::VOTE);
        let kept = self.backend.db.get(&vote)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(&from, &to);
        if let Some(kept) = kept {
            batch.put(&vote, kept);
        }
        if dropped.is_some() {
            batch.put(keys::kind(shard, keys::DROPPED), encode(&dropped));
        }
        self.backend.write(batch, true)?;
        self.backend.db.compact_range(Some(&from), Some(&to));
        match std::fs::remove_dir_all(self.backend.snapshot_dir(shard)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// The highest last log id of the replicas of `shard` dropped on this node: a replica
    /// of the shard here votes only for a candidate whose log is at least as long, as it
    /// would had it kept its log (Raft's election restriction).
    pub fn dropped_log_id(&self, shard: u32) -> Result<Option<LogId<u64>>, Error> {
        match self
            .backend
            .db
            .get_pinned(keys::kind(shard, keys::DROPPED))?
        {
            Some(bytes) => decode("dropped log id", &bytes),
            None => Ok(None),
        }
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.backend.db.flush_wal(true)?)
    }
}
