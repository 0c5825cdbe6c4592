//! Running a node: servers, cluster formation, background loops, graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sentinel_proto::v1::bootstrap_server::BootstrapServer;
use sentinel_proto::v1::node_server::NodeServer;
use sentinel_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::sync::watch;

use crate::alerting::{AlertMetrics, Dispatcher};
use crate::bootstrap::{self, bind};
use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::export::{ExportMetrics, Exporter};
use crate::host::Host;
use crate::identity::{self, Found, Identity};
use crate::leader::LeaderWork;
use crate::membership;
use crate::metrics::NodeMetrics;
use crate::reconciler::{self, Reconciler};
use crate::service::NodeService;
use crate::transport::MAX_MESSAGE_BYTES;

/// How long a stopping node waits for its loops to end and its servers to finish the
/// calls in flight and close their connections (peers' connections can stay open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the node looks for a Raft group that stopped on an error.
const FAILURE_CHECK: Duration = Duration::from_millis(200);

/// Runs a node until `shutdown` resolves, then hands its leaderships over and stops.
///
/// A Raft group whose core stops on an error (a failed write or sync: a full disk, an I/O
/// error) stops the whole node the same way, and `run` answers the error: the node fails
/// fast so that its supervisor restarts it, rather than serving on with dead replicas.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    config.check()?;
    let metrics = NodeMetrics::new()?;
    let transport = config.security.transport()?;
    if matches!(transport, sentinel_tls::ClusterTransport::Insecure) {
        tracing::warn!(
            "security.insecure: the gRPC port takes calls from anyone who reaches it, without TLS"
        );
    }
    tokio::pin!(shutdown);
    let found = identity::load(&config.node.data_dir, config.node.id)?;
    let identity = match &found {
        Found::Recorded(identity) => identity.clone(),
        Found::Unrecorded => Identity {
            cluster_id: String::new(),
            ordinal: config.node.id,
            member: config.node.id,
            founder: config.node.other_seeds().is_empty(),
        },
        Found::Empty => tokio::select! {
            settled = bootstrap::settle(&config, &transport, metrics.snapshot_bytes_sent.clone()) => settled?,
            () = &mut shutdown => return Ok(()),
        },
    };
    let grpc = bind(config.node.listen, "gRPC").await?;
    let http = bind(config.http.listen, "HTTP").await?;
    let dispatcher = Arc::new(
        Dispatcher::connect(&config.alerting, AlertMetrics::new(&metrics.registry)?).await?,
    );
    let exporter = match &config.export {
        Some(export) => Some(Arc::new(Exporter::new(
            export,
            ExportMetrics::new(&metrics.registry)?,
        )?)),
        None => None,
    };
    let incoming = transport.incoming(grpc);
    let host = Host::open(
        config,
        identity.member,
        transport,
        metrics.snapshot_bytes_sent.clone(),
    )
    .await?;
    tracing::info!(
        node = host.id,
        grpc = %host.config.node.listen,
        http = %host.config.http.listen,
        replicas = host.replicas().len(),
        "node started"
    );
    let (stop, stopped) = watch::channel(false);
    let mut loops = vec![tokio::spawn(crate::elections::run(
        host.clone(),
        stopped.clone(),
    ))];
    let service = NodeService::new(host.clone(), metrics.clone());
    let grpc_server = tokio::spawn({
        let mut stopped = stopped.clone();
        tonic::transport::Server::builder()
            .layer(metrics.grpc_layer())
            .add_service(
                NodeServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(BootstrapServer::new(service.clone()))
            .add_service(
                RaftTransportServer::new(service)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
    });
    let http_server = tokio::spawn({
        let mut stopped = stopped.clone();
        let app = crate::http::router(host.clone(), metrics.clone());
        async move {
            axum::serve(http, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }
    });
    let failed = host.failed(FAILURE_CHECK);
    tokio::pin!(failed);
    let mut failure = None;
    let formed = tokio::select! {
        formed = membership::form(&host, &identity) => Some(formed),
        () = &mut shutdown => None,
        group = &mut failed => {
            failure = Some(group);
            None
        }
    };
    if let Some(formed) = formed {
        formed?;
        tracing::info!(node = host.id, "node is a member of the cluster");
        if found == Found::Unrecorded {
            loops.push(tokio::spawn(membership::record_identity(
                host.clone(),
                identity,
                stopped.clone(),
            )));
        }
        loops.push(tokio::spawn(reconcile_loop(
            host.clone(),
            metrics.clone(),
            stopped.clone(),
        )));
        let leader = LeaderWork::new(host.clone(), metrics.clone(), dispatcher, exporter);
        loops.push(tokio::spawn(leader.run(stopped.clone())));
        tokio::select! {
            () = &mut shutdown => {}
            group = &mut failed => failure = Some(group),
        }
    }
    if let Some((group, error)) = &failure {
        tracing::error!(
            node = host.id,
            group,
            %error,
            "a Raft group stopped on an error: stopping the node so that it is restarted"
        );
    }
    tracing::info!(node = host.id, "shutting down: handing leaderships over");
    reconciler::hand_over(&host).await;
    let _ = stop.send(true);
    let mut grpc_server = grpc_server;
    let mut http_server = http_server;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        for task in &mut loops {
            let _ = task.await;
        }
        if let Ok(Err(e)) = (&mut grpc_server).await {
            tracing::warn!(error = %e, "gRPC server stopped with an error");
        }
        if let Ok(Err(e)) = (&mut http_server).await {
            tracing::warn!(error = %e, "HTTP server stopped with an error");
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            node = host.id,
            "calls or connections still open {DRAIN_TIMEOUT:?} after shutdown began; closing them"
        );
        for task in &loops {
            task.abort();
        }
        grpc_server.abort();
        http_server.abort();
    }
    host.shutdown().await;
    tracing::info!(node = host.id, "node stopped");
    match failure {
        None => Ok(()),
        Some((group, error)) => Err(NodeError::Raft {
            group,
            message: format!("stopped on an error, so the node stopped: {error}"),
        }),
    }
}

async fn reconcile_loop(host: Arc<Host>, metrics: NodeMetrics, mut stopped: watch::Receiver<bool>) {
    let period = Duration::from_millis(host.config.raft.reconcile_ms);
    let mut reconciler = Reconciler::new(host, metrics);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(period) => reconciler.round().await,
        }
    }
}
