//! Errors of the storage engine.

use openraft::{AnyError, StorageError, StorageIOError};

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

/// Encodes a value as MessagePack (self-describing, so JSON values in events survive).
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("in-memory values always encode as MessagePack")
}

/// Decodes a MessagePack value.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, Error> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::corrupt(what, e))
}

/// Converts to openraft's error for a read of `subject`.
pub(crate) fn read_err(e: Error) -> StorageError<u64> {
    StorageIOError::read(AnyError::new(&e)).into()
}

/// Converts to openraft's error for a write.
pub(crate) fn write_err(e: Error) -> StorageError<u64> {
    StorageIOError::write(AnyError::new(&e)).into()
}
