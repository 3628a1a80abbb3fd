//! The gateway: osa's public API (package `osa.v1`: AvatarService,
//! RenderService, LiveService, InfoService).
//!
//! It holds no model (it links no libtorch): it authenticates and limits
//! callers, keeps avatars, jobs and session slots in Redis and files in the
//! object store, and drives each render job ([`runner`]) and live session
//! ([`live`]) through the stages (audio-encoder -> generator -> decoder)
//! clip by clip over balanced gRPC streams ([`stages`]).

pub mod auth;
mod avatars;
pub mod blobs;
mod info;
pub mod keys;
pub mod keys_layout;
mod live;
pub mod quota;
mod render;
pub mod runner;
pub mod settings;
pub mod stages;
pub mod state;
pub mod store;
pub mod webhook;

pub use settings::Settings;

use std::sync::Arc;

use osa_proto::v1::{
    avatar_service_server::AvatarServiceServer, info_service_server::InfoServiceServer,
    live_service_server::LiveServiceServer, render_service_server::RenderServiceServer,
};
use osa_runtime::{Shutdown, client::ClientOptions, serve::ServiceSet};
use redis::aio::ConnectionManager;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Authenticated,
    keys::ApiKeys,
    quota::{RateLimited, RateLimiter},
    stages::{StageAddresses, Stages},
    state::Shared,
    store::{avatars::Avatars, jobs::Jobs, sessions::SessionSlots},
    webhook::{WebhookSecrets, Webhooks},
};

/// The InfoService implementation for `settings` (to serve it, or wrap it).
pub fn info_service(settings: &Settings) -> impl osa_proto::v1::info_service_server::InfoService {
    info::Info::new(settings)
}

/// A Redis connection that connects on first use and reconnects after
/// failures: the gateway starts (NOT_SERVING) while Redis is down.
pub fn redis_connection(s: &settings::RedisSettings) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(s.url.as_str())
        .map_err(|e| anyhow::anyhow!("redis.url {:?}: {e}", s.url))?;
    Ok(ConnectionManager::new_lazy_with_config(client, store::manager_config(s.timeout))?)
}

/// Serves the gateway on `listener` until `shutdown` and the drain are over.
/// The job runner stops with the server; jobs it was running are resumed by
/// another gateway (or this one, restarted) after `jobs.reclaim_after`.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let settings = Arc::new(settings);
    let max = settings.grpc.max_message_bytes;
    std::fs::create_dir_all(&settings.jobs.work_dir)
        .map_err(|e| anyhow::anyhow!("jobs.work_dir {}: {e}", settings.jobs.work_dir.display()))?;
    let conn = redis_connection(&settings.redis)?;
    let prefix = settings.redis.prefix.as_str();
    let keys = ApiKeys::new(conn.clone(), prefix);
    let stages = Stages::new(
        &StageAddresses {
            audio_encoder: settings.stages.audio_encoder.clone(),
            generator: settings.stages.generator.clone(),
            decoder: settings.stages.decoder.clone(),
        },
        &ClientOptions {
            connect_timeout: settings.stages.connect_timeout,
            tls: settings.stages.tls.clone(),
            ..ClientOptions::default()
        },
        max,
    )?;
    let blobs = blobs::Blobs::from_settings(&settings.storage)?;
    let webhooks =
        Webhooks::new(settings.webhooks.clone(), WebhookSecrets::new(conn.clone(), prefix))?;
    // A client of their own for watches (pub/sub) and blocking queue reads.
    let jobs = Jobs::new(conn.clone(), prefix)
        .with_retention(settings.jobs.retention)
        .with_client(store::client(&settings.redis.url)?, settings.redis.timeout);
    let shared = Shared {
        settings: settings.clone(),
        stages,
        avatars: Avatars::new(conn.clone(), prefix),
        jobs,
        sessions: SessionSlots::new(conn.clone(), prefix),
        blobs,
        webhooks,
    };
    // The queue's blocking reads get a connection of their own.
    let queue = Jobs::new(redis_connection(&settings.redis)?, prefix)
        .with_retention(settings.jobs.retention)
        .with_client(store::client(&settings.redis.url)?, settings.redis.timeout);

    let limiter = RateLimiter::new(settings.gateway.requests_per_second_per_key);
    let info = InfoServiceServer::new(info::Info::new(&settings))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let services = ServiceSet::new()
        .with(info)
        .with(guard_service(
            AvatarServiceServer::new(avatars::Avatars::new(shared.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            &limiter,
            &keys,
        ))
        .with(guard_service(
            RenderServiceServer::new(render::Render::new(shared.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            &limiter,
            &keys,
        ))
        .with(guard_service(
            LiveServiceServer::new(live::Live::new(shared.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            &limiter,
            &keys,
        ));

    let stop_runner = CancellationToken::new();
    tokio::spawn(report_gauges(shared.clone(), stop_runner.clone()));
    let runner = Arc::new(runner::Runner::new(shared.clone(), queue));
    let runner_task = tokio::spawn(runner.run(stop_runner.clone()));
    let warm_up = {
        let conn = conn.clone();
        async move {
            // Serving needs Redis: wait for it (health stays NOT_SERVING).
            let mut conn = conn;
            loop {
                match redis::cmd("PING").query_async::<String>(&mut conn).await {
                    Ok(_) => return Ok(()),
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for redis");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    };
    let served = osa_runtime::serve::serve(
        "osa-gateway",
        &settings.grpc,
        services,
        listener,
        warm_up,
        shutdown,
    )
    .await;
    stop_runner.cancel();
    let _ = runner_task.await;
    served?;
    Ok(())
}

/// A public service behind the per-key rate limit and the API-key check.
/// The rate limit comes first: a flood under one key (even an unknown one)
/// is refused before it costs a Redis lookup.
fn guard_service<S>(
    svc: S,
    limiter: &RateLimiter,
    keys: &ApiKeys,
) -> RateLimited<Authenticated<S>> {
    RateLimited::with_limiter(Authenticated::new(svc, keys.clone()), limiter.clone())
}

/// Sets the gauges that are read rather than counted: the job queue's depth
/// (waiting and claimed entries, cluster-wide) and streams in flight per
/// stage replica.
async fn report_gauges(shared: Shared, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            () = stop.cancelled() => return,
        }
        if let Ok(depth) = shared.jobs.queue_depth().await {
            metrics::gauge!("osa_gateway_job_queue_depth").set(depth as f64);
        }
        let mut per_stage: std::collections::BTreeMap<&str, usize> = Default::default();
        for (stage, _, n) in shared.stages.in_flight() {
            *per_stage.entry(stage).or_default() += n;
        }
        for (stage, n) in per_stage {
            metrics::gauge!("osa_gateway_stage_streams", "stage" => stage).set(n as f64);
        }
    }
}
