//! InfoService: what this deployment runs and allows.

use osa_proto::v1::{
    GetServerInfoRequest, Limits, ModelInfo, ServerInfo, info_service_server::InfoService,
};
use tonic::{Request, Response, Status};

use crate::Settings;

/// Answers from settings read once at start.
#[derive(Debug, Clone)]
pub(crate) struct Info {
    info: ServerInfo,
}

impl Info {
    pub(crate) fn new(settings: &Settings) -> Self {
        let g = &settings.gateway;
        let (width, height, frames_per_clip) = settings.model.geometry();
        let info = ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            model: Some(ModelInfo {
                name: "osa-lcm".into(),
                preset: settings.model.preset.clone(),
                random_weights: settings.model.random_weights,
                width,
                height,
                frames_per_clip,
            }),
            limits: Some(Limits {
                max_image_bytes: g.max_image_bytes,
                max_image_side: g.max_image_side,
                max_audio_seconds: g.max_audio_duration.as_secs_f64(),
                max_message_bytes: settings.grpc.max_message_bytes as u64,
                max_live_sessions_per_key: g.max_live_sessions_per_key,
                max_running_jobs_per_key: g.max_running_jobs_per_key,
                requests_per_second_per_key: g.requests_per_second_per_key,
            }),
            supported_fps: vec![24, 25, 30],
            supported_steps: vec![1, 2, 4],
        };
        Self { info }
    }
}

#[tonic::async_trait]
impl InfoService for Info {
    async fn get_server_info(
        &self,
        _request: Request<GetServerInfoRequest>,
    ) -> Result<Response<ServerInfo>, Status> {
        tracing::debug!("server info");
        Ok(Response::new(self.info.clone()))
    }
}
