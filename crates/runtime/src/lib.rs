//! What every osa service shares.
//!
//! - [`settings`]: layered configuration (defaults, TOML file, `OSA__*`
//!   environment) parsed once into typed, validated settings.
//! - [`telemetry`]: logs, OpenTelemetry traces over OTLP, and W3C trace
//!   context carried in gRPC metadata across every hop.
//! - [`metrics`]: the Prometheus `/metrics` endpoint and per-RPC metrics.
//! - [`serve`]: the gRPC serving scaffold — `run(settings, listener,
//!   shutdown)`, health (NOT_SERVING until warm), reflection, graceful drain.
//! - [`error`]: the one mapping from service errors to gRPC status codes.
//! - [`client`]: channels to other stages with the same limits and tracing.
//! - [`balance`]: one channel over a stage's replicas (static or DNS),
//!   balanced by streams in flight.
//! - [`model_queue`]: the bounded queue in front of a model's owner thread.

pub mod app;
pub mod balance;
pub mod client;
pub mod drain;
pub mod error;
pub mod metrics;
pub mod model_queue;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use error::ServiceError;
pub use shutdown::Shutdown;

/// Test support: a private redis-server, ...
#[cfg(feature = "testing")]
pub mod testkit;

/// A tiny streaming service used by the scaffold's own tests (drain, tracing).
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::all, clippy::pedantic, missing_docs, unused_qualifications)]
pub mod testing {
    tonic::include_proto!("osa.testing.v1");
}
