//! Starting a node whose data directory is empty: it answers who it is on its gRPC port
//! while it asks its seeds, then creates the cluster or joins it as a new member, and
//! records its identity before any Raft group opens.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;
use sentinel_proto::v1::bootstrap_client::BootstrapClient;
use sentinel_proto::v1::bootstrap_server::{Bootstrap, BootstrapServer};
use sentinel_proto::v1::{IdentifyReply, IdentifyRequest, JoinRequest};
use sentinel_tls::ClusterTransport;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::identity::{self, Decision, Identity, Peer};
use crate::transport::Peers;

/// How long a node waits for a seed's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of asking the seeds.
const ROUND_PAUSE: Duration = Duration::from_millis(500);
/// How long the starting node's server may take to close its connections.
const SERVER_STOP: Duration = Duration::from_secs(5);
/// How long an address in use is tried again when binding a listener.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// The bootstrap service of a node that has not decided yet.
struct Undecided {
    ordinal: u64,
}

#[tonic::async_trait]
impl Bootstrap for Undecided {
    async fn identify(
        &self,
        _: Request<IdentifyRequest>,
    ) -> Result<Response<IdentifyReply>, Status> {
        Ok(Response::new(IdentifyReply {
            ordinal: self.ordinal,
            fresh: true,
            member: 0,
            cluster_id: String::new(),
        }))
    }
}

/// Decides, for a node whose data directory is empty, whether it creates the cluster
/// or joins it, serving [`Bootstrap`] on its gRPC port meanwhile; records and returns
/// the identity it starts under.
pub async fn settle(
    config: &NodeConfig,
    transport: &ClusterTransport,
    snapshot_bytes_sent: IntCounter,
) -> Result<Identity, NodeError> {
    let ordinal = config.node.id;
    let grpc = bind(config.node.listen, "gRPC").await?;
    let http = bind(config.http.listen, "HTTP").await?;
    // Stopped gracefully once decided: peers' connections to it close (GOAWAY), so their
    // Raft traffic reaches the node's real server rather than this one.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let grpc_served = tonic::transport::Server::builder()
        .add_service(BootstrapServer::new(Undecided { ordinal }))
        .serve_with_incoming_shutdown(transport.incoming(grpc), async {
            let _ = stopped.await;
        });
    tokio::pin!(grpc_served);
    let http_served = axum::serve(http, crate::http::starting()).into_future();
    let peers = Peers::new(ordinal, transport.clone(), snapshot_bytes_sent);
    let stopped = |what: &str, error: String| NodeError::Io {
        what: format!("serving {what} while starting"),
        source: std::io::Error::other(error),
    };
    let identity = tokio::select! {
        served = &mut grpc_served => {
            return Err(stopped("gRPC", served.err().map_or("stopped".into(), |e| e.to_string())));
        }
        served = http_served => {
            return Err(stopped("HTTP", served.err().map_or("stopped".into(), |e| e.to_string())));
        }
        identity = decide(config, &peers) => identity,
    };
    let _ = stop.send(());
    if tokio::time::timeout(SERVER_STOP, grpc_served)
        .await
        .is_err()
    {
        tracing::warn!(
            "connections to the starting node's server still open after {SERVER_STOP:?}"
        );
    }
    identity::save(&config.node.data_dir, &identity)?;
    tracing::info!(
        member = identity.member,
        cluster = %identity.cluster_id,
        founder = identity.founder,
        "recorded the node's identity"
    );
    Ok(identity)
}

/// Asks the seeds until the node may create the cluster or has joined it.
async fn decide(config: &NodeConfig, peers: &Arc<Peers>) -> Identity {
    let ordinal = config.node.id;
    let address = config.node.advertised();
    let seeds = config.node.other_seeds();
    let mut waiting = String::new();
    loop {
        let answers =
            futures::future::join_all(seeds.iter().map(|seed| identify(peers, seed))).await;
        match identity::decide(ordinal, &answers) {
            Decision::Create => {
                tracing::info!(ordinal, "creating the cluster: no seed belongs to one");
                return Identity {
                    cluster_id: identity::new_cluster_id(&address),
                    ordinal,
                    member: ordinal,
                    founder: true,
                };
            }
            Decision::Join => {
                let request = JoinRequest {
                    node_id: 0,
                    address: address.clone(),
                    ordinal,
                    fresh: true,
                    cluster_id: String::new(),
                };
                match crate::membership::join(peers, &seeds, request).await {
                    Ok(reply) => {
                        return Identity {
                            cluster_id: reply.cluster_id,
                            ordinal,
                            member: reply.member,
                            founder: false,
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "joining as a new member failed"),
                }
            }
            Decision::Wait(reason) => {
                if reason != waiting {
                    tracing::info!(%reason, "waiting before creating or joining the cluster");
                    waiting = reason;
                }
            }
        }
        tokio::time::sleep(ROUND_PAUSE).await;
    }
}

/// What the seed at `address` says about itself; `None` when it does not answer.
async fn identify(peers: &Peers, address: &str) -> Option<Peer> {
    let channel = peers.channel(address).ok()?;
    let mut request = Request::new(IdentifyRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    let reply = BootstrapClient::new(channel)
        .identify(request)
        .await
        .ok()?
        .into_inner();
    Some(Peer {
        ordinal: reply.ordinal,
        cluster: (!reply.fresh).then_some(reply.cluster_id),
    })
}

/// A listener on `address`, for the `what` server. An address in use is tried again for
/// up to [`RELEASE_WAIT`]: the server a starting node answers on while it decides whether
/// to create or join the cluster releases its listeners as it stops.
pub async fn bind(address: std::net::SocketAddr, what: &str) -> Result<TcpListener, NodeError> {
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    loop {
        match TcpListener::bind(address).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bound => {
                return bound.map_err(|source| NodeError::Io {
                    what: format!("binding the {what} listener on {address}"),
                    source,
                })
            }
        }
    }
}
