//! A local cluster for load generators and `sentinel dev`: nodes and a router running in
//! this process, with real gRPC on loopback and RocksDB in a data directory.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sentinel_node::NodeConfig;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::ClusterStatusRequest;
use sentinel_router::{RouterConfig, RouterError};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// Why a local cluster could not be started or asked.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A port or directory could not be had.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A node refused its configuration.
    #[error("node configuration: {0}")]
    Config(#[from] sentinel_node::NodeError),
    /// The router refused its configuration or failed.
    #[error("router: {0}")]
    Router(#[from] RouterError),
    /// A node answered with an error.
    #[error("cluster status: {0}")]
    Status(#[from] tonic::Status),
    /// A node stopped before the cluster converged.
    #[error("node {0} stopped while the cluster was forming (its error is in the log)")]
    NodeStopped(usize),
    /// The cluster did not converge in time.
    #[error("the cluster did not converge within {0:?}")]
    NotConverged(Duration),
    /// The router did not answer `/health/ready` in time.
    #[error("the router at {0} did not become ready within {1:?}")]
    RouterNotReady(String, Duration),
}

/// How long a serving cluster is given to move each shard's leadership to its preferred
/// node before it counts as started anyway.
pub const BALANCE_PATIENCE: Duration = Duration::from_secs(30);

/// A TCP port on 127.0.0.1 that is free now, from the kernel's ephemeral range (the test
/// kit hands out ports from a reserved block instead).
pub fn ephemeral_port() -> Result<u16, ClusterError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a local cluster keeps its data and which ports its nodes listen on.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Data directory (node `i` keeps its RocksDB in `<dir>/node-<i>`); a temporary one,
    /// removed on drop, when unset.
    pub data_dir: Option<PathBuf>,
    /// gRPC port of node 0 (node `i` listens on `port + i`); free ports when unset.
    pub grpc_port: Option<u16>,
    /// HTTP port (metrics, health) of node 0 (node `i` on `port + i`); free ports when unset.
    pub http_port: Option<u16>,
}

/// The data directory of a local cluster.
enum DataDir {
    Temporary(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temporary(dir) => dir.path(),
            DataDir::Kept(path) => path,
        }
    }
}

/// Nodes running in this process.
pub struct LocalCluster {
    /// The gRPC address of each node, by node id.
    pub addresses: Vec<String>,
    /// The HTTP address (`/metrics`, `/health/*`) of each node, by node id.
    pub http_addresses: Vec<String>,
    layout: Layout,
    shards: u32,
    replicas: u32,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: DataDir,
}

impl LocalCluster {
    /// Starts `nodes` nodes in a temporary directory on free ports, forming a cluster of
    /// `shards` shards with `replicas` each.
    pub async fn start(
        nodes: usize,
        shards: u32,
        replicas: u32,
    ) -> Result<LocalCluster, ClusterError> {
        LocalCluster::start_in(Layout::default(), nodes, shards, replicas).await
    }

    /// Starts `nodes` nodes laid out as `layout` and waits until the cluster converged; a
    /// data directory of an earlier run brings its nodes back with their state.
    pub async fn start_in(
        layout: Layout,
        nodes: usize,
        shards: u32,
        replicas: u32,
    ) -> Result<LocalCluster, ClusterError> {
        let dir = match &layout.data_dir {
            Some(path) => {
                std::fs::create_dir_all(path)?;
                DataDir::Kept(path.clone())
            }
            None => DataDir::Temporary(tempfile::tempdir()?),
        };
        let mut cluster = LocalCluster {
            addresses: Vec::new(),
            http_addresses: Vec::new(),
            layout,
            shards,
            replicas,
            stops: Vec::new(),
            tasks: Vec::new(),
            dir,
        };
        for _ in 0..nodes {
            cluster.spawn()?;
        }
        cluster.wait_converged().await?;
        Ok(cluster)
    }

    /// Starts one more node, seeded with the first.
    pub fn spawn(&mut self) -> Result<(), ClusterError> {
        let id = self.addresses.len();
        let port = |base: Option<u16>| match base {
            Some(base) => Ok(base + id as u16),
            None => ephemeral_port(),
        };
        let address = format!("127.0.0.1:{}", port(self.layout.grpc_port)?);
        let http = format!("127.0.0.1:{}", port(self.layout.http_port)?);
        let seed = self.addresses.first().unwrap_or(&address).clone();
        let env = [
            ("SENTINEL_NODE__ID", id.to_string()),
            ("SENTINEL_NODE__LISTEN", address.clone()),
            (
                "SENTINEL_NODE__DATA_DIR",
                self.data_dir(id).display().to_string(),
            ),
            ("SENTINEL_NODE__SEEDS", format!("[{seed}]")),
            ("SENTINEL_HTTP__LISTEN", http.clone()),
            ("SENTINEL_CLUSTER__SHARDS", self.shards.to_string()),
            ("SENTINEL_CLUSTER__REPLICAS", self.replicas.to_string()),
            // Nodes in one process are never paused alone: spread leaders soon after start.
            ("SENTINEL_RAFT__LEADER_HOLD_MS", "1000".to_owned()),
            // A local cluster on loopback, for development and measurements.
            ("SENTINEL_SECURITY__INSECURE", "true".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let config = NodeConfig::load(None, env)?;
        let (stop, stopped) = oneshot::channel::<()>();
        self.stops.push(stop);
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = sentinel_node::run(config, async {
                let _ = stopped.await;
            })
            .await
            {
                tracing::error!(node = id, error = %e, "node failed");
            }
        }));
        self.addresses.push(address);
        self.http_addresses.push(http);
        Ok(())
    }

    /// The data directory of node `node`.
    pub fn data_dir(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node-{node}"))
    }

    /// Waits until every shard has a leader and its desired voters without lag, and for
    /// [`BALANCE_PATIENCE`] more until each leader is on its preferred node (a leadership
    /// hand-over can keep failing: see `docs/operations.md`).
    pub async fn wait_converged(&self) -> Result<(), ClusterError> {
        let limit = Duration::from_secs(3600);
        let deadline = Instant::now() + limit;
        let mut client = client(&self.addresses[0]);
        let mut serving_since = None;
        loop {
            if let Ok(status) = client
                .cluster_status(ClusterStatusRequest { digests: false })
                .await
            {
                let status = status.into_inner();
                // An existing data directory keeps the shard count it was created with.
                let serving = status.shard_count > 0
                    && status.shards.len() == status.shard_count as usize
                    && status.nodes.len() == self.addresses.len()
                    && status.shards.iter().all(|s| {
                        s.leader.is_some()
                            && s.replicas.len() == s.desired.len()
                            && s.replicas.iter().all(|r| r.role == "voter" && r.lag == 0)
                    });
                let balanced = status
                    .shards
                    .iter()
                    .all(|s| s.leader == s.desired.first().copied());
                if !serving {
                    serving_since = None;
                } else if balanced
                    || serving_since.get_or_insert_with(Instant::now).elapsed() > BALANCE_PATIENCE
                {
                    return Ok(());
                }
            }
            if let Some(node) = self.tasks.iter().position(|t| t.is_finished()) {
                return Err(ClusterError::NodeStopped(node));
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotConverged(limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The address of each shard's leader.
    pub async fn leaders(&self) -> Result<BTreeMap<u32, String>, ClusterError> {
        let status = client(&self.addresses[0])
            .cluster_status(ClusterStatusRequest { digests: false })
            .await?
            .into_inner();
        let addresses: BTreeMap<u64, String> = status
            .nodes
            .iter()
            .map(|n| (n.id, n.address.clone()))
            .collect();
        Ok(status
            .shards
            .iter()
            .filter_map(|s| Some((s.shard, addresses.get(&s.leader?)?.clone())))
            .collect())
    }

    /// Starts a router in front of this cluster listening on `http` (REST) and `grpc`
    /// (free ports when unset), configured further by `env` (`SENTINEL_*` pairs, later
    /// ones winning), and waits until it is ready.
    pub async fn start_router(
        &self,
        http: Option<String>,
        grpc: Option<String>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<LocalRouter, ClusterError> {
        let listen = |address: Option<String>| match address {
            Some(address) => Ok(address),
            None => ephemeral_port().map(|port| format!("127.0.0.1:{port}")),
        };
        let (http, grpc) = (listen(http)?, listen(grpc)?);
        let base = [
            (
                "SENTINEL_ROUTER__SEEDS",
                format!("[{}]", self.addresses.join(", ")),
            ),
            ("SENTINEL_HTTP__LISTEN", http.clone()),
            ("SENTINEL_GRPC__LISTEN", grpc.clone()),
            ("SENTINEL_SECURITY__INSECURE", "true".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v));
        let config = RouterConfig::load(None, base.into_iter().chain(env))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sentinel_router::run(config, async {
            let _ = stopped.await;
        }));
        let mut router = LocalRouter {
            http,
            grpc,
            stop,
            task,
        };
        router.wait_ready().await?;
        Ok(router)
    }

    /// Stops every node and waits for it.
    pub async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// A router running in this process.
pub struct LocalRouter {
    /// Its REST address (host:port).
    pub http: String,
    /// Its public gRPC address (host:port).
    pub grpc: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), RouterError>>,
}

impl LocalRouter {
    /// Waits until the router answers `/health/ready`; fails with its error if it stopped.
    async fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let limit = Duration::from_secs(120);
        let deadline = Instant::now() + limit;
        let ready = format!("http://{}/health/ready", self.http);
        while !reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if self.task.is_finished() {
                return joined((&mut self.task).await);
            }
            if Instant::now() > deadline {
                return Err(ClusterError::RouterNotReady(self.http.clone(), limit));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops the router (it settles what is in flight) and waits for it.
    pub async fn stop(self) -> Result<(), ClusterError> {
        let _ = self.stop.send(());
        joined(self.task.await)
    }
}

/// The outcome of a router task.
fn joined(
    outcome: Result<Result<(), RouterError>, tokio::task::JoinError>,
) -> Result<(), ClusterError> {
    match outcome {
        Ok(result) => Ok(result?),
        Err(e) => Err(ClusterError::Io(std::io::Error::other(e))),
    }
}

/// A lazily connecting client of the node at `address`.
pub fn client(address: &str) -> NodeClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("address")
        .tcp_nodelay(true)
        .connect_lazy();
    NodeClient::new(channel).max_decoding_message_size(64 << 20)
}
