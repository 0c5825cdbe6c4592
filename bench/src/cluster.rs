//! A local cluster for load generators: nodes running in this process, with real gRPC
//! on loopback and RocksDB in a temporary directory.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sentinel_node::NodeConfig;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::ClusterStatusRequest;
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
    /// A node answered with an error.
    #[error("cluster status: {0}")]
    Status(#[from] tonic::Status),
    /// The cluster did not converge in time.
    #[error("the cluster did not converge within {0:?}")]
    NotConverged(Duration),
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, ClusterError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Nodes running in this process.
pub struct LocalCluster {
    /// The gRPC address of each node, by node id.
    pub addresses: Vec<String>,
    shards: u32,
    replicas: u32,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

impl LocalCluster {
    /// Starts `nodes` nodes forming a cluster of `shards` shards with `replicas` each.
    pub async fn start(
        nodes: usize,
        shards: u32,
        replicas: u32,
    ) -> Result<LocalCluster, ClusterError> {
        let mut cluster = LocalCluster {
            addresses: Vec::new(),
            shards,
            replicas,
            stops: Vec::new(),
            tasks: Vec::new(),
            dir: tempfile::tempdir()?,
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
        let address = format!("127.0.0.1:{}", free_port()?);
        let seed = self.addresses.first().unwrap_or(&address).clone();
        let env = [
            ("SENTINEL_NODE__ID", id.to_string()),
            ("SENTINEL_NODE__LISTEN", address.clone()),
            (
                "SENTINEL_NODE__DATA_DIR",
                self.data_dir(id).display().to_string(),
            ),
            ("SENTINEL_NODE__SEEDS", format!("[{seed}]")),
            (
                "SENTINEL_HTTP__LISTEN",
                format!("127.0.0.1:{}", free_port()?),
            ),
            ("SENTINEL_CLUSTER__SHARDS", self.shards.to_string()),
            ("SENTINEL_CLUSTER__REPLICAS", self.replicas.to_string()),
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
                eprintln!("node {id} failed: {e}");
            }
        }));
        self.addresses.push(address);
        Ok(())
    }

    /// The data directory of node `node`.
    pub fn data_dir(&self, node: usize) -> std::path::PathBuf {
        self.dir.path().join(node.to_string())
    }

    /// Waits until every shard has its desired voters, its preferred leader and no lag.
    pub async fn wait_converged(&self) -> Result<(), ClusterError> {
        let limit = Duration::from_secs(3600);
        let deadline = Instant::now() + limit;
        let mut client = client(&self.addresses[0]);
        loop {
            if let Ok(status) = client
                .cluster_status(ClusterStatusRequest { digests: false })
                .await
            {
                let status = status.into_inner();
                let done = status.shard_count == self.shards
                    && status.nodes.len() == self.addresses.len()
                    && status.shards.iter().all(|s| {
                        s.leader.is_some()
                            && s.leader == s.desired.first().copied()
                            && s.replicas.len() == s.desired.len()
                            && s.replicas.iter().all(|r| r.role == "voter" && r.lag == 0)
                    });
                if done {
                    return Ok(());
                }
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

/// A lazily connecting client of the node at `address`.
pub fn client(address: &str) -> NodeClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("address")
        .tcp_nodelay(true)
        .connect_lazy();
    NodeClient::new(channel).max_decoding_message_size(64 << 20)
}
