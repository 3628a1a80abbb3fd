//! `osa-decoder`: serves `osa.v1.DecoderService` (proto/osa/v1/stages.proto).
//!
//! Latent clips in, video out: the VAE decoder (or the TAESD fast decoder,
//! per request) turns each clip's UNet-space latents into RGB frames on one
//! model thread ([`worker`]) that batches clips of different streams; the
//! stream task ([`service`]) emits them as raw RGB frames, fragmented-MP4
//! segments (H.264 + Opus, init segment with the first) or a finished
//! faststart MP4 streamed back as byte chunks after `end`.

pub mod service;
pub mod settings;
pub mod worker;

use std::path::PathBuf;

use osa_model::device::Placement;
use osa_proto::v1::decoder_service_server::DecoderServiceServer;
use osa_runtime::{Shutdown, serve::ServiceSet};
pub use settings::Settings;
use tokio::net::TcpListener;

use crate::{
    service::Decoder,
    worker::{Worker, WorkerConfig},
};

fn path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Serves the decoder on `listener` until `shutdown` and the drain are over.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let d = settings.decoder.clone();
    let worker = Worker::start(WorkerConfig {
        weights: path(&d.weights),
        seed: d.seed,
        fast_decoder: path(&d.fast_decoder),
        placement: Placement::parse(&d.device).map_err(anyhow::Error::msg)?,
        queue_capacity: d.queue_capacity,
        max_batch: d.max_batch,
        max_batch_wait: d.max_batch_wait,
    })?;
    let warm_up = {
        let worker = worker.clone();
        async move { worker.ready().await.map(|_| ()) }
    };
    let max = settings.grpc.max_message_bytes;
    let svc = DecoderServiceServer::new(Decoder::new(worker, d))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    osa_runtime::serve::serve(
        "osa-decoder",
        &settings.grpc,
        ServiceSet::new().with(svc),
        listener,
        warm_up,
        shutdown,
    )
    .await?;
    Ok(())
}
