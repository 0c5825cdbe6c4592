//! Running a router: the routing-table refresher, the REST server and the public gRPC
//! server, with graceful shutdown (in-flight requests, and so their batches, finish first).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sentinel_core::Intake;
use sentinel_proto::v1::sentinel_server::SentinelServer;
use sentinel_tls::{CertFiles, ClusterTransport, Credentials, Incoming, Protocol};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{self, ApiState, EventIds};
use crate::auth::{presented_key, ApiKeys};
use crate::cache::QueryCache;
use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::forward::Forwarder;
use crate::grpc::PublicApi;
use crate::metrics::RouterMetrics;
use crate::routing::RoutingTable;

/// Runs a router until `shutdown` resolves and the requests in flight are answered.
pub async fn run(
    config: RouterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let metrics = RouterMetrics::new()?;
    let intake = Arc::new(Intake::new(
        config.ingest.validation.clone(),
        &config.ingest.redaction,
    )?);
    let transport = config.security.transport()?;
    if matches!(transport, ClusterTransport::Insecure) {
        tracing::warn!("security.insecure: calls to the nodes go without TLS");
    }
    let listener = serve_on(
        config.http.listen,
        "HTTP",
        &config.http.tls,
        Protocol::Http1,
    )
    .await?;
    let grpc_listener =
        serve_on(config.grpc.listen, "gRPC", &config.grpc.tls, Protocol::Grpc).await?;
    let table = Arc::new(RoutingTable::new(
        config.router.clone(),
        metrics.clone(),
        transport,
    ));
    let (stop, stopped) = watch::channel(false);
    let refresher = tokio::spawn(table.clone().run(stopped.clone()));
    // Kafka stops reading as soon as shutdown begins, and finishes before the refresher.
    let (kafka_stop, kafka_stopped) = watch::channel(false);
    let kafka = crate::kafka::start(
        &config,
        table.clone(),
        intake.clone(),
        metrics.clone(),
        kafka_stopped,
    )?;
    let state = Arc::new(ApiState {
        keys: ApiKeys::new(&config.auth.api_keys)?,
        cache: QueryCache::new(&config.cache, metrics.clone())?,
        ids: EventIds::default(),
        forwarder: Forwarder::new(table.clone(), config.ingest.batch.clone(), metrics.clone()),
        table,
        intake,
        metrics,
        http: config.http.clone(),
    });
    let grpc = tokio::spawn(serve_grpc(
        grpc_listener,
        state.clone(),
        Duration::from_millis(config.http.request_timeout_ms),
        stopped,
    ));
    tracing::info!(http = %config.http.listen, grpc = %config.grpc.listen, seeds = ?config.router.seeds, "router started");
    let served = axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = kafka_stop.send(true);
        })
        .await
        .map_err(|source| RouterError::Io {
            what: "serving HTTP".into(),
            source,
        });
    if let Some(kafka) = kafka {
        let _ = kafka.await;
    }
    let _ = stop.send(true);
    let _ = refresher.await;
    let grpc_served = grpc.await.unwrap_or(Ok(()));
    tracing::info!("router stopped");
    served.and(grpc_served)
}

/// The connections to the `what` server on `address`, through TLS with `tls` when set.
async fn serve_on(
    address: SocketAddr,
    what: &str,
    tls: &Option<CertFiles>,
    protocol: Protocol,
) -> Result<Incoming, RouterError> {
    let credentials = match tls {
        Some(files) => Some(Arc::new(Credentials::server(files, protocol)?)),
        None => None,
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| RouterError::Io {
            what: format!("binding the {what} listener on {address}"),
            source,
        })?;
    Ok(Incoming::new(listener, credentials))
}

/// Serves `sentinel.v1.Sentinel` and server reflection on `incoming` until `stopped`.
async fn serve_grpc(
    incoming: Incoming,
    state: Arc<ApiState>,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), RouterError> {
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sentinel_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RouterError::Reflection(e.to_string()))?;
    tonic::transport::Server::builder()
        .timeout(timeout)
        .add_service(SentinelServer::with_interceptor(
            PublicApi::new(state.clone()),
            move |request: tonic::Request<()>| {
                let metadata = request.metadata();
                let key = presented_key(|name| metadata.get(name).and_then(|v| v.to_str().ok()));
                state.authorize(key).map_err(tonic::Status::from)?;
                Ok(request)
            },
        ))
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| RouterError::Grpc(e.to_string()))
}
