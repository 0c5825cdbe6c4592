//! Sentinel's gRPC schemas (package `sentinel.v1`) and their generated code.

/// Generated messages, clients and servers of package `sentinel.v1`.
pub mod v1 {
    tonic::include_proto!("sentinel.v1");
}

/// The OTLP trace messages Sentinel decodes from OTLP/HTTP protobuf bodies.
pub mod otlp {
    tonic::include_proto!("sentinel.otlp");
}

pub mod error;
pub mod json;

pub use error::ErrorCode;

/// The encoded descriptors of every `sentinel.v1` file and its imports, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sentinel");

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Trailer naming a shard's leader as `<node id>@<address>`.
pub const LEADER_TRAILER: &str = "sentinel-leader";

/// The status answering a call that needs a shard's leader on a replica that is not it.
pub fn not_leader(group: u32, leader: Option<(u64, &str)>) -> Status {
    let mut status =
        ErrorCode::WrongNode.status(format!("this node is not the leader of shard {group}"));
    if let Some((id, address)) = leader {
        if let Ok(value) = MetadataValue::try_from(format!("{id}@{address}")) {
            status.metadata_mut().insert(LEADER_TRAILER, value);
        }
    }
    status
}

/// The leader named by a [`not_leader`] status, as (node id, address).
pub fn leader_hint(status: &Status) -> Option<(u64, String)> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    let value = status.metadata().get(LEADER_TRAILER)?.to_str().ok()?;
    let (id, address) = value.split_once('@')?;
    Some((id.parse().ok()?, address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hint_round_trips() {
        let status = not_leader(7, Some((3, "127.0.0.3:7400")));
        assert_eq!(
            leader_hint(&status),
            Some((3, "127.0.0.3:7400".to_string()))
        );
        assert_eq!(leader_hint(&not_leader(7, None)), None);
        assert_eq!(leader_hint(&Status::unavailable("down")), None);
    }
}
