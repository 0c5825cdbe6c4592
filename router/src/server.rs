//! Running a router: the routing-table refresher, the REST server and the public gRPC
//! server, with graceful shutdown (in-flight requests, and so their batches, finish first).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryFutureExt;
use sentinel_core::Intake;
use sentinel_proto::v1::sentinel_server::SentinelServer;
use sentinel_tls::{CertFiles, ClusterTransport, Credentials, Incoming, Protocol};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::http::{HeaderValue, Response};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;

use crate::auth::{presented_key, ApiKeys};
use crate::cache::QueryCache;
use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::forward::Forwarder;
use crate::grpc::PublicApi;
use crate::ingest::{IdGenerator, RequestLimits};
use crate::listener::JsonRefusals;
use crate::metrics::RouterMetrics;
use crate::rest;
use crate::routing::RoutingTable;
use crate::service::ApiState;

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
        ids: IdGenerator::default(),
        forwarder: Forwarder::new(table.clone(), config.ingest.batch.clone(), metrics.clone()),
        table,
        intake,
        metrics,
        http: config.http.clone(),
        limits: RequestLimits {
            max_events: config.ingest.max_events_per_request,
            max_listed_problems: config.ingest.max_listed_problems,
        },
    });
    let grpc = tokio::spawn(serve_grpc(
        grpc_listener,
        state.clone(),
        Duration::from_millis(config.http.request_timeout_ms),
        stopped,
    ));
    tracing::info!(http = %config.http.listen, grpc = %config.grpc.listen, seeds = ?config.router.seeds, "router started");
    let served = axum::serve(JsonRefusals(listener), rest::router(state))
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

/// The reflection service's builder: it lists `sentinel.v1.Sentinel` only (not the
/// nodes' internal services that share its schema files).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sentinel_proto::FILE_DESCRIPTOR_SET)
        .with_service_name(<SentinelServer<PublicApi> as NamedService>::NAME)
}

/// Serves `sentinel.v1.Sentinel` and server reflection (v1 and v1alpha) on `incoming`
/// until `stopped`; request messages are limited to `http.max_body_bytes`, as REST bodies
/// are.
async fn serve_grpc(
    incoming: Incoming,
    state: Arc<ApiState>,
    timeout: Duration,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), RouterError> {
    let reflection_error =
        |e: tonic_reflection::server::Error| RouterError::Reflection(e.to_string());
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
    let api = SentinelServer::new(PublicApi::new(state.clone()))
        .max_decoding_message_size(state.http.max_body_bytes);
    let keyed = InterceptedService::new(api, move |request: tonic::Request<()>| {
        let metadata = request.metadata();
        let key = presented_key(|name| metadata.get(name).and_then(|v| v.to_str().ok()));
        state.authorize(key).map_err(tonic::Status::from)?;
        Ok(request)
    });
    tonic::transport::Server::builder()
        .timeout(timeout)
        .add_service(UndecodableIsInvalid(keyed))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })
        .await
        .map_err(|e| RouterError::Grpc(e.to_string()))
}

/// A gRPC service whose requests that do not decode (bad protobuf, a string that is not
/// UTF-8) are answered INVALID_ARGUMENT rather than tonic's INTERNAL: the caller sent them.
#[derive(Clone)]
struct UndecodableIsInvalid<S>(S);

impl<S: NamedService> NamedService for UndecodableIsInvalid<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, R, B> Service<R> for UndecodableIsInvalid<S>
where
    S: Service<R, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(Response<B>) -> Response<B>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.0
            .call(request)
            .map_ok(undecodable_is_invalid as fn(Response<B>) -> Response<B>)
    }
}

/// An answer of tonic's INTERNAL to a request it could not decode, as INVALID_ARGUMENT.
fn undecodable_is_invalid<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").is_some_and(|s| s == "13");
    let undecodable = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.replace("%20", " ")
                .starts_with("failed to decode Protobuf message")
        });
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
    response
}
