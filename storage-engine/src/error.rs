//! Errors of the storage engine.

use openraft::{AnyError, StorageError, StorageIOError};
use sentinel_core::codec;

/// What can go wrong storing or reading shard data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB refused an operation.
    #[error("rocksdb: {0}")]
    Db(#[from] rocksdb::Error),
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes could not be decoded.
    #[error("corrupt {what}: {reason}")]
    Corrupt {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// The shard is already open in this process.
    #[error("shard {0} is already open")]
    ShardOpen(u32),
    /// A page cursor did not come from a previous page of this query.
    #[error("invalid page cursor")]
    InvalidCursor,
}

impl Error {
    pub(crate) fn corrupt(what: &'static str, reason: impl ToString) -> Self {
        Error::Corrupt {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Encodes a value in Sentinel's binary encoding (`sentinel_core::codec`: a format byte,
/// then MessagePack, self-describing, so JSON values in events survive).
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value)
}

/// Decodes a value written by [`encode`], or by an earlier version as bare MessagePack
/// (no valid MessagePack value starts with the format byte, so the two cannot be
/// mistaken for each other).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    let decoded = if codec::is_current(bytes) {
        codec::decode(bytes)
    } else {
        codec::decode_body(bytes)
    };
    decoded.map_err(|e| Error::corrupt(what, e))
}

/// The bytes of a value [`encode`] wrote, or an earlier version wrote bare, as [`encode`]
/// writes them now: what a digest hashes, so replicas agree whichever version wrote a row.
pub(crate) fn current_form(bytes: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if codec::is_current(bytes) {
        std::borrow::Cow::Borrowed(bytes)
    } else {
        let mut current = Vec::with_capacity(bytes.len() + 1);
        current.push(codec::FORMAT);
        current.extend_from_slice(bytes);
        std::borrow::Cow::Owned(current)
    }
}

/// Converts to openraft's error for a read of `subject`.
pub(crate) fn read_err(e: Error) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

/// Converts to openraft's error for a write.
pub(crate) fn write_err(e: Error) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}
