//! A small replicated document: a Raft group whose whole state fits in memory and is
//! written whole after every apply (the cluster's node registry, for one).
//!
//! The document, the last applied log id and the membership are stored together under
//! the group's meta key; the last built snapshot under its snapshot key. Both writes ride
//! on the WAL like every other write of the group, so after a crash the stored document is
//! never ahead of the durable log.

use std::fmt::Debug;
use std::io::Cursor;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StoredMembership,
};
use rocksdb::WriteBatch;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{decode, encode, read_err, write_err, Error};
use crate::keys;
use crate::log::LogConfig;

/// State replicated whole by a document group.
pub trait Document:
    Default + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// What the group's log carries.
    type Command;
    /// What applying a command answers; the default answers blank and membership entries.
    type Response: Default;

    /// Applies one committed command; must be deterministic.
    fn apply(&mut self, command: &Self::Command) -> Self::Response;
}

/// A type config whose state machine is a [`Document`].
pub trait DocumentConfig<S: Document>:
    LogConfig<Node = BasicNode, D = S::Command, R = S::Response, SnapshotData = Cursor<Vec<u8>>>
{
}

impl<S: Document, C> DocumentConfig<S> for C where
    C: LogConfig<Node = BasicNode, D = S::Command, R = S::Response, SnapshotData = Cursor<Vec<u8>>>
{
}

/// What a document group stores: the document as of a log position.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied<S> {
    /// Last applied log id.
    pub last_applied: Option<LogId<u64>>,
    /// Membership as of the last applied entry.
    pub membership: StoredMembership<u64, BasicNode>,
    /// The document.
    pub document: S,
}

type Built = (SnapshotMeta<u64, BasicNode>, Vec<u8>);

struct DocumentStore<S> {
    backend: Arc<Backend>,
    group: u32,
    applied: RwLock<Applied<S>>,
}

impl<S> Drop for DocumentStore<S> {
    fn drop(&mut self) {
        self.backend.release(self.group);
    }
}

/// The openraft state machine of a document group.
pub struct DocumentMachine<C, S> {
    store: Arc<DocumentStore<S>>,
    config: PhantomData<C>,
}

/// Read access to a document group's state.
#[derive(Clone)]
pub struct DocumentReader<S> {
    store: Arc<DocumentStore<S>>,
}

impl<S: Document> DocumentReader<S> {
    /// The document as last applied on this replica.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied<S>> {
        self.store.applied.read().expect("document lock")
    }
}

impl<C: DocumentConfig<S>, S: Document> DocumentMachine<C, S> {
    /// Opens the group's stored document (empty when there is none).
    pub(crate) fn open(
        backend: Arc<Backend>,
        group: u32,
    ) -> Result<(DocumentMachine<C, S>, DocumentReader<S>), Error> {
        let applied = match backend.db.get_pinned(keys::kind(group, keys::META))? {
            Some(bytes) => decode("document", &bytes)?,
            None => Applied::default(),
        };
        let store = Arc::new(DocumentStore {
            backend,
            group,
            applied: RwLock::new(applied),
        });
        Ok((
            DocumentMachine {
                store: store.clone(),
                config: PhantomData,
            },
            DocumentReader { store },
        ))
    }

    fn persist(&self, applied: &Applied<S>, sync: bool) -> Result<(), Error> {
        let mut batch = WriteBatch::default();
        batch.put(keys::kind(self.store.group, keys::META), encode(applied));
        self.store.backend.write(batch, sync)
    }

    fn built(&self) -> Result<Option<Built>, Error> {
        match self
            .store
            .backend
            .db
            .get_pinned(keys::kind(self.store.group, keys::SNAPSHOT))?
        {
            Some(bytes) => Ok(Some(decode("document snapshot", &bytes)?)),
            None => Ok(None),
        }
    }

    fn snapshot(meta: SnapshotMeta<u64, BasicNode>, bytes: Vec<u8>) -> Snapshot<C> {
        Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }
    }
}

impl<C: DocumentConfig<S>, S: Document> RaftSnapshotBuilder<C> for DocumentMachine<C, S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<C>, StorageError<u64>> {
        let (meta, bytes) = {
            let applied = self.store.applied.read().expect("document lock");
            let id = match applied.last_applied {
                Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
                None => "empty".to_owned(),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership.clone(),
                snapshot_id: id,
            };
            (meta, encode(&applied.document))
        };
        let mut batch = WriteBatch::default();
        batch.put(
            keys::kind(self.store.group, keys::SNAPSHOT),
            encode(&(&meta, &bytes)),
        );
        self.store.backend.write(batch, false).map_err(write_err)?;
        Ok(Self::snapshot(meta, bytes))
    }
}

impl<C: DocumentConfig<S>, S: Document> RaftStateMachine<C> for DocumentMachine<C, S> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let applied = self.store.applied.read().expect("document lock");
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<S::Response>, StorageError<u64>>
    where
        I: IntoIterator<Item = C::Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.store.applied.write().expect("document lock");
        let mut responses = Vec::new();
        for entry in entries {
            responses.push(match entry.payload {
                EntryPayload::Blank => S::Response::default(),
                EntryPayload::Normal(ref command) => applied.document.apply(command),
                EntryPayload::Membership(ref membership) => {
                    applied.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    S::Response::default()
                }
            });
            applied.last_applied = Some(entry.log_id);
        }
        self.persist(&applied, false).map_err(write_err)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        DocumentMachine {
            store: self.store.clone(),
            config: PhantomData,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let document: S = decode("document snapshot", &bytes).map_err(read_err)?;
        let installed = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            document,
        };
        let mut batch = WriteBatch::default();
        batch.put(
            keys::kind(self.store.group, keys::SNAPSHOT),
            encode(&(meta, &bytes)),
        );
        batch.put(keys::kind(self.store.group, keys::META), encode(&installed));
        self.store.backend.write(batch, true).map_err(write_err)?;
        *self.store.applied.write().expect("document lock") = installed;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<C>>, StorageError<u64>> {
        Ok(self
            .built()
            .map_err(read_err)?
            .map(|(meta, bytes)| Self::snapshot(meta, bytes)))
    }
}
