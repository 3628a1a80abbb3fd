//! The gateway: osa's public API (package `osa.v1`: AvatarService,
//! RenderService, LiveService, InfoService).
//!
//! It orchestrates jobs and live sessions through the stages
//! (audio-encoder -> generator -> decoder) and holds no model, so it links no
//! libtorch. Served so far: InfoService (model, presets, limits). Ready for
//! the public services: API keys ([`keys`], `osa keys`) and the
//! authentication wrapper ([`auth`]).

pub mod auth;
pub mod blobs;
mod info;
pub mod keys;
pub mod quota;
pub mod settings;
pub mod store;
pub mod webhook;

pub use settings::Settings;

use osa_proto::v1::info_service_server::InfoServiceServer;
use osa_runtime::{Shutdown, serve::ServiceSet};
use tokio::net::TcpListener;

/// The InfoService implementation for `settings` (to serve it, or wrap it).
pub fn info_service(settings: &Settings) -> impl osa_proto::v1::info_service_server::InfoService {
    info::Info::new(settings)
}

/// Serves the gateway on `listener` until `shutdown` and the drain are over.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let max = settings.grpc.max_message_bytes;
    let info = InfoServiceServer::new(info::Info::new(&settings))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let services = ServiceSet::new().with(info);
    osa_runtime::serve::serve(
        "osa-gateway",
        &settings.grpc,
        services,
        listener,
        async { Ok(()) },
        shutdown,
    )
    .await?;
    Ok(())
}
