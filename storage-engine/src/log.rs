//! A shard's Raft log, vote and committed index, in the node's RocksDB.
//!
//! Appends are written at once (visible to readers) without waiting for the disk; one
//! WAL fsync then makes the appends of every shard durable together. RocksDB's WAL is a
//! single ordered stream, so a durable append implies every earlier write of any shard
//! (truncations, purges, applied rows) is durable too: after a crash the log is a prefix
//! of what was written.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogReader, RaftTypeConfig, StorageError, Vote};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::backend::Backend;
use crate::error::{decode, encode, read_err, write_err, Error};
use crate::keys;
use crate::TypeConfig;

/// The Raft log storage of one group: a shard replica or, with another type config, the
/// metadata group.
#[derive(Debug, Clone)]
pub struct ShardLog<C = TypeConfig> {
    backend: Arc<Backend>,
    shard: u32,
    config: PhantomData<C>,
}

/// A type config whose log this storage can hold.
pub trait LogConfig: RaftTypeConfig<NodeId = u64, Entry = Entry<Self>> {}

impl<C: RaftTypeConfig<NodeId = u64, Entry = Entry<C>>> LogConfig for C {}

impl<C: LogConfig> ShardLog<C> {
    pub(crate) fn new(backend: Arc<Backend>, shard: u32) -> Self {
        ShardLog {
            backend,
            shard,
            config: PhantomData,
        }
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        kind: u8,
        what: &'static str,
    ) -> Result<Option<T>, Error> {
        match self.backend.db.get_pinned(keys::kind(self.shard, kind))? {
            Some(bytes) => Ok(Some(decode(what, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put<T: serde::Serialize>(&self, kind: u8, value: &T, sync: bool) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.put(keys::kind(self.shard, kind), encode(value));
        self.backend.write(batch, sync)
    }

    /// Entries with index in `[start, end)`, in order.
    pub(crate) fn entries(&self, start: u64, end: u64) -> Result<Vec<Entry<C>>, Error> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(keys::log(self.shard, end));
        let from = keys::log(self.shard, start);
        for item in self
            .backend
            .db
            .iterator_opt(IteratorMode::From(&from, Direction::Forward), options)
        {
            let (_, value) = item?;
            out.push(decode("log entry", &value)?);
        }
        Ok(out)
    }

    /// The id of the last entry appended, or of the last purged when none is left.
    pub(crate) fn last_log_id(&self) -> Result<Option<LogId<u64>>, Error> {
        let purged: Option<LogId<u64>> = self.get(keys::PURGED, "purged log id")?;
        Ok(self.last_entry()?.map(|e| e.log_id).or(purged))
    }

    fn last_entry(&self) -> Result<Option<Entry<C>>, Error> {
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(keys::log(self.shard, 0));
        options.set_iterate_upper_bound(keys::kind_end(self.shard, keys::LOG));
        let mut iter = self.backend.db.iterator_opt(IteratorMode::End, options);
        match iter.next() {
            Some(item) => {
                let (key, value) = item?;
                debug_assert!(keys::log_index(&key).is_some());
                Ok(Some(decode("log entry", &value)?))
            }
            None => Ok(None),
        }
    }
}

fn range_to_indexes<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C: LogConfig> RaftLogReader<C> for ShardLog<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<C>>, StorageError<u64>> {
        let (start, end) = range_to_indexes(&range);
        self.entries(start, end).map_err(read_err)
    }
}

impl<C: LogConfig> RaftLogStorage<C> for ShardLog<C> {
    type LogReader = ShardLog<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId<u64>> =
            self.get(keys::PURGED, "purged log id").map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: self.last_log_id().map_err(read_err)?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.put(keys::VOTE, vote, true).map_err(write_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.get(keys::VOTE, "vote").map_err(read_err)
    }

    /// Written at once and made durable by the next group fsync, which is requested here.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        self.put(keys::COMMITTED, &committed, false)
            .map_err(write_err)?;
        self.backend.request_sync();
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self
            .get::<Option<LogId<u64>>>(keys::COMMITTED, "committed log id")
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<C>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let mut bytes = 0;
        for entry in entries {
            let value = encode(&entry);
            bytes += value.len() as u64;
            batch.put(keys::log(self.shard, entry.log_id.index), value);
        }
        self.backend.write(batch, false).map_err(write_err)?;
        self.backend
            .stats
            .log_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        self.backend.after_sync(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut batch = WriteBatch::default();
        batch.delete_range(
            keys::log(self.shard, log_id.index),
            keys::kind_end(self.shard, keys::LOG),
        );
        self.backend.write(batch, false).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut batch = WriteBatch::default();
        batch.put(keys::kind(self.shard, keys::PURGED), encode(&log_id));
        batch.delete_range(
            keys::log(self.shard, 0),
            keys::log(self.shard, log_id.index.saturating_add(1)),
        );
        self.backend.write(batch, false).map_err(write_err)
    }
}
