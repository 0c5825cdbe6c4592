//! Real services for integration tests: RabbitMQ, a signature-checking webhook receiver, a
//! TCP proxy whose connections can be cut, VictoriaMetrics (the InfluxDB v2 write API) and
//! a Prometheus server. Each test file uses the parts it needs.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use sentinel_node::alerting::{verify, ALERT_ID_HEADER, SIGNATURE_HEADER};

use crate::{closed_port_addr, free_port};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The VictoriaMetrics binary (Debian package `victoria-metrics`, installed by `scripts/setup`).
const VICTORIA_METRICS: &str = "/usr/bin/victoria-metrics";

/// Where tests reach RabbitMQ.
pub const RABBITMQ_ADDR: &str = "127.0.0.1:5672";
/// AMQP URL of the test broker (default vhost, guest/guest).
pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The environment of a node publishing its notifications to the test RabbitMQ.
pub fn rabbitmq_env() -> (String, String) {
    (
        "SENTINEL_ALERTING__RABBITMQ".into(),
        format!("{{url: '{RABBITMQ_URL}'}}"),
    )
}

/// How long a broker that is being started may take to answer.
const RABBITMQ_START_TIMEOUT: Duration = Duration::from_secs(120);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether something on `RABBITMQ_ADDR` answers an AMQP 0-9-1 header with `connection.start`.
fn rabbitmq_answers() -> bool {
    let addr: SocketAddr = RABBITMQ_ADDR.parse().expect("valid address");
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(5));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"AMQP\x00\x00\x09\x01").is_err() {
        return false;
    }
    // Method frame on channel 0 (type, channel, size), then class 10 method 10.
    let mut frame = [0u8; 11];
    stream.read_exact(&mut frame).is_ok()
        && frame[0] == 1
        && frame[1..3] == [0, 0]
        && frame[7..11] == [0, 10, 0, 10]
}

/// Makes sure RabbitMQ answers on 127.0.0.1:5672, starting `rabbitmq-server -detached` if
/// nothing does, and returns its AMQP URL.
pub fn ensure_rabbitmq() -> &'static str {
    static STARTING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = lock(&STARTING);
    if rabbitmq_answers() {
        return RABBITMQ_URL;
    }
    if TcpStream::connect(RABBITMQ_ADDR).is_err() {
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .status()
            .expect("run rabbitmq-server (Debian package rabbitmq-server)");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
    }
    let deadline = Instant::now() + RABBITMQ_START_TIMEOUT;
    while !rabbitmq_answers() {
        assert!(
            Instant::now() < deadline,
            "RabbitMQ did not answer on {RABBITMQ_ADDR} within {RABBITMQ_START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    RABBITMQ_URL
}

/// A `redis-server` of a test's own on a free port (nothing kept on disk), killed on drop.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server (Debian package redis-server)");
        let server = RedisServer {
            port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while server.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Sends one command and returns the raw reply (None when nothing answers).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request += &format!("${}\r\n{arg}\r\n", arg.len());
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let read = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..read]).into_owned())
    }

    /// Kills the server (SIGKILL): Redis goes away.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Exchange that nodes publish alerts to.
pub const ALERT_EXCHANGE: &str = "sentinel.alerts";

/// How long [`AlertQueue::next_with_message_id`] waits for a message.
const ALERT_WAIT: Duration = Duration::from_secs(30);

/// A fresh exclusive queue bound to an alert exchange with `alert.#`, consumed without acks.
pub struct AlertQueue {
    _connection: Connection,
    channel: Channel,
    exchange: String,
    consumer: Consumer,
}

impl AlertQueue {
    /// Binds a queue to the default exchange, [`ALERT_EXCHANGE`].
    pub async fn bind(url: &str) -> AlertQueue {
        AlertQueue::bind_to(url, ALERT_EXCHANGE).await
    }

    /// Declares `exchange` (as nodes do), a server-named exclusive queue and its binding.
    pub async fn bind_to(url: &str, exchange: &str) -> AlertQueue {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("open a channel");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the alert exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a queue");
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                "alert.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind the queue");
        let consumer = channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the queue");
        AlertQueue {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
            consumer,
        }
    }

    /// Deletes the exchange (for one made for a single run).
    pub async fn delete_exchange(self) {
        let _ = self
            .channel
            .exchange_delete(self.exchange.as_str().into(), Default::default())
            .await;
    }

    /// The next message, waiting at most the alert wait.
    pub async fn next(&mut self) -> Delivery {
        self.next_within(ALERT_WAIT)
            .await
            .unwrap_or_else(|| panic!("no message within {ALERT_WAIT:?}"))
    }

    /// The next message, or none when `wait` passes first.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Delivery> {
        let next = self.consumer.next();
        let delivery = tokio::time::timeout(wait, next).await.ok()?;
        Some(delivery.expect("consumer open").expect("delivery"))
    }

    /// The next message whose `message_id` is `id`, skipping alerts of other tests.
    pub async fn next_with_message_id(&mut self, id: &str) -> Delivery {
        loop {
            let delivery = self.next().await;
            let message_id = delivery.properties.message_id().as_ref();
            if message_id.map(|m| m.as_str()) == Some(id) {
                return delivery;
            }
        }
    }
}

/// How a [`WebhookReceiver`] answers requests that carry a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// 200 to every request.
    Accept,
    /// `status` to the first `count` requests, then 200.
    FailFirst(usize, StatusCode),
    /// `status` to every request.
    AlwaysFail(StatusCode),
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// Whether `X-Sentinel-Signature` verified against the body with the receiver's secret.
    pub signature_valid: bool,
    /// The status the receiver answered with.
    pub status: StatusCode,
}

impl ReceivedRequest {
    /// The value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

struct ReceiverState {
    secret: Vec<u8>,
    replies: Replies,
    requests: Vec<ReceivedRequest>,
}

/// An HTTP endpoint on an ephemeral 127.0.0.1 port that checks `X-Sentinel-Signature`
/// (answering 401 when it does not verify), answers per its [`Replies`] and records every
/// request. Stops when dropped.
pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    server: JoinHandle<()>,
}

async fn receive(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let mut state = lock(&state);
    let signature_valid = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|header| verify(&state.secret, &body, header));
    let earlier = state.requests.len();
    let status = match (signature_valid, state.replies) {
        (false, _) => StatusCode::UNAUTHORIZED,
        (true, Replies::Accept) => StatusCode::OK,
        (true, Replies::FailFirst(count, status)) if earlier < count => status,
        (true, Replies::FailFirst(..)) => StatusCode::OK,
        (true, Replies::AlwaysFail(status)) => status,
    };
    state.requests.push(ReceivedRequest {
        headers,
        body,
        signature_valid,
        status,
    });
    status
}

impl WebhookReceiver {
    /// Starts a receiver that verifies signatures with `secret` and answers per `replies`.
    pub async fn start(secret: &[u8], replies: Replies) -> WebhookReceiver {
        WebhookReceiver::start_on(std::net::Ipv4Addr::LOCALHOST.into(), secret, replies).await
    }

    /// Like [`WebhookReceiver::start`], on an ephemeral port of address `ip`.
    pub async fn start_on(
        ip: std::net::IpAddr,
        secret: &[u8],
        replies: Replies,
    ) -> WebhookReceiver {
        let state = Arc::new(Mutex::new(ReceiverState {
            secret: secret.to_vec(),
            replies,
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(Arc::clone(&state));
        let listener = TcpListener::bind((ip, 0))
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("receiver address");
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("webhook receiver serves");
        });
        WebhookReceiver {
            addr,
            state,
            server,
        }
    }

    /// Answers further requests per `replies`.
    pub fn set_replies(&self, replies: Replies) {
        lock(&self.state).replies = replies;
    }

    /// The URL to configure as the webhook.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The environment of a node sending its notifications here, signed with the
    /// receiver's secret (read from `HOOK_SECRET`).
    pub fn node_env(&self) -> Vec<(String, String)> {
        let secret = String::from_utf8(lock(&self.state).secret.clone()).expect("a text secret");
        vec![
            ("HOOK_SECRET".into(), secret),
            (
                "SENTINEL_ALERTING__WEBHOOKS".into(),
                format!(
                    "[{{name: test, url: '{}', secret_env: HOOK_SECRET}}]",
                    self.url()
                ),
            ),
        ]
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        lock(&self.state).requests.clone()
    }

    /// `X-Sentinel-Alert-Id` of every request answered with 2xx, oldest first.
    pub fn accepted_alert_ids(&self) -> Vec<String> {
        lock(&self.state)
            .requests
            .iter()
            .filter(|request| request.status.is_success())
            .filter_map(|request| request.header(ALERT_ID_HEADER).map(str::to_owned))
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A TCP proxy on an ephemeral 127.0.0.1 port forwarding to `target`; [`TcpProxy::cut`] drops
/// every open connection (as a network failure would) while new ones are still accepted.
pub struct TcpProxy {
    addr: SocketAddr,
    links: Arc<Mutex<VecDeque<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    acceptor: JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let links: Arc<Mutex<VecDeque<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor_links = Arc::clone(&links);
        let acceptor_count = Arc::clone(&accepted);
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                acceptor_count.fetch_add(1, Ordering::SeqCst);
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        // Either side closing, or the link being cut, ends the copy.
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                lock(&acceptor_links).push_back(link);
            }
        });
        TcpProxy {
            addr,
            links,
            accepted,
            acceptor,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections the proxy has accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Drops every connection open through the proxy.
    pub fn cut(&self) {
        for link in lock(&self.links).drain(..) {
            link.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// A VictoriaMetrics process, killed on drop.
pub struct VictoriaMetrics {
    child: Child,
    /// Base URL of its HTTP API.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// One series as `/api/v1/export` answers it.
#[derive(Debug, Deserialize)]
pub struct Series {
    /// Name and labels.
    pub metric: BTreeMap<String, String>,
    /// Sample values.
    pub values: Vec<f64>,
    /// Sample times, ms.
    pub timestamps: Vec<i64>,
}

impl VictoriaMetrics {
    /// Starts a server and waits until it is healthy (another port if the first was taken).
    pub async fn start() -> VictoriaMetrics {
        assert!(
            std::path::Path::new(VICTORIA_METRICS).exists(),
            "{VICTORIA_METRICS} is missing: run scripts/setup"
        );
        let http = reqwest::Client::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("http://127.0.0.1:{}", closed_port_addr().port());
            let mut server = VictoriaMetrics {
                child: Command::new(VICTORIA_METRICS)
                    .arg(format!("-storageDataPath={}", dir.path().display()))
                    .arg(format!("-httpListenAddr={}", &url["http://".len()..]))
                    .arg("-retentionPeriod=100y")
                    .arg("-loggerLevel=ERROR")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("victoria-metrics starts"),
                url,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && server.child.try_wait().unwrap().is_none() {
                let health = http.get(format!("{}/health", server.url)).send().await;
                if health.is_ok_and(|r| r.status().is_success()) {
                    return server;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("victoria-metrics did not become healthy");
    }

    /// Every series whose name matches `name_regex`, after making written points searchable.
    pub async fn series(&self, name_regex: &str) -> Vec<Series> {
        let http = reqwest::Client::new();
        http.get(format!("{}/internal/force_flush", self.url))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        let body = http
            .get(format!("{}/api/v1/export", self.url))
            .query(&[("match[]", format!("{{__name__=~\"{name_regex}\"}}"))])
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        body.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Prometheus server (Debian package `prometheus`, installed by `scripts/setup`).
const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A Prometheus server scraping given targets every second with given rule files, killed
/// on drop.
pub struct Prometheus {
    child: Child,
    /// Base URL of its HTTP API.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts a server scraping `targets` (job name, then `host:port` of `/metrics`) every
    /// second and evaluating `rule_files` every second, and waits until it is ready.
    pub async fn start(
        targets: &[(&str, Vec<String>)],
        rule_files: &[&std::path::Path],
    ) -> Prometheus {
        assert!(
            std::path::Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: run scripts/setup --tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "scrape_configs": targets.iter().map(|(job, addresses)| serde_json::json!({
                "job_name": job,
                "static_configs": [{"targets": addresses}],
            })).collect::<Vec<_>>(),
        });
        // JSON is YAML: Prometheus reads it as its configuration file.
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let http = reqwest::Client::new();
        for _ in 0..5 {
            let url = format!("http://127.0.0.1:{}", closed_port_addr().port());
            let mut child = Command::new(PROMETHEUS)
                .arg(format!("--config.file={}", config_file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={}", &url["http://".len()..]))
                .arg("--log.level=error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("prometheus starts");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                let ready = http.get(format!("{url}/-/ready")).send().await;
                if ready.is_ok_and(|r| r.status().is_success()) {
                    return Prometheus {
                        child,
                        url,
                        _dir: dir,
                    };
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("prometheus did not become ready");
    }

    /// The `data` of a GET of the API path `path` (e.g. `/api/v1/alerts`).
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"].clone()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
