//! The `main` of every service binary, so each `main.rs` is a few lines.
//!
//! Parses `--config FILE` (or `OSA_CONFIG`), loads and validates the
//! settings (a bad value exits with status 2 and a message naming the key),
//! starts telemetry, the `/metrics` endpoint and the SIGTERM/SIGINT handler,
//! binds the gRPC listener and hands over to the service's `run`.

use std::{future::Future, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;

use crate::{Shutdown, settings::ServiceSettings};

/// Command line shared by the service binaries.
#[derive(Debug, Parser)]
pub struct ServiceArgs {
    /// TOML settings file; `OSA__SECTION__KEY` variables override it.
    #[arg(long, env = "OSA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective settings as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Runs a service binary. `run` gets the validated settings, the bound gRPC
/// listener and the shutdown handle, and returns when the drain is over.
pub fn main<S, F, Fut>(service: &'static str, run: F) -> ExitCode
where
    S: ServiceSettings,
    F: FnOnce(S, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = ServiceArgs::parse();
    let settings: S = match crate::settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        return match toml::to_string_pretty(&settings) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{service}: cannot print settings: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(service, settings, run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "exiting");
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn start<S, F, Fut>(service: &'static str, settings: S, run: F) -> anyhow::Result<()>
where
    S: ServiceSettings,
    F: FnOnce(S, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let common = settings.common();
    let guard = crate::telemetry::init(service, common.telemetry)?;
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals().context("install signal handlers")?;
    if common.metrics.enabled {
        let addr = common.metrics.listen;
        let listener =
            TcpListener::bind(addr).await.with_context(|| format!("bind metrics.listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, shutdown).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let addr = common.grpc.listen;
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("bind grpc.listen {addr}"))?;
    let result = run(settings, listener, shutdown).await;
    guard.flush();
    result
}
