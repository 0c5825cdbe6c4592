//! Calls a node makes on the cluster: clients of its peers, registry changes on the
//! metadata leader, and membership changes of a Raft group.

use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, RaftMetrics};
use sentinel_proto::not_leader;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::ErrorCode;
use tonic::Status;

use crate::error::RoundError;
use crate::host::Host;
use crate::registry::{RegistryCommand, RegistryResponse, METADATA_GROUP};
use crate::transport::{Peers, MAX_MESSAGE_BYTES};

/// How long a node waits for a peer's status.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the node at `address`.
pub fn client(host: &Host, address: &str) -> Result<NodeClient<tonic::transport::Channel>, Status> {
    node_client(&host.peers, address)
}

/// A client of the node at `address` over `peers`' channels.
pub fn node_client(
    peers: &Peers,
    address: &str,
) -> Result<NodeClient<tonic::transport::Channel>, Status> {
    let channel = peers
        .channel(address)
        .map_err(|e| ErrorCode::InvalidParameters.status(format!("address `{address}`: {e}")))?;
    Ok(NodeClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// The metadata group's latest metrics.
pub fn meta_metrics(host: &Host) -> RaftMetrics<u64, BasicNode> {
    host.meta.metrics().borrow().clone()
}

/// Proposes a registry change on the metadata leader (this node) or names the leader.
pub async fn propose(host: &Host, command: RegistryCommand) -> Result<(), Status> {
    match write(host, command).await? {
        RegistryResponse::Refused(reason) => Err(ErrorCode::Conflict.status(reason)),
        _ => Ok(()),
    }
}

/// Writes a registry change on the metadata leader (this node) and answers what it
/// applied to, or names the leader.
pub async fn write(host: &Host, command: RegistryCommand) -> Result<RegistryResponse, Status> {
    match host.meta.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(e) => Err(match e.forward_to_leader::<BasicNode>() {
            Some(forward) => not_leader(
                METADATA_GROUP,
                forward
                    .leader_id
                    .zip(forward.leader_node.as_ref())
                    .map(|(id, node)| (id, node.addr.as_str())),
            ),
            None => ErrorCode::Unavailable.status(format!("metadata group: {e}")),
        }),
    }
}

/// Proposes a membership change; `retain` keeps removed voters as learners.
pub async fn change<C>(
    raft: &openraft::Raft<C>,
    change: ChangeMembers<u64, BasicNode>,
    retain: bool,
) -> Result<(), RoundError>
where
    C: openraft::RaftTypeConfig<
        NodeId = u64,
        Node = BasicNode,
        Responder = openraft::impls::OneshotResponder<C>,
    >,
{
    raft.change_membership(change, retain)
        .await
        .map(|_| ())
        .map_err(RoundError::raft)
}
