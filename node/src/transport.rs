//! Raft messages of every group over gRPC: one lazily connected HTTP/2 channel per peer,
//! shared by all groups, with requests and replies carried as MessagePack.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftTypeConfig};
use prometheus::IntCounter;
use sentinel_proto::v1::raft_transport_client::RaftTransportClient;
use sentinel_proto::v1::RaftMessage;
use sentinel_tls::ClusterTransport;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::Code;

/// Largest gRPC message a node sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Channels to peers, by address; every group's traffic to one peer shares one.
#[derive(Debug)]
pub struct Peers {
    node_id: u64,
    transport: ClusterTransport,
    channels: Mutex<HashMap<String, Channel>>,
    /// Snapshot bytes that peers acknowledged.
    snapshot_bytes_sent: IntCounter,
}

impl Peers {
    /// Channels for a node with id `node_id`, over `transport`; snapshot bytes sent are
    /// counted in `snapshot_bytes_sent`.
    pub fn new(
        node_id: u64,
        transport: ClusterTransport,
        snapshot_bytes_sent: IntCounter,
    ) -> Arc<Peers> {
        Arc::new(Peers {
            node_id,
            transport,
            channels: Mutex::new(HashMap::new()),
            snapshot_bytes_sent,
        })
    }

    /// The channel to `address` (host:port), created on first use.
    pub fn channel(&self, address: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("peer channels");
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = self.transport.channel(address, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })?;
        channels.insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Creates the connections of one Raft group.
pub struct GroupNetwork<C> {
    peers: Arc<Peers>,
    group: u32,
    config: PhantomData<C>,
}

impl<C> GroupNetwork<C> {
    /// The network of group `group`.
    pub fn new(peers: Arc<Peers>, group: u32) -> Self {
        GroupNetwork {
            peers,
            group,
            config: PhantomData,
        }
    }
}

/// One group's connection to one peer.
pub struct GroupConnection<C> {
    peers: Arc<Peers>,
    group: u32,
    target: u64,
    address: String,
    config: PhantomData<C>,
}

impl<C> RaftNetworkFactory<C> for GroupNetwork<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    type Network = GroupConnection<C>;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GroupConnection<C> {
        GroupConnection {
            peers: self.peers.clone(),
            group: self.group,
            target,
            address: node.addr.clone(),
            config: PhantomData,
        }
    }
}

/// Which RPC of the transport a message is for.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// Encodes a Raft payload.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("Raft messages serialize")
}

/// Decodes a Raft payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

impl<C> GroupConnection<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    async fn call<Req, Resp, E>(
        &self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let channel = self
            .peers
            .channel(&self.address)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut message = tonic::Request::new(RaftMessage {
            group: self.group,
            from: self.peers.node_id,
            payload: encode(request),
            to: Some(self.target),
        });
        message.set_timeout(option.hard_ttl());
        let reply = match rpc {
            Rpc::AppendEntries => client.append_entries(message).await,
            Rpc::Vote => client.vote(message).await,
            Rpc::InstallSnapshot => client.install_snapshot(message).await,
        };
        let reply = reply.map_err(|status| match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                RPCError::Unreachable(Unreachable::new(&status))
            }
            _ => RPCError::Network(NetworkError::new(&status)),
        })?;
        let result: Result<Resp, RaftError<u64, E>> = decode(&reply.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl<C> RaftNetwork<C> for GroupConnection<C>
where
    C: RaftTypeConfig<NodeId = u64, Node = BasicNode>,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let bytes = rpc.data.len() as u64;
        let reply = self.call(Rpc::InstallSnapshot, &rpc, &option).await?;
        self.peers.snapshot_bytes_sent.inc_by(bytes);
        Ok(reply)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}
