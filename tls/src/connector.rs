//! Dialing a peer over mutual TLS, for tonic channels.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;

use crate::Credentials;

/// Opens TLS connections to `http://host:port` URIs with the credentials in force, checking
/// that the peer's certificate is valid for `host`.
#[derive(Debug, Clone)]
pub struct Connector {
    credentials: Arc<Credentials>,
}

impl Connector {
    /// A connector presenting `credentials` (which must be mutual-TLS credentials).
    pub fn new(credentials: Arc<Credentials>) -> Connector {
        Connector { credentials }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.credentials.client_config();
        Box::pin(async move {
            let config = config.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no client certificate to present",
                )
            })?;
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            let host = uri
                .host()
                .ok_or_else(|| invalid("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let name = ServerName::try_from(host.clone()).map_err(|e| invalid(&e.to_string()))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
