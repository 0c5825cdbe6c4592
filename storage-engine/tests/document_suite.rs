//! openraft's conformance suite against a document group, and a document surviving a
//! restart of its engine.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, StorageError};
use sentinel_storage_engine::{Document, DocumentMachine, Engine, EngineOptions, ShardLog};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

/// Counters by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Counters(BTreeMap<String, u64>);

/// Adds one to a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Bump(String);

impl Document for Counters {
    type Command = Bump;
    type Response = u64;

    fn apply(&mut self, command: &Bump) -> u64 {
        let count = self.0.entry(command.0.clone()).or_default();
        *count += 1;
        *count
    }
}

openraft::declare_raft_types!(
    Config:
        D = Bump,
        R = u64,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<Config>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

type Log = ShardLog<Config>;
type Machine = DocumentMachine<Config, Counters>;

struct Builder;

impl StoreBuilder<Config, Log, Machine, (Arc<Engine>, TempDir)> for Builder {
    async fn build(&self) -> Result<((Arc<Engine>, TempDir), Log, Machine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("engine opens");
        let (log, machine, _reader) = engine
            .open_document::<Config, Counters>(u32::MAX)
            .expect("document opens");
        Ok(((engine, dir), log, machine))
    }
}

#[test]
fn openraft_storage_suite_passes_for_documents() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn bump(index: u64, name: &str) -> Entry<Config> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 0), index),
        payload: EntryPayload::Normal(Bump(name.to_owned())),
    }
}

#[tokio::test]
async fn document_survives_restart_and_shard_groups_beside_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("engine opens");
        let (mut log, mut machine, reader) = engine
            .open_document::<Config, Counters>(u32::MAX)
            .expect("document opens");
        assert!(engine.open_document::<Config, Counters>(u32::MAX).is_err());
        let entries = vec![bump(1, "a"), bump(2, "b"), bump(3, "a")];
        log.blocking_append(entries.clone()).await.expect("append");
        let answers = machine.apply(entries).await.expect("apply");
        assert_eq!(answers, vec![1, 1, 2]);
        assert_eq!(reader.read().document.0["a"], 2);
        engine
            .open_shard(0)
            .expect("a shard opens beside the document");
        engine.sync().expect("sync");
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("engine reopens");
    assert!(engine.shard_ids().expect("groups").contains(&u32::MAX));
    let (_, mut machine, reader) = engine
        .open_document::<Config, Counters>(u32::MAX)
        .expect("document reopens");
    let (applied, _) = machine.applied_state().await.expect("applied state");
    assert_eq!(applied.map(|id| id.index), Some(3));
    assert_eq!(
        reader.read().document,
        Counters(BTreeMap::from([("a".into(), 2), ("b".into(), 1)]))
    );
}
