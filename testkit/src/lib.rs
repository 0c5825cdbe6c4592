//! Sentinel's test kit: real services (RabbitMQ, Redis, VictoriaMetrics, Prometheus, a
//! webhook receiver, a TCP proxy, a Kafka-protocol broker), clusters of real `sentinel`
//! processes, and the port, clock and waiting helpers tests share. Dev-only.

pub mod kafka;
pub mod process;
pub mod services;

pub use sentinel_core::anomaly::rfc3339;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `sentinel` binary tests start: `TEST_SENTINEL_BIN` when set (not `SENTINEL_*`: the
/// processes a test starts read those as settings), else the one cargo built
/// beside the running test binary (`target/<profile>/sentinel`).
pub fn sentinel_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("TEST_SENTINEL_BIN") {
        return PathBuf::from(bin);
    }
    let test = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test binary>
    let profile_dir = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in target/<profile>/deps");
    profile_dir.join("sentinel")
}

/// Ports each test process may hand out, and where the blocks start.
const PORTS_PER_PROCESS: u16 = 25;
const FIRST_PORT: u16 = 20_000;
const PORT_BLOCKS: u16 = 480;

/// A 127.0.0.1 port nothing listens on, for a server a test starts later.
///
/// The port lies below the kernel's ephemeral range (32768 and up), so no outgoing
/// connection can take it before the server binds it, and in a block of its own for this
/// test process (by process id), so tests running beside it do not hand it out either.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let block =
        FIRST_PORT + (std::process::id() % u32::from(PORT_BLOCKS)) as u16 * PORTS_PER_PROCESS;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(
            n < usize::from(PORTS_PER_PROCESS),
            "a test process uses at most {PORTS_PER_PROCESS} ports"
        );
        let port = block + n as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A local address on which nothing listens.
pub fn closed_port_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// Start of the test clock: the wall clock, to the minute, so retention keeps the events.
pub fn t0() -> i64 {
    let now = sentinel_core::anomaly::now_ms();
    now - now % 60_000
}

/// Polls `check` until it answers `Some` or `timeout` passes.
pub async fn wait_for<T>(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
