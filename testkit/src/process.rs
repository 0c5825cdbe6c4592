//! A cluster of real `sentinel node` processes on loopback, and what tests do with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sentinel_core::shard::shard_of;
use sentinel_proto::leader_hint;
use sentinel_proto::v1::node_client::NodeClient;
use sentinel_proto::v1::raft_transport_client::RaftTransportClient;
use sentinel_proto::v1::{
    ClusterStatusReply, ClusterStatusRequest, IngestReply, IngestRequest, InputEvent,
};
use sentinel_tls::ClusterTransport;
use serde_json::Value;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::{free_port, rfc3339, t0, wait_for};

/// One node process and its addresses.
pub struct NodeProcess {
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// Several node processes forming one cluster.
pub struct Cluster {
    dir: TempDir,
    /// When the test's events start.
    pub t0: i64,
    pub shards: u32,
    pub replicas: u32,
    pub nodes: BTreeMap<u64, NodeProcess>,
    seed: String,
    extra_env: Vec<(String, String)>,
    /// How the test's own clients reach the nodes (plain unless a test sets TLS).
    pub transport: ClusterTransport,
}

impl Cluster {
    /// Starts `n` nodes (node 0 creates the cluster, the others join through it).
    pub fn start(n: u64, shards: u32, replicas: u32) -> Cluster {
        Cluster::start_with(n, shards, replicas, Vec::new())
    }

    /// Like [`Cluster::start`], with extra `SENTINEL_*` variables for every node.
    pub fn start_with(
        n: u64,
        shards: u32,
        replicas: u32,
        extra_env: Vec<(String, String)>,
    ) -> Cluster {
        let mut cluster = Cluster::new(shards, replicas, extra_env);
        for id in 0..n {
            cluster.add(id);
        }
        cluster
    }

    /// A cluster with no node yet (node 0, added first, creates it).
    pub fn new(shards: u32, replicas: u32, extra_env: Vec<(String, String)>) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            t0: t0(),
            shards,
            replicas,
            nodes: BTreeMap::new(),
            seed: format!("127.0.0.1:{}", free_port()),
            extra_env,
            transport: ClusterTransport::Insecure,
        }
    }

    /// The data directory node `id` has (or will have).
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    /// Adds node `id` and starts it.
    pub fn add(&mut self, id: u64) {
        let grpc = if id == 0 {
            self.seed.clone()
        } else {
            format!("127.0.0.1:{}", free_port())
        };
        let node = NodeProcess {
            id,
            grpc,
            http: format!("127.0.0.1:{}", free_port()),
            data_dir: self.data_dir(id),
            child: None,
        };
        self.nodes.insert(id, node);
        self.spawn(id);
    }

    /// Starts (or restarts) the process of node `id` with its data directory.
    pub fn spawn(&mut self, id: u64) {
        let log = self.dir.path().join(format!("node-{id}.log"));
        let node = &self.nodes[&id];
        assert!(node.child.is_none(), "node {id} is running");
        let mut env = vec![
            ("SENTINEL_NODE__ID".to_owned(), id.to_string()),
            ("SENTINEL_NODE__LISTEN".to_owned(), node.grpc.clone()),
            (
                "SENTINEL_NODE__DATA_DIR".to_owned(),
                node.data_dir.display().to_string(),
            ),
            (
                "SENTINEL_NODE__SEEDS".to_owned(),
                format!("[{}]", self.seed),
            ),
            ("SENTINEL_HTTP__LISTEN".to_owned(), node.http.clone()),
            (
                "SENTINEL_CLUSTER__SHARDS".to_owned(),
                self.shards.to_string(),
            ),
            (
                "SENTINEL_CLUSTER__REPLICAS".to_owned(),
                self.replicas.to_string(),
            ),
            ("SENTINEL_RAFT__HEARTBEAT_MS".to_owned(), "100".to_owned()),
            (
                "SENTINEL_RAFT__ELECTION_TIMEOUT_MIN_MS".to_owned(),
                "400".to_owned(),
            ),
            (
                "SENTINEL_RAFT__ELECTION_TIMEOUT_MAX_MS".to_owned(),
                "800".to_owned(),
            ),
            ("SENTINEL_RAFT__RECONCILE_MS".to_owned(), "200".to_owned()),
            ("SENTINEL_RAFT__LEADER_HOLD_MS".to_owned(), "500".to_owned()),
            // Tests of transport security set their own `SENTINEL_SECURITY__*`.
            ("SENTINEL_SECURITY__INSECURE".to_owned(), "true".to_owned()),
        ];
        env.extend(self.extra_env.iter().cloned());
        let child = launch("node", &env, &log);
        self.nodes.get_mut(&id).expect("known node").child = Some(child);
    }

    /// A router in front of this cluster (seeded with every node), with `env` on top of
    /// the defaults; it is started and ready.
    pub async fn router(&self, env: &[(&str, &str)]) -> RouterProcess {
        self.router_with(env, reqwest::Client::builder(), "http")
            .await
    }

    /// A router whose REST API serves HTTPS (`env` sets `http.tls`) with a certificate
    /// signed by the CA in `ca_pem`; the test's client trusts that CA.
    pub async fn https_router(&self, env: &[(&str, &str)], ca_pem: &[u8]) -> RouterProcess {
        let ca = reqwest::Certificate::from_pem(ca_pem).expect("CA certificate");
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        self.router_with(env, client, "https").await
    }

    async fn router_with(
        &self,
        env: &[(&str, &str)],
        client: reqwest::ClientBuilder,
        scheme: &'static str,
    ) -> RouterProcess {
        let seeds: Vec<&str> = self.nodes.values().map(|n| n.grpc.as_str()).collect();
        let http = format!("127.0.0.1:{}", free_port());
        let grpc = format!("127.0.0.1:{}", free_port());
        let mut settings = vec![
            (
                "SENTINEL_ROUTER__SEEDS".to_owned(),
                format!("[{}]", seeds.join(", ")),
            ),
            ("SENTINEL_HTTP__LISTEN".to_owned(), http.clone()),
            ("SENTINEL_GRPC__LISTEN".to_owned(), grpc.clone()),
            ("SENTINEL_SECURITY__INSECURE".to_owned(), "true".to_owned()),
        ];
        settings.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = self
            .dir
            .path()
            .join(format!("router-{}.log", http.replace(':', "-")));
        let mut router = RouterProcess {
            http,
            grpc,
            env: settings,
            log,
            child: None,
            client: client
                .timeout(Duration::from_secs(120))
                .build()
                .expect("HTTP client"),
            scheme,
            api_key: None,
        };
        router.spawn();
        router.wait_ready().await;
        router
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut child) = node.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// Process id of node `id`.
    pub fn pid(&self, id: u64) -> u32 {
        self.nodes[&id]
            .child
            .as_ref()
            .expect("node is running")
            .id()
    }

    /// Stops node `id` with SIGTERM and returns its exit status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut child = node.child.take().expect("node is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
        child.wait().expect("reaped")
    }

    /// The exit status of node `id` once its process has ended by itself.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.nodes.get_mut(&id).expect("known node");
        let status = node.child.as_mut()?.try_wait().expect("process state")?;
        node.child = None;
        Some(status)
    }

    /// Whether node `id` runs.
    pub fn running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    /// The log of node `id`, for failure messages.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    /// Ids of running nodes.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .keys()
            .copied()
            .filter(|&id| self.running(id))
            .collect()
    }

    /// A gRPC client of the node running as Raft member `member` (its ordinal, or a later
    /// member of that ordinal after its data directory was lost).
    pub async fn client(&self, member: u64) -> NodeClient<Channel> {
        let ordinal = sentinel_node::registry::ordinal_of(member);
        client_over(&self.transport, &self.nodes[&ordinal].grpc)
    }

    /// A Raft transport client of node `ordinal`, for messages a test forges.
    pub fn raft_client(&self, ordinal: u64) -> RaftTransportClient<Channel> {
        RaftTransportClient::new(channel_over(&self.transport, &self.nodes[&ordinal].grpc))
    }

    /// Cluster status as any running node sees it.
    pub async fn status(&self, digests: bool) -> Option<ClusterStatusReply> {
        for id in self.live() {
            let mut client = self.client(id).await;
            if let Ok(reply) = client
                .cluster_status(ClusterStatusRequest { digests })
                .await
            {
                return Some(reply.into_inner());
            }
        }
        None
    }

    /// Waits until every shard has exactly its desired voters, all caught up, a leader
    /// on its preferred node, and every registered node is reachable.
    pub async fn wait_converged(&self, timeout: Duration) -> ClusterStatusReply {
        let mut last = None;
        let converged = wait_for(timeout, async || {
            let status = self.status(false).await?;
            last = Some(summary(&status));
            let nodes_ok = status.nodes.iter().all(|n| n.state == "active")
                && status.nodes.len() == self.live().len();
            let shards_ok = status.shard_count == self.shards
                && status.shards.iter().all(|s| {
                    let voters: BTreeSet<u64> = s
                        .replicas
                        .iter()
                        .filter(|r| r.role == "voter")
                        .map(|r| r.node)
                        .collect();
                    let desired: BTreeSet<u64> = s.desired.iter().copied().collect();
                    s.leader.is_some()
                        && s.leader == s.desired.first().copied()
                        && voters == desired
                        && s.replicas.len() == desired.len()
                        && s.replicas.iter().all(|r| r.lag == 0)
                });
            (nodes_ok && shards_ok).then_some(status)
        })
        .await;
        converged.unwrap_or_else(|| {
            panic!(
                "cluster did not converge; last status: {}\n{}",
                last.unwrap_or_default(),
                self.logs()
            )
        })
    }

    /// Every node's log.
    pub fn logs(&self) -> String {
        self.nodes
            .keys()
            .map(|&id| format!("--- node {id} ---\n{}", tail(&self.log(id), 60)))
            .collect()
    }

    /// Ingests `events` into their shard through its leader, following redirects.
    pub async fn ingest(
        &self,
        shard: u32,
        events: Vec<InputEvent>,
    ) -> Result<IngestReply, tonic::Status> {
        let mut address = self.nodes[&self.live()[0]].grpc.clone();
        let mut last = tonic::Status::unavailable("no attempt");
        for _ in 0..20 {
            let mut client = client_over(&self.transport, &address);
            match client
                .ingest(IngestRequest {
                    shard,
                    source: None,
                    events: events.clone(),
                })
                .await
            {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) => {
                    if let Some((_, leader)) = leader_hint(&status) {
                        address = leader;
                    } else {
                        let live = self.live();
                        address = self.nodes[&live[(live.len() + 1) % live.len().max(1)]]
                            .grpc
                            .clone();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    last = status;
                }
            }
        }
        Err(last)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            eprintln!("node data and logs kept in {}", dir.keep().display());
        }
    }
}

/// Starts `sentinel <command>` with `env`, its output appended to `log`.
fn launch(command: &str, env: &[(String, String)], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(crate::sentinel_bin())
        .arg(command)
        .env("SENTINEL_LOG__LEVEL", "info,openraft=warn")
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("sentinel {command} starts: {e}"))
}

/// A `sentinel router` process and an HTTP client of its REST API.
pub struct RouterProcess {
    /// Address of its HTTP listener.
    pub http: String,
    /// Address of its public gRPC listener.
    pub grpc: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    client: reqwest::Client,
    /// `http`, or `https` when the REST API serves TLS.
    scheme: &'static str,
    /// Sent as `X-API-Key` with every request, when set.
    pub api_key: Option<String>,
}

impl RouterProcess {
    /// Starts (or restarts) the process.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the router is running");
        self.child = Some(launch("router", &self.env, &self.log));
    }

    /// Process id of the router.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the router is running").id()
    }

    /// Kills the process with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
    }

    /// The router's log, for failure messages.
    pub fn log(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 60)
    }

    /// Waits until `/health/ready` answers 200.
    pub async fn wait_ready(&self) {
        let ready = wait_for(Duration::from_secs(60), async || {
            let (status, _) = self.get("/health/ready").await;
            (status == reqwest::StatusCode::OK).then_some(())
        })
        .await;
        assert!(
            ready.is_some(),
            "the router never became ready\n{}",
            self.log()
        );
    }

    /// The URL of `path` on this router.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.http)
    }

    /// GETs `path`: the status and the JSON answer (null when it is not JSON or the
    /// router did not answer, with status 599 standing for "no answer").
    pub async fn get(&self, path: &str) -> (reqwest::StatusCode, Value) {
        answer(self.keyed(self.client.get(self.url(path)))).await
    }

    fn keyed(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => request.header("x-api-key", key),
            None => request,
        }
    }

    /// POSTs `body` to `path` with `headers`.
    pub async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self.keyed(self.client.post(self.url(path)).body(body));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        answer(request).await
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post_json(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        self.post(
            path,
            body.to_string().into_bytes(),
            &[("content-type", "application/json")],
        )
        .await
    }

    /// DELETEs `path`.
    pub async fn delete(&self, path: &str) -> (reqwest::StatusCode, Value) {
        answer(self.keyed(self.client.delete(self.url(path)))).await
    }

    /// POSTs `events` as JSON to `/api/v1/events`.
    pub async fn post_events(&self, events: &Value) -> (reqwest::StatusCode, Value) {
        self.post_json("/api/v1/events", events).await
    }

    /// Opens an incident on `service`/`model` through this router: 300 steady calls
    /// (800 ms ± 20, 100 ms apart from `t0`), then 20 calls twenty times slower; waits
    /// until it is listed open and answers it.
    pub async fn open_incident(&self, service: &str, model: &str, t0: i64) -> Value {
        let call = |n: i64, latency: f64| {
            event_json(
                service,
                model,
                t0 + 100 * n,
                latency,
                &format!("{service}-{n}"),
            )
        };
        let steady: Vec<Value> = (0..300)
            .map(|n| call(n, 780.0 + ((n * 37) % 41) as f64))
            .collect();
        let slow: Vec<Value> = (300..320).map(|n| call(n, 16_000.0 + n as f64)).collect();
        for batch in [steady, slow] {
            let (status, answer) = self.post_events(&Value::Array(batch)).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{answer}");
        }
        let path = format!("/api/v1/incidents?status=open&service={service}&model={model}");
        let listed = wait_for(Duration::from_secs(90), async || {
            let (_, answer) = self.get(&path).await;
            answer["incidents"].as_array()?.first().cloned()
        })
        .await;
        listed.unwrap_or_else(|| panic!("no incident opened on {service}/{model}\n{}", self.log()))
    }

    /// The text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await;
        match response {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- router ---\n{}", self.log());
        }
    }
}

/// Sends `request`; the status and JSON answer (599 and null when nothing answered).
async fn answer(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, Value) {
    let Ok(response) = request.send().await else {
        return (
            reqwest::StatusCode::from_u16(599).expect("status"),
            Value::Null,
        );
    };
    let status = response.status();
    let bytes = response.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Sends SIGKILL to a process.
pub fn sigkill(pid: u32) {
    signal(pid, "KILL");
}

/// Sends the signal `name` (KILL, STOP, CONT, …) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "SIG{name} {pid}");
}

/// A tmpfs of a few MB mounted for a test (as root), unmounted when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`, e.g. `32m`) on `path`; the reason when
    /// it cannot (not root, no mount permission).
    pub fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "sentinel-test",
            ])
            .arg(path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs {
            path: path.to_owned(),
        })
    }

    /// Fills the filesystem with a file until no byte is left.
    pub fn fill(&self) {
        use std::io::Write;
        let mut file = std::fs::File::create(self.filler()).expect("filler file");
        for chunk in [1 << 20, 4096, 1] {
            let bytes = vec![0xa5u8; chunk];
            while file.write_all(&bytes).is_ok() {}
        }
    }

    /// Removes what [`Tmpfs::fill`] wrote.
    pub fn free(&self) {
        std::fs::remove_file(self.filler()).expect("filler removed");
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// One line per node and shard of a status.
pub fn summary(status: &ClusterStatusReply) -> String {
    let mut out = format!("metadata leader {:?}\n", status.metadata_leader);
    for node in &status.nodes {
        out += &format!("node {} {} {}\n", node.id, node.address, node.state);
    }
    for shard in &status.shards {
        let replicas: Vec<String> = shard
            .replicas
            .iter()
            .map(|r| format!("{}:{}:lag{}", r.node, r.role, r.lag))
            .collect();
        out += &format!(
            "shard {} leader {:?} term {} desired {:?} replicas {}\n",
            shard.shard,
            shard.leader,
            shard.term,
            shard.desired,
            replicas.join(" ")
        );
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n") + "\n"
}

/// Waits until every replica of every shard reports the same digest; the digests.
pub async fn assert_replicas_agree(cluster: &Cluster, timeout: Duration) -> BTreeMap<u32, String> {
    let mut last = String::new();
    let agreed = wait_for(timeout, async || {
        let status = cluster.status(true).await?;
        last = format!("{status:#?}");
        let mut digests = BTreeMap::new();
        for shard in &status.shards {
            let set: BTreeSet<&str> = shard.replicas.iter().map(|r| r.digest.as_str()).collect();
            if shard.replicas.len() != cluster.replicas as usize
                || set.len() != 1
                || set.contains("")
            {
                return None;
            }
            digests.insert(shard.shard, set.into_iter().next()?.to_owned());
        }
        Some(digests)
    })
    .await;
    agreed.unwrap_or_else(|| panic!("replicas disagree: {last}\n{}", cluster.logs()))
}

/// A plaintext client of the node at `address`.
pub async fn client(address: &str) -> NodeClient<Channel> {
    client_over(&ClusterTransport::Insecure, address)
}

/// A client of the node at `address` over `transport`.
pub fn client_over(transport: &ClusterTransport, address: &str) -> NodeClient<Channel> {
    NodeClient::new(channel_over(transport, address))
}

/// A channel to the node at `address` over `transport`.
fn channel_over(transport: &ClusterTransport, address: &str) -> Channel {
    transport
        .channel(address, |endpoint| {
            endpoint
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(10))
        })
        .expect("address")
}

/// A flat-shape event of `service`/`model` at `t` with id `id`, as a router forwards it
/// to a node.
pub fn event(service: &str, model: &str, t: i64, latency_ms: f64, id: &str) -> InputEvent {
    let event = sentinel_core::parse_value(&event_json(service, model, t, latency_ms, id))
        .expect("a well-formed event");
    InputEvent {
        offset: None,
        event: sentinel_core::codec::encode(&event),
    }
}

/// A flat-shape event of `service`/`model` at `t` with id `id`, as JSON.
pub fn event_json(service: &str, model: &str, t: i64, latency_ms: f64, id: &str) -> Value {
    serde_json::json!({
        "timestamp": rfc3339(t),
        "service_name": service,
        "model_name": model,
        "latency_ms": latency_ms,
        "prompt_tokens": 400,
        "completion_tokens": 120,
        "total_tokens": 520,
        "user_id": "user-1",
        "request_id": id,
    })
}

/// The shard of (service, model) in a cluster of `shards`.
pub fn shard(service: &str, model: &str, shards: u32) -> u32 {
    shard_of(service, model, shards)
}
