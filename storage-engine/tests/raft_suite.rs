//! openraft's own conformance suite, run against the RocksDB storage.

use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError, Vote};
use sentinel_storage_engine::{Engine, EngineOptions, ShardLog, ShardStateMachine, TypeConfig};
use tempfile::TempDir;

/// Each store is shard 7 of a fresh engine whose neighbours, shards 6 and 8, hold a vote,
/// a committed index and log entries: a read or delete crossing a shard's key range
/// breaks the suite.
struct Builder;

type Guard = (Vec<ShardLog>, Arc<Engine>, TempDir);

impl StoreBuilder<TypeConfig, ShardLog, ShardStateMachine, Guard> for Builder {
    async fn build(&self) -> Result<(Guard, ShardLog, ShardStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("engine opens");
        let mut neighbours = Vec::new();
        for shard in [6, 8] {
            let (mut log, _, _) = engine.open_shard(shard).expect("neighbour opens");
            log.save_vote(&Vote::new(9, 2)).await?;
            let entries = (0..40).map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(9, 2), index),
                payload: EntryPayload::Blank,
            });
            log.blocking_append(entries).await?;
            log.save_committed(Some(LogId::new(CommittedLeaderId::new(9, 2), 39)))
                .await?;
            neighbours.push(log);
        }
        let (log, machine, _reader) = engine.open_shard(7).expect("shard opens");
        Ok(((neighbours, engine, dir), log, machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
