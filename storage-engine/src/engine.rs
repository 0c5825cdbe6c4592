//! The node's one RocksDB, shared by every shard, and the group commit of log appends.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use openraft::RaftTypeConfig;
use rocksdb::{BlockBasedOptions, Cache, Options, WriteBatch, WriteOptions, DB};

use crate::command::{IngestOutcome, ShardSettings};
use crate::document::{Document, DocumentConfig, DocumentMachine, DocumentReader};
use crate::error::Error;
use crate::keys;
use crate::log::ShardLog;
use crate::machine::{ShardStateMachine, ShardStore};
use crate::reader::ShardReader;

/// Tuning of the storage engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Events applied between checkpoints of a shard's core state (other entries count as
    /// one); a restart re-applies about this many events per shard at most.
    pub checkpoint_events: u64,
    /// Size of RocksDB's block cache shared by all shards.
    pub block_cache_bytes: usize,
    /// Settings of a shard that has applied nothing yet.
    pub shard_settings: ShardSettings,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            checkpoint_events: 100_000,
            block_cache_bytes: 256 << 20,
            shard_settings: ShardSettings::default(),
        }
    }
}

/// Counters of the log's group commit.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Log appends acknowledged as durable.
    pub log_appends: AtomicU64,
    /// WAL fsyncs that made them durable.
    pub log_syncs: AtomicU64,
    /// Encoded bytes of log entries appended.
    pub log_bytes: AtomicU64,
    /// Ingest batches applied by the shard state machines.
    pub ingest_batches: AtomicU64,
    /// Time spent applying them (detection and the rows it writes, before the write to
    /// RocksDB), nanoseconds.
    pub ingest_apply_nanos: AtomicU64,
    /// Detector hits folded into alerts already open (dedup), rather than raised.
    pub alerts_folded: AtomicU64,
    /// Incident changes recorded without a notification (silenced, or not worth one).
    pub notifications_withheld: AtomicU64,
}

impl EngineStats {
    /// Counts an applied ingest batch: the time it took and what its detection folded
    /// or withheld.
    pub(crate) fn count_ingest(&self, took: std::time::Duration, outcome: &IngestOutcome) {
        self.ingest_batches.fetch_add(1, Ordering::Relaxed);
        self.ingest_apply_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        self.alerts_folded
            .fetch_add(outcome.folded, Ordering::Relaxed);
        self.notifications_withheld
            .fetch_add(outcome.withheld, Ordering::Relaxed);
    }
}

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
    pub(crate) db: Arc<DB>,
    dir: PathBuf,
    pub(crate) options: EngineOptions,
    flusher: Arc<Flusher>,
    flusher_thread: Option<JoinHandle<()>>,
    open_shards: Mutex<HashSet<u32>>,
    stats: Arc<EngineStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("dir", &self.dir).finish()
    }
}

/// Reports the outcome of the fsync an append waits for.
type FlushCallback = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// Appends waiting for the next WAL fsync.
#[derive(Default)]
struct Flusher {
    queue: Mutex<FlushQueue>,
    wake: Condvar,
}

#[derive(Default)]
struct FlushQueue {
    waiting: Vec<FlushCallback>,
    /// A write nobody waits for must reach the disk with the next fsync.
    sync_requested: bool,
    stop: bool,
}

impl Engine {
    /// Opens (creating if needed) the engine in `dir`.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Arc<Engine>, Error> {
        std::fs::create_dir_all(dir.join("snapshots"))?;
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_options.increase_parallelism(2);
        db_options.set_max_total_wal_size(256 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(options.block_cache_bytes));
        table.set_bloom_filter(10.0, false);
        db_options.set_block_based_table_factory(&table);
        let db = Arc::new(DB::open(&db_options, dir.join("db"))?);
        let flusher = Arc::new(Flusher::default());
        let stats = Arc::new(EngineStats::default());
        let flusher_thread = {
            let (db, flusher, stats) = (db.clone(), flusher.clone(), stats.clone());
            std::thread::Builder::new()
                .name("sentinel-log-sync".into())
                .spawn(move || flusher.run(&db, &stats))?
        };
        Ok(Arc::new(Engine {
            db,
            dir: dir.to_path_buf(),
            options,
            flusher,
            flusher_thread: Some(flusher_thread),
            open_shards: Mutex::new(HashSet::new()),
            stats,
        }))
    }

    /// The directory the engine lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// RocksDB's size and write-stall properties.
    pub fn rocksdb_stats(&self) -> Result<RocksDbStats, Error> {
        let property = |name: &str| -> Result<u64, Error> {
            Ok(self.db.property_int_value(name)?.unwrap_or(0))
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
        let stats = rustix::fs::statvfs(&self.dir).map_err(std::io::Error::from)?;
        Ok(VolumeStats {
            size_bytes: stats.f_blocks.saturating_mul(stats.f_frsize),
            available_bytes: stats.f_bavail.saturating_mul(stats.f_frsize),
        })
    }

    /// Groups (shards and documents) that have data on this node, ascending.
    pub fn shard_ids(&self) -> Result<Vec<u32>, Error> {
        let mut out = Vec::new();
        let mut iter = self.db.raw_iterator();
        iter.seek_to_first();
        while iter.valid() {
            let Some(shard) = iter.key().and_then(keys::shard_of_key) else {
                break;
            };
            out.push(shard);
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
        self: &Arc<Self>,
        shard: u32,
    ) -> Result<(ShardLog, ShardStateMachine, ShardReader), Error> {
        self.claim(shard)?;
        let store = match ShardStore::open(self.clone(), shard) {
            Ok(store) => Arc::new(store),
            Err(e) => {
                self.release(shard);
                return Err(e);
            }
        };
        Ok((
            ShardLog::new(self.clone(), shard),
            ShardStateMachine::new(store.clone()),
            ShardReader::new(store),
        ))
    }

    /// Opens a document group (state small enough to live in memory whole): its Raft log,
    /// its state machine and a reader.
    #[allow(clippy::type_complexity)]
    pub fn open_document<C: DocumentConfig<S>, S: Document>(
        self: &Arc<Self>,
        group: u32,
    ) -> Result<(ShardLog<C>, DocumentMachine<C, S>, DocumentReader<S>), Error> {
        self.claim(group)?;
        let (machine, reader) = match DocumentMachine::open(self.clone(), group) {
            Ok(opened) => opened,
            Err(e) => {
                self.release(group);
                return Err(e);
            }
        };
        Ok((ShardLog::new(self.clone(), group), machine, reader))
    }

    /// Marks a group open; a group is open at most once.
    fn claim(&self, group: u32) -> Result<(), Error> {
        if self
            .open_shards
            .lock()
            .expect("open-shard set")
            .insert(group)
        {
            Ok(())
        } else {
            Err(Error::ShardOpen(group))
        }
    }

    /// Deletes every key and snapshot of a shard that is not open; the shard moved away.
    pub fn drop_shard(&self, shard: u32) -> Result<(), Error> {
        if self
            .open_shards
            .lock()
            .expect("open-shard set")
            .contains(&shard)
        {
            return Err(Error::ShardOpen(shard));
        }
        let from = shard.to_be_bytes().to_vec();
        let to = keys::shard_end(shard);
        let mut batch = WriteBatch::default();
        batch.delete_range(&from, &to);
        self.write(batch, true)?;
        self.db.compact_range(Some(&from), Some(&to));
        match std::fs::remove_dir_all(self.snapshot_dir(shard)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Makes every write so far durable.
    pub fn sync(&self) -> Result<(), Error> {
        Ok(self.db.flush_wal(true)?)
    }

    /// Where a shard's snapshot files live.
    pub(crate) fn snapshot_dir(&self, shard: u32) -> PathBuf {
        self.dir.join("snapshots").join(shard.to_string())
    }

    /// Writes a batch; `sync` waits for the WAL to reach the disk.
    pub(crate) fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), Error> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        Ok(self.db.write_opt(batch, &options)?)
    }

    /// Reports `callback` once everything written so far is durable.
    pub(crate) fn after_sync<C: RaftTypeConfig>(&self, callback: LogFlushed<C>) {
        self.flusher
            .queue
            .lock()
            .expect("flush queue")
            .waiting
            .push(Box::new(move |result| callback.log_io_completed(result)));
        self.flusher.wake.notify_one();
    }

    /// Makes everything written so far durable soon, without waiting for it.
    pub(crate) fn request_sync(&self) {
        self.flusher
            .queue
            .lock()
            .expect("flush queue")
            .sync_requested = true;
        self.flusher.wake.notify_one();
    }

    pub(crate) fn release(&self, shard: u32) {
        self.open_shards
            .lock()
            .expect("open-shard set")
            .remove(&shard);
    }
}

impl Flusher {
    /// Syncs the WAL once for all appends (and sync requests) queued while the previous sync ran.
    fn run(&self, db: &DB, stats: &EngineStats) {
        loop {
            let waiting = {
                let mut queue = self.queue.lock().expect("flush queue");
                while queue.waiting.is_empty() && !queue.sync_requested && !queue.stop {
                    queue = self.wake.wait(queue).expect("flush queue");
                }
                if queue.waiting.is_empty() && !queue.sync_requested {
                    return;
                }
                queue.sync_requested = false;
                std::mem::take(&mut queue.waiting)
            };
            let result = db.flush_wal(true);
            stats.log_syncs.fetch_add(1, Ordering::Relaxed);
            stats
                .log_appends
                .fetch_add(waiting.len() as u64, Ordering::Relaxed);
            for callback in waiting {
                callback(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
            }
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.flusher.queue.lock().expect("flush queue").stop = true;
        self.flusher.wake.notify_one();
        if let Some(thread) = self.flusher_thread.take() {
            let _ = thread.join();
        }
    }
}
