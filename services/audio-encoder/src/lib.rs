//! `osa-audio-encoder`: serves `osa.v1.AudioEncoderService` (see
//! proto/osa/v1/stages.proto): audio in (whole files of any common format,
//! or live PCM16 mono 16 kHz chunks of any size), per-video-frame whisper
//! features out, grouped into clips.
//!
//! - [`recipe`]: the one streaming-compatible feature recipe both RPCs use
//!   (and how and why it differs from EchoMimic's offline recipe).
//! - [`model`]: the whisper encoder as the recipe runs it (osa-model's
//!   encoder with a window-sized context, same weights).
//! - [`worker`]: the model's own OS thread, a bounded queue, batching of
//!   windows from several streams into one forward pass, cancellation.
//! - [`service`]: the gRPC service (validation, admission, streaming).
//! - [`file`]: whole-file features as safetensors (`osa audio features`).
//! - [`settings`]: the `audio_encoder` section.
//!
//! Metrics: `osa_audio_encoder_clips_total`,
//! `osa_audio_encoder_audio_seconds_total{rpc}`,
//! `osa_audio_encoder_queue_size`, `osa_audio_encoder_queue_seconds`,
//! `osa_audio_encoder_encode_seconds` (one forward pass),
//! `osa_audio_encoder_batch_windows`, `osa_audio_encoder_streams_active`,
//! `osa_audio_encoder_windows_cancelled_total`.

pub mod file;
pub mod model;
pub mod recipe;
pub mod service;
pub mod settings;
pub mod worker;

pub use file::{FeaturesOptions, FileFeatures, Recipe, features_file, write_safetensors};
pub use settings::Settings;

use std::sync::Arc;

use anyhow::Context as _;
use osa_proto::v1::audio_encoder_service_server::AudioEncoderServiceServer;
use osa_runtime::{Shutdown, serve::ServiceSet};
use tokio::net::TcpListener;

use crate::{
    model::{ModelConfig, encoder_config, parse_device, placement, stride_of},
    recipe::{Layout, Segment},
    service::{AudioEncoder, StageConfig},
    worker::{BatchConfig, Stats, Worker},
};

/// Clip length of every preset (EchoMimic's 12 frames).
pub const DEFAULT_FRAMES_PER_CLIP: usize = 12;

/// The stage before it serves: the model thread (loading) and the service.
#[derive(Debug)]
pub struct Stage {
    worker: Worker,
    service: AudioEncoder,
}

impl Stage {
    /// Starts the model thread (the model loads on it) and builds the service.
    pub fn start(settings: &Settings) -> anyhow::Result<Self> {
        let a = &settings.audio_encoder;
        let device = parse_device(&a.device).map_err(anyhow::Error::msg)?;
        let enc = encoder_config(a.weights_dir(), &a.preset)?;
        let plan = a.plan();
        let model = ModelConfig {
            weights: a.weights_dir().map(Into::into),
            preset: a.preset.clone(),
            seed: a.seed,
            placement: placement(device),
            plan,
        };
        let batch = BatchConfig {
            max_batch: a.max_batch,
            max_batch_wait: a.max_batch_wait,
            queue_capacity: a.queue_capacity,
        };
        let worker = Worker::spawn(model, batch).context("start the model thread")?;
        let cfg = StageConfig {
            plan,
            stride: stride_of(&enc),
            width: enc.n_state as usize,
            dtype: a.dtype,
            max_audio_duration: a.max_audio_duration,
            max_streams: a.max_streams,
            max_batch: a.max_batch,
            default_frames_per_clip: DEFAULT_FRAMES_PER_CLIP,
        };
        let service = AudioEncoder::new(worker.clone(), cfg);
        Ok(Self { worker, service })
    }

    /// The model thread's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.worker.stats()
    }

    /// Loads the model and runs one forward pass (a window of silence).
    pub async fn warm_up(
        worker: Worker,
        plan: recipe::WindowPlan,
        stride: usize,
    ) -> Result<(), String> {
        worker.loaded().await?;
        let mut seg = Segment::new(plan, Layout { fps: 25, frames_per_clip: 1 }, stride, 0);
        seg.push(&vec![0.0; (plan.positions() + 1) * recipe::SAMPLES_PER_POSITION]);
        let jobs = seg.ready_windows(1);
        worker.encode(jobs).await.map(|_| ()).map_err(|e| format!("warm-up forward: {e}"))
    }

    /// Serves on `listener` until `shutdown` and the drain are over.
    pub async fn serve(
        self,
        settings: Settings,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let max = settings.grpc.max_message_bytes;
        let a = &settings.audio_encoder;
        let stride = stride_of(&encoder_config(a.weights_dir(), &a.preset)?);
        let warm = Self::warm_up(self.worker.clone(), a.plan(), stride);
        let svc = AudioEncoderServiceServer::new(self.service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        osa_runtime::serve::serve(
            "osa-audio-encoder",
            &settings.grpc,
            ServiceSet::new().with(svc),
            listener,
            warm,
            shutdown,
        )
        .await?;
        Ok(())
    }
}

/// Serves the stage on `listener` until `shutdown` and the drain are over.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    Stage::start(&settings)?.serve(settings, listener, shutdown).await
}
