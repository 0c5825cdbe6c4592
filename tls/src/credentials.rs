//! Certificates and keys read from PEM files, turned into rustls configurations, and read
//! again when the files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{CertFiles, TlsError, TlsFiles};

/// Files are read again at most this often, when a connection is made.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The application protocol a port speaks, offered through ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2.
    Grpc,
    /// The REST API: HTTP/1.1.
    Http1,
}

impl Protocol {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// A certificate, its key and optionally the CA that peers must chain to, kept current
/// with their files.
#[derive(Debug)]
pub struct Credentials {
    /// Certificate, key and (for mutual TLS) CA files.
    paths: Vec<PathBuf>,
    protocol: Protocol,
    loaded: Mutex<Loaded>,
}

/// The configurations built from one version of the files.
#[derive(Debug)]
struct Loaded {
    checked: Instant,
    contents: Vec<Vec<u8>>,
    server: Arc<ServerConfig>,
    /// Present for mutual TLS.
    client: Option<Arc<ClientConfig>>,
}

impl Credentials {
    /// Mutual TLS: this process's identity, and peers verified against the CA both ways.
    pub fn mutual(files: &TlsFiles, protocol: Protocol) -> Result<Credentials, TlsError> {
        Credentials::load(
            vec![
                files.cert_file.clone(),
                files.key_file.clone(),
                files.ca_file.clone(),
            ],
            protocol,
        )
    }

    /// A server identity for a public port; clients are not asked for certificates.
    pub fn server(files: &CertFiles, protocol: Protocol) -> Result<Credentials, TlsError> {
        Credentials::load(
            vec![files.cert_file.clone(), files.key_file.clone()],
            protocol,
        )
    }

    fn load(paths: Vec<PathBuf>, protocol: Protocol) -> Result<Credentials, TlsError> {
        let contents = read(&paths)?;
        let loaded = build(&paths, &contents, protocol)?;
        Ok(Credentials {
            paths,
            protocol,
            loaded: Mutex::new(loaded),
        })
    }

    /// The server configuration in force.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current(|loaded| loaded.server.clone())
    }

    /// The client configuration in force (mutual TLS only).
    pub fn client_config(&self) -> Option<Arc<ClientConfig>> {
        self.current(|loaded| loaded.client.clone())
    }

    /// Reads the files again when [`RELOAD_CHECK`] has passed since the last look, then
    /// answers from what is in force.
    fn current<T>(&self, answer: impl FnOnce(&Loaded) -> T) -> T {
        let mut loaded = self.loaded.lock().expect("credentials lock");
        if loaded.checked.elapsed() >= RELOAD_CHECK {
            loaded.checked = Instant::now();
            match read(&self.paths) {
                Ok(contents) if contents != loaded.contents => {
                    match build(&self.paths, &contents, self.protocol) {
                        Ok(fresh) => {
                            *loaded = fresh;
                            tracing::info!(files = ?self.paths, "TLS certificates reloaded");
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "TLS files changed but do not load; the previous certificates stay in force"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(
                    error = %e,
                    "TLS files unreadable; the previous certificates stay in force"
                ),
            }
        }
        answer(&loaded)
    }
}

/// ring's cryptography. rustls deprecates it for lacking post-quantum key exchange, which
/// only its aws-lc provider has (a C build needing cmake); connections get X25519 instead.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, TlsError> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.clone(),
                source,
            })
        })
        .collect()
}

fn pem_problem(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(path, e))?;
    if certificates.is_empty() {
        return Err(pem_problem(path, "no PEM certificate"));
    }
    Ok(certificates)
}

/// The configurations of `contents`, read from `paths` (certificate, key, optional CA).
fn build(paths: &[PathBuf], contents: &[Vec<u8>], protocol: Protocol) -> Result<Loaded, TlsError> {
    let provider = provider();
    let chain = certificates(&paths[0], &contents[0])?;
    let key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|e| pem_problem(&paths[1], e))?;
    let roots = match (paths.get(2), contents.get(2)) {
        (Some(path), Some(pem)) => {
            let mut roots = RootCertStore::empty();
            for certificate in certificates(path, pem)? {
                roots.add(certificate)?;
            }
            Some(Arc::new(roots))
        }
        _ => None,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &roots {
        Some(roots) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = protocol.alpn();
    let client = match roots {
        Some(roots) => {
            let mut client = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
            client.alpn_protocols = protocol.alpn();
            Some(Arc::new(client))
        }
        None => None,
    };
    Ok(Loaded {
        checked: Instant::now(),
        contents: contents.to_vec(),
        server: Arc::new(server),
        client,
    })
}
