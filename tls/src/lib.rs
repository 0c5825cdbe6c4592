//! Sentinel's transport security.
//!
//! The cluster port of every node (`node.listen`: Raft between nodes, the node API that
//! routers and other nodes call) speaks mutual TLS: each node and router holds a
//! certificate signed by the cluster's CA and accepts only peers that hold one too
//! ([`SecuritySection`]). Running without it is an explicit development setting
//! (`security.insecure: true`, which `sentinel dev` uses). A router's public ports may
//! serve TLS as well ([`CertFiles`]).
//!
//! Certificates and keys are PEM files, as Kubernetes mounts a TLS Secret; they are read
//! again at most once per [`RELOAD_CHECK`] when a connection is made, so replacing the
//! files rotates them without a restart (connections already open keep their session).
//! A file that does not parse leaves the previous certificates in force.

mod connector;
mod credentials;
mod incoming;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

pub use connector::Connector;
pub use credentials::{Credentials, Protocol, RELOAD_CHECK};
pub use incoming::{Connection, Incoming};

/// What can go wrong setting up transport security.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Neither mutual TLS nor the insecure development mode was chosen, or both were.
    #[error("security: {0}")]
    Mode(String),
    /// A certificate, key or CA file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A file holds no usable certificate or key.
    #[error("{path}: {problem}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// rustls refused the certificates (a key that does not match its certificate, …).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA certificates cannot verify peers.
    #[error("CA certificates: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A certificate chain and its private key, PEM files (a TLS Secret's `tls.crt`, `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    /// The certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// This process's certificate and key, and the CA certificates its peers' must chain to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, leaf first, valid for the host names peers dial.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
    /// The CA certificates (one or more, PEM) that sign every node's and router's certificate.
    pub ca_file: PathBuf,
}

/// How the cluster port is protected: mutual TLS, or (for development only) nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySection {
    /// Mutual TLS with every node and router.
    pub tls: Option<TlsFiles>,
    /// No authentication and no encryption: anyone who reaches the port may call anything.
    pub insecure: bool,
}

impl SecuritySection {
    /// The transport this asks for, its files loaded; an error unless exactly one of
    /// `tls` and `insecure` is set.
    pub fn transport(&self) -> Result<ClusterTransport, TlsError> {
        match (&self.tls, self.insecure) {
            (Some(files), false) => Ok(ClusterTransport::MutualTls(Arc::new(Credentials::mutual(
                files,
                Protocol::Grpc,
            )?))),
            (None, true) => Ok(ClusterTransport::Insecure),
            (None, false) => Err(TlsError::Mode(
                "set security.tls (cert_file, key_file, ca_file) for mutual TLS, or, for \
                 development only, security.insecure: true"
                    .into(),
            )),
            (Some(_), true) => Err(TlsError::Mode(
                "security.tls and security.insecure are both set; choose one".into(),
            )),
        }
    }
}

/// How this process dials and accepts on the cluster port.
#[derive(Debug, Clone)]
pub enum ClusterTransport {
    /// Plain TCP (development).
    Insecure,
    /// Mutual TLS with these credentials.
    MutualTls(Arc<Credentials>),
}

impl ClusterTransport {
    /// A lazily connected channel to `address` (host:port), with `endpoint` applied to its
    /// settings (timeouts, keep-alive).
    pub fn channel(
        &self,
        address: &str,
        endpoint: impl FnOnce(Endpoint) -> Endpoint,
    ) -> Result<Channel, tonic::transport::Error> {
        let endpoint = endpoint(Endpoint::from_shared(format!("http://{address}"))?);
        Ok(match self {
            ClusterTransport::Insecure => endpoint.connect_lazy(),
            ClusterTransport::MutualTls(credentials) => {
                endpoint.connect_with_connector_lazy(Connector::new(credentials.clone()))
            }
        })
    }

    /// The connections `listener` accepts, through TLS when this transport has it.
    pub fn incoming(&self, listener: tokio::net::TcpListener) -> Incoming {
        let credentials = match self {
            ClusterTransport::Insecure => None,
            ClusterTransport::MutualTls(credentials) => Some(credentials.clone()),
        };
        Incoming::new(listener, credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_of_tls_and_insecure_is_required() {
        let missing = SecuritySection::default().transport().unwrap_err();
        assert!(
            missing.to_string().contains("security.insecure"),
            "{missing}"
        );
        let files = TlsFiles {
            cert_file: "/nonexistent/tls.crt".into(),
            key_file: "/nonexistent/tls.key".into(),
            ca_file: "/nonexistent/ca.crt".into(),
        };
        let both = SecuritySection {
            tls: Some(files.clone()),
            insecure: true,
        };
        assert!(both.transport().unwrap_err().to_string().contains("both"));
        let insecure = SecuritySection {
            tls: None,
            insecure: true,
        };
        assert!(matches!(
            insecure.transport(),
            Ok(ClusterTransport::Insecure)
        ));
        let unreadable = SecuritySection {
            tls: Some(files),
            insecure: false,
        };
        let error = unreadable.transport().unwrap_err().to_string();
        assert!(error.contains("/nonexistent/tls.crt"), "{error}");
    }
}
