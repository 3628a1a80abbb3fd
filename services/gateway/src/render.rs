//! `osa.v1.RenderService`: asynchronous render jobs. Submitting validates
//! everything a job needs (avatar, audio, options) and queues it in Redis;
//! the [`crate::runner`] of any gateway runs it.

use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt as _};
use osa_proto::v1::{
    ByteChunk, CancelJobRequest, FetchResultRequest, GetJobRequest, Job, JobState, ListJobsRequest,
    ListJobsResponse, SamplingOptions, SubmitRenderRequest, WatchJobRequest,
    render_service_server::RenderService,
};
use osa_runtime::ServiceError;
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use crate::{
    keys_layout,
    state::{Shared, tenant},
    store::jobs::{JobSpec, Submitted},
};

/// Bytes per FetchResult chunk.
const CHUNK: usize = 1 << 20;

/// The RenderService implementation.
#[derive(Debug, Clone)]
pub struct Render {
    shared: Shared,
}

impl Render {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

/// Frames the audio-encoder makes of `samples` 16 kHz samples at `fps`
/// (rounded to the nearest frame, at least one), and the clips they fill.
/// Mirrors the audio-encoder's recipe (services/audio-encoder/src/recipe.rs,
/// `Segment::real_frames`); the runner takes the encoder's count as final.
pub fn clip_count(samples: u64, fps: u32, frames_per_clip: u32) -> u64 {
    let frames = ((samples * u64::from(fps) * 2 + 16_000) / 32_000).max(1);
    frames.div_ceil(u64::from(frames_per_clip.max(1)))
}

/// The accepted fps (0 means 25).
pub fn check_fps(field: &str, fps: u32) -> Result<u32, ServiceError> {
    match fps {
        0 => Ok(25),
        24 | 25 | 30 => Ok(fps),
        other => Err(ServiceError::invalid(field, format!("{other} is not one of 24, 25, 30"))),
    }
}

/// Steps filled in (0 means 1) and checked; seed 0 replaced by a random one.
pub fn check_sampling(
    field: &str,
    s: Option<SamplingOptions>,
) -> Result<SamplingOptions, ServiceError> {
    let s = s.unwrap_or_default();
    let steps = if s.steps == 0 { 1 } else { s.steps };
    if !matches!(steps, 1 | 2 | 4) {
        return Err(ServiceError::invalid(
            format!("{field}.steps"),
            format!("{steps} is not one of 1, 2, 4"),
        ));
    }
    let seed = if s.seed == 0 { fastrand::u64(1..) } else { s.seed };
    Ok(SamplingOptions { steps, seed })
}

fn check_idempotency_key(key: &str) -> Result<(), ServiceError> {
    if key.len() > 128 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(ServiceError::invalid(
            "idempotency_key",
            "must be at most 128 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

type Chunks = Pin<Box<dyn Stream<Item = Result<ByteChunk, Status>> + Send>>;
type Jobs = Pin<Box<dyn Stream<Item = Result<Job, Status>> + Send>>;

#[tonic::async_trait]
impl RenderService for Render {
    async fn submit_render(
        &self,
        request: Request<SubmitRenderRequest>,
    ) -> Result<Response<Job>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let settings = &self.shared.settings;
        check_idempotency_key(&req.idempotency_key)?;
        // The digest covers the request as sent (a zero seed stays zero), so
        // a retried submission matches its first.
        let body_digest = hex(&Sha256::digest(req.encode_to_vec()));
        let fps = check_fps("fps", req.fps)?;
        let sampling = check_sampling("sampling", req.sampling)?;
        if let Some(e) = &req.encoding
            && e.bitrate_kbps > 50_000
        {
            return Err(ServiceError::invalid("encoding.bitrate_kbps", "is over 50000").into());
        }
        if !req.webhook_url.is_empty() {
            self.shared
                .webhooks
                .validate_url(&req.webhook_url)
                .map_err(|e| ServiceError::invalid("webhook_url", e))?;
        }
        if self
            .shared
            .avatars
            .get(&tenant, &req.avatar_id)
            .await
            .map_err(ServiceError::from)?
            .is_none()
        {
            return Err(ServiceError::NotFound { kind: "avatar", id: req.avatar_id }.into());
        }
        let audio = req.audio.ok_or_else(|| ServiceError::invalid("audio", "is required"))?;
        let bytes = Bytes::from(audio.data);
        let max = settings.gateway.max_audio_duration;
        let decoded = {
            let bytes = bytes.clone();
            let hint = (!audio.format_hint.is_empty()).then_some(audio.format_hint);
            tokio::task::spawn_blocking(move || {
                osa_audio::decode_file(
                    &bytes,
                    hint.as_deref(),
                    &osa_audio::DecodeLimits { max_duration: max },
                )
                .map(|d| (d.samples.len() as u64, d.duration))
            })
            .await
            .map_err(ServiceError::internal)?
        };
        let (samples, duration) =
            decoded.map_err(|e| ServiceError::invalid("audio.data", e.to_string()))?;
        if samples < 320 {
            return Err(ServiceError::invalid("audio.data", "is shorter than 20 ms").into());
        }
        let frames_per_clip = settings.model.geometry().2;
        let job_id = uuid::Uuid::now_v7().to_string();
        let audio_key = keys_layout::audio_key(&job_id);
        let spec = JobSpec {
            tenant: tenant.clone(),
            avatar_id: req.avatar_id,
            audio_key: audio_key.clone(),
            audio_seconds: duration.as_secs_f64(),
            clips_total: clip_count(samples, fps, frames_per_clip),
            fps,
            sampling,
            encoding: req.encoding,
            webhook_url: req.webhook_url,
            idempotency_key: req.idempotency_key,
            body_digest,
        };
        self.shared.blobs.put(&audio_key, bytes).await.map_err(ServiceError::from)?;
        let submitted =
            self.shared.jobs.submit(&job_id, spec, settings.gateway.max_running_jobs_per_key).await;
        let job = match submitted {
            Ok(Submitted::Created(job)) => {
                metrics::counter!("osa_gateway_jobs_submitted_total").increment(1);
                tracing::info!(%tenant, job = %job_id, "job queued");
                job
            }
            Ok(Submitted::Existing(job)) => {
                let _ = self.shared.blobs.delete(&audio_key).await;
                job
            }
            Err(e) => {
                let _ = self.shared.blobs.delete(&audio_key).await;
                return Err(ServiceError::from(e).into());
            }
        };
        Ok(Response::new(job))
    }

    async fn get_job(&self, request: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().job_id;
        let found = self.shared.jobs.get(&tenant, &id).await.map_err(ServiceError::from)?;
        let (job, _) = found.ok_or(ServiceError::NotFound { kind: "job", id })?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let states: Vec<JobState> = req
            .states
            .iter()
            .map(|&s| {
                JobState::try_from(s).ok().filter(|s| *s != JobState::Unspecified).ok_or_else(
                    || ServiceError::invalid("states", format!("{s} is not a job state")),
                )
            })
            .collect::<Result<_, _>>()?;
        let (jobs, next_page_token) = self
            .shared
            .jobs
            .list(&tenant, req.page_size, &req.page_token, &states)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(ListJobsResponse { jobs, next_page_token }))
    }

    async fn cancel_job(
        &self,
        request: Request<CancelJobRequest>,
    ) -> Result<Response<Job>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().job_id;
        let before = self.shared.jobs.get(&tenant, &id).await.map_err(ServiceError::from)?;
        let Some((before, spec)) = before else {
            return Err(ServiceError::NotFound { kind: "job", id }.into());
        };
        let job = self.shared.jobs.cancel(&tenant, &id).await.map_err(ServiceError::from)?;
        let job = job.ok_or(ServiceError::NotFound { kind: "job", id })?;
        if before.state() != JobState::Cancelled && job.state() == JobState::Cancelled {
            tracing::info!(%tenant, job = %job.job_id, "job cancelled");
            metrics::counter!("osa_gateway_jobs_finished_total", "state" => "cancelled")
                .increment(1);
            if !spec.webhook_url.is_empty() {
                self.shared.webhooks.deliver(&tenant, &spec.webhook_url, &job);
            }
        }
        Ok(Response::new(job))
    }

    type WatchJobStream = Jobs;

    async fn watch_job(&self, request: Request<WatchJobRequest>) -> Result<Response<Jobs>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().job_id;
        if self.shared.jobs.get(&tenant, &id).await.map_err(ServiceError::from)?.is_none() {
            return Err(ServiceError::NotFound { kind: "job", id }.into());
        }
        let stream = self
            .shared
            .jobs
            .watch(&tenant, &id)
            .map(|r| r.map_err(|e| Status::from(ServiceError::from(e))));
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchResultStream = Chunks;

    async fn fetch_result(
        &self,
        request: Request<FetchResultRequest>,
    ) -> Result<Response<Chunks>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let id = req.job_id;
        let found = self.shared.jobs.get(&tenant, &id).await.map_err(ServiceError::from)?;
        let (job, _) =
            found.ok_or_else(|| ServiceError::NotFound { kind: "job", id: id.clone() })?;
        if job.state() != JobState::Succeeded {
            return Err(ServiceError::FailedPrecondition(format!(
                "job {id:?} is {}, not succeeded",
                job.state().as_str_name().trim_start_matches("JOB_STATE_").to_lowercase()
            ))
            .into());
        }
        let key = keys_layout::result_key(&id);
        let total =
            self.shared.blobs.size(&key).await.map_err(ServiceError::from)?.ok_or_else(|| {
                ServiceError::Internal(format!("the result of job {id:?} is missing"))
            })?;
        if req.offset > total {
            return Err(ServiceError::invalid(
                "offset",
                format!("{} is past the end of the {total}-byte result", req.offset),
            )
            .into());
        }
        let mut offset = req.offset;
        let stream = self.shared.blobs.read_from(&key, offset, CHUNK).map(move |piece| {
            let data = piece.map_err(|e| Status::from(ServiceError::from(e)))?;
            let chunk = ByteChunk {
                offset,
                total_size: total,
                last: offset + data.len() as u64 >= total,
                data: data.to_vec(),
            };
            offset += chunk.data.len() as u64;
            Ok(chunk)
        });
        // An empty tail (offset == total) still says where the end is.
        let stream: Chunks = if req.offset == total {
            Box::pin(futures::stream::once(async move {
                Ok(ByteChunk { offset: total, data: Vec::new(), total_size: total, last: true })
            }))
        } else {
            Box::pin(stream)
        };
        Ok(Response::new(stream))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_count_follows_the_encoders_rounding() {
        // 1 s at 25 fps: 25 frames -> 3 clips of 12.
        assert_eq!(clip_count(16_000, 25, 12), 3);
        // 0.96 s: exactly 24 frames, 2 clips.
        assert_eq!(clip_count(15_360, 25, 12), 2);
        // 20 ms rounds to 1 frame (0.5 rounds up).
        assert_eq!(clip_count(320, 25, 12), 1);
        assert_eq!(clip_count(10 * 16_000, 30, 12), 25);
    }

    #[test]
    fn options_are_filled_in_and_checked() {
        assert_eq!(check_fps("fps", 0).unwrap(), 25);
        assert!(check_fps("fps", 60).unwrap_err().to_string().contains("60"));
        let s = check_sampling("sampling", None).unwrap();
        assert_eq!(s.steps, 1);
        assert_ne!(s.seed, 0);
        let s = check_sampling("sampling", Some(SamplingOptions { steps: 4, seed: 9 })).unwrap();
        assert_eq!((s.steps, s.seed), (4, 9));
        assert!(check_sampling("sampling", Some(SamplingOptions { steps: 3, seed: 0 })).is_err());
        assert!(check_idempotency_key("abc-123").is_ok());
        assert!(check_idempotency_key("has space").is_err());
        assert!(check_idempotency_key(&"x".repeat(129)).is_err());
    }
}
