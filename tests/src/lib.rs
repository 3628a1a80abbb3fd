//! Test support for osa's cross-service tests (`tests/tests/*.rs`).
//!
//! - [`sandbox`]: start services in-process on `127.0.0.1:0` exactly as their
//!   binaries do (`run(settings, listener, shutdown)`), wait for health.
//! - [`ticker`]: the scaffold's streaming test service.
//! - [`collector`]: an in-process OTLP trace collector that records what the
//!   services export.
//! - [`e2e`]: Redis, the whole cluster as `osa serve all` runs it, API keys,
//!   sample media and ffprobe checks for the end-to-end tests.

pub mod collector;
pub mod e2e;
pub mod sandbox;
pub mod ticker;
