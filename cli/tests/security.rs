//! Transport security with real processes: nodes that speak mutual TLS form a cluster, a
//! router behind them ingests over HTTPS and gRPC over TLS, strangers are refused at a
//! node's port, and certificates replaced on disk are used without a restart. The
//! certificates are made by the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use sentinel_proto::v1::sentinel_client::SentinelClient;
use sentinel_proto::v1::{ClusterStatusQuery, ClusterStatusRequest, DecommissionRequest};
use sentinel_testkit::process::{client_over, event_json, Cluster};
use sentinel_testkit::wait_for;
use sentinel_tls::{ClusterTransport, Credentials, Protocol, TlsFiles, RELOAD_CHECK};

const CONVERGE: Duration = Duration::from_secs(90);

/// A certificate authority made for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for loopback (server and client use), with its key, as PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes a certificate issued by `ca` and the trusted CA bundle `trusted` under `dir`, the
/// way a Kubernetes TLS Secret is mounted (replacing files that are there).
fn write_files(dir: &Path, ca: &Ca, name: &str, trusted: &str) -> TlsFiles {
    std::fs::create_dir_all(dir).expect("secret dir");
    let (cert, key) = ca.issue(name);
    let files = TlsFiles {
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
        ca_file: dir.join("ca.crt"),
    };
    for (path, text) in [
        (&files.cert_file, cert.as_str()),
        (&files.key_file, key.as_str()),
        (&files.ca_file, trusted),
    ] {
        let staged = path.with_extension("new");
        std::fs::write(&staged, text).expect("write");
        std::fs::rename(&staged, path).expect("rename");
    }
    files
}

/// The `SENTINEL_SECURITY__*` variables of mutual TLS with `files`.
fn security_env(files: &TlsFiles) -> Vec<(String, String)> {
    let path = |p: &PathBuf| p.display().to_string();
    vec![
        ("SENTINEL_SECURITY__INSECURE".into(), "false".into()),
        (
            "SENTINEL_SECURITY__TLS__CERT_FILE".into(),
            path(&files.cert_file),
        ),
        (
            "SENTINEL_SECURITY__TLS__KEY_FILE".into(),
            path(&files.key_file),
        ),
        (
            "SENTINEL_SECURITY__TLS__CA_FILE".into(),
            path(&files.ca_file),
        ),
    ]
}

fn mutual(files: &TlsFiles) -> ClusterTransport {
    ClusterTransport::MutualTls(Arc::new(
        Credentials::mutual(files, Protocol::Grpc).expect("credentials load"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutual_tls_cluster_forms_ingests_and_refuses_strangers() {
    let pki = tempfile::tempdir().expect("dir");
    let ca = Ca::new("sentinel cluster CA");
    let nodes = write_files(&pki.path().join("node"), &ca, "node", &ca.pem());
    let mut cluster = Cluster::start_with(3, 4, 3, security_env(&nodes));
    cluster.transport = mutual(&write_files(
        &pki.path().join("test"),
        &ca,
        "test",
        &ca.pem(),
    ));
    cluster.wait_converged(CONVERGE).await;

    // A router calls the nodes over mutual TLS and serves HTTPS and gRPC over TLS.
    let router_files = write_files(&pki.path().join("router"), &ca, "router", &ca.pem());
    let public = write_files(&pki.path().join("public"), &ca, "public", &ca.pem());
    let mut env: Vec<(String, String)> = security_env(&router_files);
    let public_cert = public.cert_file.display().to_string();
    let public_key = public.key_file.display().to_string();
    for section in ["HTTP", "GRPC"] {
        env.push((
            format!("SENTINEL_{section}__TLS__CERT_FILE"),
            public_cert.clone(),
        ));
        env.push((
            format!("SENTINEL_{section}__TLS__KEY_FILE"),
            public_key.clone(),
        ));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let router = cluster.https_router(&env, ca.pem().as_bytes()).await;
    let events: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            let service = ["checkout", "search"][i % 2];
            let t = cluster.t0 + i as i64 * 1000;
            event_json(service, "gpt-4o", t, 300.0, &format!("tls-{i}"))
        })
        .collect();
    let (status, answer) = router.post_events(&serde_json::json!(events)).await;
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{answer}\n{}",
        router.log()
    );
    assert_eq!(answer["accepted"], 20, "{answer}");
    let grpc = cluster
        .transport
        .channel(&router.grpc, |endpoint| {
            endpoint.timeout(Duration::from_secs(10))
        })
        .expect("channel");
    let status = SentinelClient::new(grpc)
        .cluster_status(ClusterStatusQuery::default())
        .await
        .expect("public gRPC over TLS answers");
    assert!(status.into_inner().fields.contains_key("shards"));

    // Strangers reach the port but are refused before any call runs: no TLS, TLS without
    // a certificate, a certificate of another CA.
    let node = cluster.nodes[&2].grpc.clone();
    let decommission = || DecommissionRequest { node_id: 2 };
    let plain = client_over(&ClusterTransport::Insecure, &node)
        .decommission(decommission())
        .await;
    assert!(plain.is_err(), "a plaintext call is refused: {plain:?}");
    let stranger_ca = Ca::new("someone else's CA");
    let stranger = write_files(
        &pki.path().join("stranger"),
        &stranger_ca,
        "stranger",
        &ca.pem(),
    );
    let wrong = client_over(&mutual(&stranger), &node)
        .decommission(decommission())
        .await;
    assert!(
        wrong.is_err(),
        "another CA's certificate is refused: {wrong:?}"
    );
    let anonymous = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .build()
        .expect("client")
        .post(format!("https://{node}/sentinel.v1.Node/Decommission"))
        .header("content-type", "application/grpc")
        .send()
        .await;
    assert!(
        anonymous.is_err(),
        "TLS without a certificate is refused: {anonymous:?}"
    );
    let status = cluster
        .client(0)
        .await
        .cluster_status(ClusterStatusRequest { digests: false })
        .await
        .expect("status")
        .into_inner();
    assert!(
        status.nodes.iter().all(|n| n.state == "active"),
        "nothing was decommissioned: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_on_disk_are_used_without_a_restart() {
    let pki = tempfile::tempdir().expect("dir");
    let (old, new) = (Ca::new("old CA"), Ca::new("new CA"));
    let secret = pki.path().join("node");
    let files = write_files(&secret, &old, "node", &old.pem());
    let mut cluster = Cluster::start_with(1, 2, 1, security_env(&files));
    cluster.transport = mutual(&write_files(
        &pki.path().join("old"),
        &old,
        "test",
        &old.pem(),
    ));
    cluster.wait_converged(CONVERGE).await;
    let node = cluster.nodes[&0].grpc.clone();
    let status = || ClusterStatusRequest { digests: false };
    let with_new = mutual(&write_files(
        &pki.path().join("new"),
        &new,
        "test",
        &new.pem(),
    ));
    assert!(
        client_over(&with_new, &node)
            .cluster_status(status())
            .await
            .is_err(),
        "the new CA is not trusted yet"
    );

    // Rotation: the node's certificate now comes from the new CA, and it trusts both.
    write_files(
        &secret,
        &new,
        "node",
        &format!("{}{}", old.pem(), new.pem()),
    );
    tokio::time::sleep(RELOAD_CHECK).await;
    let rotated = wait_for(Duration::from_secs(10), async || {
        client_over(&with_new, &node)
            .cluster_status(status())
            .await
            .ok()
    })
    .await;
    assert!(
        rotated.is_some(),
        "a client of the new CA is accepted and accepts the node\n{}",
        cluster.logs()
    );
    let stale = mutual(&write_files(
        &pki.path().join("old-only"),
        &old,
        "old",
        &old.pem(),
    ));
    assert!(
        client_over(&stale, &node)
            .cluster_status(status())
            .await
            .is_err(),
        "the node presents its new certificate, which a client trusting only the old CA refuses"
    );
}
