//! `osa-generator`: serves `osa.v1.GeneratorService` (proto/osa/v1/stages.proto).
//!
//! - PrepareReference: image -> MTCNN face -> EchoMimic crop and face mask ->
//!   VAE latent, reference-UNet bank, face-locator features; cached per avatar
//!   on the model's device (LRU) and as bytes in the shared store, so another
//!   replica loads it instead of recomputing.
//! - Generate: per-clip audio features in, per-clip latents out; each clip is
//!   one call of the denoising UNet (2 or 4 when asked), rolling from the
//!   previous clip (EFT). The rolling context lives in the [`context`] store
//!   (Redis, or memory for one replica) under a compare-and-set version, so
//!   any replica can serve the next clip of any stream and two can never
//!   both write the same clip. The commit also keeps the clip's answer, so
//!   a resumed stream whose first clip is the one committed last (its answer
//!   lost with a failed replica) gets it again (`osa_generator_replays_total`).
//! - One model thread ([`worker`]) batches clips of different streams.

pub mod context;
pub mod service;
pub mod settings;
pub mod worker;

use std::{path::PathBuf, sync::Arc, time::Duration};

use osa_model::device::Placement;
use osa_proto::v1::generator_service_server::GeneratorServiceServer;
use osa_runtime::{Shutdown, serve::ServiceSet};
pub use settings::Settings;
use tokio::{net::TcpListener, sync::OnceCell};

use crate::{
    context::{ContextStore, MemoryStore, RedisStore, RedisStoreConfig},
    service::{Generator, SharedStore},
    worker::{Worker, WorkerConfig},
};

fn path(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// Serves the generator on `listener` until `shutdown` and the drain are over.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let g = settings.generator.clone();
    let worker = Worker::start(WorkerConfig {
        weights: path(&g.weights),
        seed: g.seed,
        face_detector: path(&g.face_detector),
        placement: Placement::parse(&g.device).map_err(anyhow::Error::msg)?,
        avatar_cache: g.avatar_cache,
        queue_capacity: g.queue_capacity,
        max_batch: g.max_batch,
        max_batch_wait: g.max_batch_wait,
    })?;
    let store: SharedStore = Arc::new(OnceCell::new());
    if g.redis_url.is_empty() {
        let memory: Arc<dyn ContextStore> =
            Arc::new(MemoryStore::new(g.idle_timeout, g.max_streams, g.avatar_cache));
        let _ = store.set(memory);
    }
    let warm_up = {
        let (worker, store, g, shutdown) =
            (worker.clone(), store.clone(), g.clone(), shutdown.clone());
        async move {
            worker.ready().await?;
            if store.get().is_none() {
                connect_redis(&g, &store, &shutdown).await?;
            }
            Ok(())
        }
    };
    let max = settings.grpc.max_message_bytes;
    let svc = GeneratorServiceServer::new(Generator::new(worker, store, g))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    osa_runtime::serve::serve(
        "osa-generator",
        &settings.grpc,
        ServiceSet::new().with(svc),
        listener,
        warm_up,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Connects to Redis, retrying (and staying NOT_SERVING) until it answers.
async fn connect_redis(
    g: &settings::GeneratorSettings,
    store: &SharedStore,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let config = RedisStoreConfig {
        url: g.redis_url.clone(),
        key_prefix: g.key_prefix.clone(),
        idle_timeout: g.idle_timeout,
        response_timeout: g.redis_timeout,
        connection_timeout: g.redis_timeout,
        ..RedisStoreConfig::default()
    };
    let mut delay = Duration::from_millis(100);
    loop {
        match RedisStore::connect(config.clone()).await {
            Ok(redis) => {
                let redis: Arc<dyn ContextStore> = Arc::new(redis);
                let _ = store.set(redis);
                tracing::info!(url = %g.redis_url, "redis connected");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "redis unavailable; staying NOT_SERVING until it answers");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.triggered() => return Err("shut down before redis answered".into()),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
