//! Test support for osa's cross-service tests (`tests/tests/*.rs`).
//!
//! - [`sandbox`]: start services in-process on `127.0.0.1:0` exactly as their
//!   binaries do (`run(settings, listener, shutdown)`), wait for health.
//! - [`ticker`]: the scaffold's streaming test service.
//! - [`collector`]: an in-process OTLP trace collector that records what the
//!   services export.

pub mod collector;
pub mod sandbox;
pub mod ticker;
