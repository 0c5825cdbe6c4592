//! The node's one RocksDB as every shard's log, state machine and reader use it: writes,
//! the group commit of log appends (one WAL fsync for all waiting appends), and the set of
//! open groups.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use openraft::storage::LogFlushed;
use openraft::RaftTypeConfig;
use rocksdb::{BlockBasedOptions, Cache, Options, WriteBatch, WriteOptions, DB};

use crate::command::{IngestOutcome, ShardSettings};
use crate::error::Error;

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

/// The RocksDB of a node and what goes with it.
pub(crate) struct Backend {
    pub(crate) db: Arc<DB>,
    pub(crate) dir: PathBuf,
    pub(crate) options: EngineOptions,
    flusher: Arc<Flusher>,
    flusher_thread: Option<JoinHandle<()>>,
    open_groups: Mutex<HashSet<u32>>,
    pub(crate) stats: Arc<EngineStats>,
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

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("dir", &self.dir).finish()
    }
}

impl Backend {
    /// Opens (creating if needed) the database in `dir` and starts its group commit.
    pub fn open(dir: &Path, options: EngineOptions) -> Result<Arc<Backend>, Error> {
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
        Ok(Arc::new(Backend {
            db,
            dir: dir.to_path_buf(),
            options,
            flusher,
            flusher_thread: Some(flusher_thread),
            open_groups: Mutex::new(HashSet::new()),
            stats,
        }))
    }

    /// Marks a group open; a group is open at most once.
    pub(crate) fn claim(&self, group: u32) -> Result<(), Error> {
        if self
            .open_groups
            .lock()
            .expect("open-shard set")
            .insert(group)
        {
            Ok(())
        } else {
            Err(Error::ShardOpen(group))
        }
    }

    /// Whether a group is open.
    pub(crate) fn is_open(&self, group: u32) -> bool {
        self.open_groups
            .lock()
            .expect("open-shard set")
            .contains(&group)
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

    /// Marks a group closed.
    pub(crate) fn release(&self, shard: u32) {
        self.open_groups
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

impl Drop for Backend {
    fn drop(&mut self) {
        self.flusher.queue.lock().expect("flush queue").stop = true;
        self.flusher.wake.notify_one();
        if let Some(thread) = self.flusher_thread.take() {
            let _ = thread.join();
        }
    }
}
