//! Prometheus metrics: one recorder per process, served at `/metrics`.
//!
//! Services record with the `metrics` macros (`metrics::counter!` ...);
//! the scaffold adds per-RPC request counts, failures, durations and
//! in-flight gauges labelled by gRPC service and method.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::Shutdown;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets for latencies in seconds: 1 ms .. 2 min.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];

/// Installs the process-wide recorder (once; later calls return the same
/// handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("static, non-empty buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may exist in tests that embed several services;
            // keep the first and render from ours regardless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// How often recorded histogram samples are folded into their buckets
/// when nobody scrapes (the exporter keeps every sample until then).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` in the Prometheus text format until `shutdown`,
/// and folds histogram samples into their buckets every [`UPKEEP_EVERY`]:
/// the exporter holds each recorded sample until the next render or
/// upkeep, so a process that nobody scrapes would otherwise grow by every
/// clip's samples for as long as it runs.
pub async fn serve(listener: TcpListener, shutdown: Shutdown) -> std::io::Result<()> {
    let handle = install();
    tokio::spawn({
        let (handle, shutdown) = (handle.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => handle.run_upkeep(),
                    () = shutdown.triggered() => break,
                }
            }
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                handle.run_upkeep();
                handle.render()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.triggered().await })
        .await
}
