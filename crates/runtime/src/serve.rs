//! The gRPC serving scaffold shared by every service.
//!
//! [`serve`] runs a tonic server on a listener the caller bound (port 0 in
//! tests) with:
//! - gRPC health: every registered service and the server as a whole ("")
//!   report NOT_SERVING until the service's warm-up finishes, and again from
//!   the moment shutdown starts;
//! - gRPC reflection (v1 and v1alpha) over osa's descriptor set;
//! - per-RPC tracing (a server span whose parent is the caller's W3C
//!   context) and metrics;
//! - graceful drain: on shutdown the listener closes, in-flight calls may
//!   finish until `grpc.drain_timeout`, then they are cut;
//! - optional TLS, and mutual TLS with a client CA (`grpc.tls`, see
//!   [`TlsSettings`](crate::settings::TlsSettings)).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{server::NamedService, service::Routes};
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::Instrument as _;

use crate::{Shutdown, drain::HardStopLayer, settings::GrpcSettings};

/// How long cut calls get to flush their final status after the deadline.
const HARD_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc tls: {0}")]
    Tls(#[from] crate::settings::SettingsError),
}

/// Health of the services a server hosts.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    names: Vec<String>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness").field("names", &self.names).finish()
    }
}

impl Readiness {
    async fn set(&self, status: ServingStatus) {
        for name in &self.names {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Marks every hosted service (and the server, "") SERVING.
    pub async fn set_serving(&self) {
        self.set(ServingStatus::Serving).await;
    }

    /// Marks every hosted service (and the server, "") NOT_SERVING.
    pub async fn set_not_serving(&self) {
        self.set(ServingStatus::NotServing).await;
    }
}

/// The services a server hosts, each named for health reporting.
#[derive(Default)]
pub struct ServiceSet {
    routes: tonic::service::RoutesBuilder,
    names: Vec<String>,
}

impl std::fmt::Debug for ServiceSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSet").field("names", &self.names).finish()
    }
}

impl ServiceSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic server (already configured with its message
    /// size limits).
    pub fn with<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME.to_owned());
        self.routes.add_service(svc);
        self
    }
}

/// Runs the server until `shutdown` and the drain are over.
///
/// `warm_up` runs beside the server (health stays NOT_SERVING until it
/// returns `Ok`; on `Err` the error is logged and health stays NOT_SERVING,
/// so probes keep traffic away while the process stays inspectable).
pub async fn serve<W>(
    service_name: &'static str,
    grpc: &GrpcSettings,
    services: ServiceSet,
    listener: TcpListener,
    warm_up: W,
    shutdown: Shutdown,
) -> Result<(), ServeError>
where
    W: Future<Output = Result<(), String>> + Send + 'static,
{
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut names = services.names.clone();
    names.push(String::new());
    let readiness = Readiness { reporter, names };
    readiness.set_not_serving().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(osa_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(osa_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut routes: Routes = services.routes.routes();
    routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let local = listener.local_addr().ok();
    tracing::info!(service = service_name, addr = ?local, "grpc listening");

    {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            match warm_up.await {
                Ok(()) if !shutdown.is_triggered() => {
                    readiness.set_serving().await;
                    tracing::info!(
                        service = service_name,
                        warm_up_ms = started.elapsed().as_millis() as u64,
                        "serving"
                    );
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(service = service_name, error = %e, "warm-up failed; staying NOT_SERVING")
                }
            }
        });
    }

    let signal = {
        let readiness = readiness.clone();
        let shutdown = shutdown.clone();
        async move {
            shutdown.triggered().await;
            readiness.set_not_serving().await;
            tracing::info!(service = service_name, "draining");
        }
    };
    let hard_stop = tokio_util::sync::CancellationToken::new();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = grpc.tls.to_server_config()? {
        builder = builder.tls_config(tls)?;
        tracing::info!(
            service = service_name,
            mutual = grpc.tls.client_ca_path.is_some(),
            "grpc tls on"
        );
    }
    let server = builder
        .http2_keepalive_interval(Some(grpc.keepalive_interval))
        .concurrency_limit_per_connection(grpc.concurrency_limit_per_connection)
        .layer(
            tower::ServiceBuilder::new()
                .layer(HardStopLayer::new(hard_stop.clone()))
                .layer(GrpcTelemetryLayer { service: service_name }),
        )
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);

    let deadline = async {
        shutdown.triggered().await;
        tokio::time::sleep(grpc.drain_timeout).await;
    };
    tokio::pin!(server);
    tokio::select! {
        res = &mut server => {
            res?;
            tracing::info!(service = service_name, "drained");
            return Ok(());
        }
        () = deadline => {}
    }
    tracing::warn!(
        service = service_name,
        drain_timeout = ?grpc.drain_timeout,
        "drain deadline passed; cutting in-flight calls"
    );
    hard_stop.cancel();
    // Cut calls end their streams at once; give the connections a moment to
    // flush those trailers, then give up on them.
    if tokio::time::timeout(HARD_STOP_GRACE, &mut server).await.is_err() {
        tracing::warn!(service = service_name, "connections still open after the hard stop");
    }
    Ok(())
}

/// Tower layer: a server span per RPC (parented on the caller's W3C context)
/// and request metrics. Health checks and reflection are not traced: probes
/// would drown the traces.
#[derive(Debug, Clone, Copy)]
pub struct GrpcTelemetryLayer {
    service: &'static str,
}

impl<S> tower::Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner, service: self.service }
    }
}

/// See [`GrpcTelemetryLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTelemetry<S> {
    inner: S,
    service: &'static str,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: http_body::Body + Send + 'static,
{
    type Response = http::Response<InFlightBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        if path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(|b| InFlightBody::new(b, None))) });
        }
        let (rpc_service, rpc_method) = split_path(&path);
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            server = self.service,
        );
        crate::telemetry::set_remote_parent(&span, req.headers());

        let labels = [("rpc_service", rpc_service), ("rpc_method", rpc_method)];
        let in_flight = InFlight::new(metrics::gauge!("osa_grpc_requests_in_flight", &labels));
        let started = Instant::now();
        let fut = self.inner.call(req);
        let record_span = span.clone();
        Box::pin(
            async move {
                let res = fut.await;
                // The status is in the headers for errors and unary calls
                // answered "trailers-only"; otherwise the call started fine
                // and its final status travels in the trailers.
                let code = match &res {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                    Err(_) => tonic::Code::Unknown,
                };
                record_span.record("rpc.grpc.status_code", code as i32);
                let code_label = format!("{code:?}");
                metrics::counter!(
                    "osa_grpc_requests_total",
                    "rpc_service" => labels[0].1.clone(),
                    "rpc_method" => labels[1].1.clone(),
                    "code" => code_label
                )
                .increment(1);
                if code != tonic::Code::Ok {
                    metrics::counter!("osa_grpc_request_failures_total", &labels).increment(1);
                }
                metrics::histogram!("osa_grpc_request_duration_seconds", &labels)
                    .record(started.elapsed().as_secs_f64());
                // A streaming call stays in flight until its response body
                // ends (or is dropped), not just until its headers leave.
                res.map(|r| r.map(|b| InFlightBody::new(b, Some(in_flight))))
            }
            .instrument(span),
        )
    }
}

/// Counts a call in `osa_grpc_requests_in_flight` while alive.
#[derive(Debug)]
pub struct InFlight(metrics::Gauge);

impl InFlight {
    fn new(gauge: metrics::Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A response body that keeps its call counted as in flight until the body
/// is finished or dropped.
pub struct InFlightBody<B> {
    inner: Pin<Box<B>>,
    guard: Option<InFlight>,
}

impl<B> std::fmt::Debug for InFlightBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightBody").finish_non_exhaustive()
    }
}

impl<B> InFlightBody<B> {
    fn new(inner: B, guard: Option<InFlight>) -> Self {
        Self { inner: Box::pin(inner), guard }
    }
}

impl<B: http_body::Body> http_body::Body for InFlightBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = self.inner.as_mut().poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B: http_body::Body + Default> Default for InFlightBody<B> {
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    (service, method)
}
