//! A TCP port in the clients' namespace that leads to a TCP service of the machine's own
//! namespace (RabbitMQ listens on its loopback only), through a Unix socket: file system
//! paths are shared by every network namespace.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Listens on `socket` from the calling thread's (the machine's) namespace and forwards
/// every connection to `target`, on a thread of its own for the life of the process.
pub fn host_side(socket: &Path, target: SocketAddr) -> Result<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .with_context(|| format!("binding {}", socket.display()))?;
    listener.set_nonblocking(true)?;
    // The thread is created here, before the caller leaves this namespace, so its
    // connections to `target` are made from the machine's namespace.
    std::thread::Builder::new()
        .name("relay-host".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            runtime.block_on(async move {
                let listener = UnixListener::from_std(listener).expect("relay socket");
                while let Ok((mut inbound, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                }
            });
        })?;
    Ok(())
}

/// Listens on `listen` in the current namespace and forwards every connection to the
/// host side's `socket`.
pub async fn namespace_side(listen: SocketAddr, socket: PathBuf) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = UnixStream::connect(&socket).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok(())
}
