//! The job runner: claims render jobs from the Redis queue and drives each
//! through the stages, clip by clip.
//!
//! Every finished clip's latents are saved (object store) and the job's
//! progress advanced before the next clip, so a job resumes from its last
//! finished clip:
//! - a stage replica that dies mid-job fails the attempt; the next attempt
//!   re-opens the streams on live replicas, resumes the generator stream
//!   from its rolling context in Redis (the generator replays the clip in
//!   flight if it committed it before dying) and replays the saved latents
//!   to a fresh decoder;
//! - a gateway that dies mid-job stops heart-beating its claim; another
//!   gateway reclaims it after `jobs.reclaim_after` and does the same.
//!
//! The MP4 is finished by the decoder (faststart needs the whole file), so a
//! resumed job decodes its saved clips again: generation, the costly part,
//! is never repeated.

use std::{path::PathBuf, sync::Arc, time::Instant};

use bytes::Bytes;
use osa_proto::v1::{
    DecodeEnd, DecodeRequest, DecodeStart, EncodeFileRequest, FeatureOptions, GenerateRequest,
    GenerateStart, GeneratedClip, JobState, PrepareReferenceRequest, Progress, SamplingOptions,
    VideoOutput, decode_request, decode_response, generate_request,
};
use osa_runtime::ServiceError;
use prost::Message as _;
use tokio::{io::AsyncWriteExt as _, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tracing::Instrument as _;

use crate::{
    keys_layout,
    stages::{self, Stages},
    state::Shared,
    store::jobs::{Claim, Jobs, Lease, Outcome},
};

/// Why an attempt stopped.
#[derive(Debug)]
enum Failure {
    /// A stage or Redis failed in a way a new attempt may fix.
    Retry(Status),
    /// The job cannot succeed (bad input, model failure).
    Final(Status),
    /// The job was cancelled, its claim lost, or the gateway is stopping.
    Stopped,
}

impl From<ServiceError> for Failure {
    fn from(e: ServiceError) -> Self {
        classify(Status::from(e))
    }
}

fn classify(status: Status) -> Failure {
    if stages::retryable(&status) { Failure::Retry(status) } else { Failure::Final(status) }
}

/// Where a job's generation stands across attempts.
#[derive(Debug)]
struct RunState {
    /// Clips finished (latents saved, progress recorded).
    done: u64,
    /// Restarts of generation from clip 0 (a lost rolling context); each
    /// uses a fresh generator stream id (see [`RunState::stream_id`]).
    restarts: u32,
    /// Whether the generator may hold a context for `stream_id`.
    context_may_exist: bool,
    /// Clips the audio yields (the encoder's count wins over the estimate).
    clips_total: u64,
    /// Seconds of video in all.
    media_total: f64,
}

impl RunState {
    /// The generator stream of the current generation: the job id, then
    /// `<job>.r<n>` after the n-th restart from clip 0.
    fn stream_id(&self, job_id: &str) -> String {
        if self.restarts == 0 { job_id.to_owned() } else { format!("{job_id}.r{}", self.restarts) }
    }
}

/// Claims jobs and runs them; one per gateway process.
pub struct Runner {
    shared: Shared,
    /// Queue operations on a connection of their own: the blocking read must
    /// not hold up the API's Redis calls.
    queue: Jobs,
    consumer: String,
}

impl Runner {
    pub fn new(shared: Shared, queue: Jobs) -> Self {
        let consumer = format!("gateway-{}", uuid::Uuid::now_v7());
        Self { shared, queue, consumer }
    }

    /// Claims and runs jobs until `shutdown`. Jobs running then are left
    /// claimed but unfinished: another gateway (or this one, restarted)
    /// reclaims and resumes them.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let settings = &self.shared.settings.jobs;
        loop {
            match self.queue.ensure_group().await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "job queue unavailable; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => return,
                    }
                }
            }
        }
        tracing::info!(consumer = %self.consumer, workers = settings.workers, "job runner started");
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.workers));
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                () = shutdown.cancelled() => break,
            };
            let claimed = tokio::select! {
                c = self.queue.claim(&self.consumer, settings.poll_interval, settings.reclaim_after) => c,
                () = shutdown.cancelled() => break,
            };
            match claimed {
                Ok(Some(claim)) => {
                    let this = self.clone();
                    let stop = shutdown.child_token();
                    let span = job_span(&claim);
                    tokio::spawn(
                        async move {
                            this.work(claim, stop).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claiming jobs failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
            }
        }
        // Wait for the running jobs to let go (they stop at once).
        let _ = slots.acquire_many(settings.workers as u32).await;
        tracing::info!("job runner stopped");
    }

    async fn work(&self, claim: Claim, stop: CancellationToken) {
        let shared = &self.shared;
        let cancel = stop.child_token();
        let heartbeat = {
            let queue = self.queue.clone();
            let claim_id = (claim.job_id.clone(), claim.entry_id.clone());
            let consumer = self.consumer.clone();
            let cancel = cancel.clone();
            let every = shared.settings.jobs.reclaim_after / 4;
            let claim = claim.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(every) => {}
                        () = cancel.cancelled() => return,
                    }
                    match queue.heartbeat(&claim, &consumer).await {
                        Ok(Lease::Held) => {}
                        Ok(Lease::Lost) => {
                            tracing::warn!(job = %claim_id.0, "claim lost to another gateway; stopping");
                            cancel.cancel();
                            return;
                        }
                        Ok(Lease::Cancelled) => {
                            tracing::info!(job = %claim_id.0, "job cancelled; stopping");
                            cancel.cancel();
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
            })
        };
        if claim.reclaimed {
            metrics::counter!("osa_gateway_jobs_reclaimed_total").increment(1);
            tracing::info!(
                done = claim.job.progress.as_ref().map_or(0, |p| p.clips_done),
                "resuming a reclaimed job"
            );
        }
        if let Err(e) = shared.jobs.start(&claim).await {
            tracing::warn!(error = %e, "could not mark the job running");
        }
        let started = Instant::now();
        let result = self.execute(&claim, &cancel).await;
        cancel.cancel();
        let _ = heartbeat.await;
        let outcome = match result {
            Ok(bytes) => Outcome::Succeeded { result_bytes: bytes },
            Err(Failure::Final(s) | Failure::Retry(s)) => {
                tracing::warn!(code = ?s.code(), message = s.message(), "job failed");
                Outcome::Failed { code: s.code(), reason: s.message().to_owned() }
            }
            Err(Failure::Stopped) => {
                if stop.is_cancelled() {
                    // Gateway stopping: leave the claim for another gateway.
                    return;
                }
                match shared.jobs.get(&claim.spec.tenant, &claim.job_id).await {
                    Ok(Some((job, _))) if job.state() == JobState::Cancelled => {
                        Outcome::Failed { code: Code::Cancelled, reason: "cancelled".into() }
                    }
                    // Lost the claim: the new owner finishes it.
                    _ => return,
                }
            }
        };
        let succeeded = matches!(outcome, Outcome::Succeeded { .. });
        match shared.jobs.finish(&claim, outcome).await {
            Ok(job) if !crate::store::jobs::is_terminal(job.state()) => {
                // Another gateway took the job over meanwhile: it finishes it
                // and needs its working files.
                tracing::warn!(state = ?job.state(), "claim lost before the job's end was recorded");
            }
            Ok(job) => {
                let state =
                    job.state().as_str_name().trim_start_matches("JOB_STATE_").to_lowercase();
                metrics::counter!("osa_gateway_jobs_finished_total", "state" => state).increment(1);
                if succeeded {
                    let media = job.progress.as_ref().map_or(0.0, |p| p.media_seconds_total);
                    if media > 0.0 {
                        metrics::histogram!("osa_gateway_job_real_time_factor")
                            .record(started.elapsed().as_secs_f64() / media);
                    }
                }
                tracing::info!(state = ?job.state(), seconds = started.elapsed().as_secs_f64(), "job finished");
                if !claim.spec.webhook_url.is_empty() {
                    shared.webhooks.deliver(&claim.spec.tenant, &claim.spec.webhook_url, &job);
                }
                let cleaned = if shared.settings.jobs.keep_clips {
                    shared.blobs.delete(&claim.spec.audio_key).await.map(|()| 1)
                } else {
                    shared.blobs.delete_prefix(&keys_layout::job_prefix(&claim.job_id)).await
                };
                if let Err(e) = cleaned {
                    tracing::warn!(error = %e, "could not delete the job's working files");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not record the job's end; it will be reclaimed")
            }
        }
    }

    /// Runs the job to a finished MP4 in the object store; returns its size.
    async fn execute(&self, claim: &Claim, cancel: &CancellationToken) -> Result<u64, Failure> {
        let shared = &self.shared;
        let spec = &claim.spec;
        let audio = shared
            .blobs
            .get(&spec.audio_key)
            .await
            .map_err(|e| Failure::Retry(ServiceError::from(e).into()))?
            .ok_or_else(|| {
                Failure::Final(Status::internal(format!(
                    "the job's uploaded audio ({}) is gone",
                    spec.audio_key
                )))
            })?;
        let pcm = {
            let audio = audio.clone();
            let limits = osa_audio::DecodeLimits {
                max_duration: shared.settings.gateway.max_audio_duration,
            };
            tokio::task::spawn_blocking(move || {
                osa_audio::decode_file(&audio, None, &limits).map(|d| pcm16le(&d.samples))
            })
            .await
            .map_err(|e| Failure::Final(Status::internal(e.to_string())))?
            .map_err(|e| Failure::Final(Status::invalid_argument(format!("invalid audio: {e}"))))?
        };
        let done = claim.job.progress.as_ref().map_or(0, |p| p.clips_done);
        let mut st = RunState {
            done,
            restarts: 0,
            context_may_exist: claim.reclaimed || done > 0,
            clips_total: spec.clips_total,
            media_total: spec.audio_seconds,
        };
        let max_attempts = shared.settings.jobs.max_attempts;
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                r = self.attempt(claim, &audio, &pcm, &mut st) => r,
                () = cancel.cancelled() => Err(Failure::Stopped),
            };
            match outcome {
                Ok(size) => return Ok(size),
                Err(Failure::Retry(status)) => {
                    failures += 1;
                    metrics::counter!("osa_gateway_job_retries_total").increment(1);
                    if failures >= max_attempts {
                        return Err(Failure::Retry(status));
                    }
                    let wait = stages::backoff(failures, &status);
                    tracing::warn!(code = ?status.code(), message = status.message(), attempt = failures, done = st.done, "stage failed; retrying the job from its last finished clip");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = cancel.cancelled() => return Err(Failure::Stopped),
                    }
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// One pass over the stages from clip `st.done`.
    async fn attempt(
        &self,
        claim: &Claim,
        audio: &Bytes,
        pcm: &Bytes,
        st: &mut RunState,
    ) -> Result<u64, Failure> {
        let shared = &self.shared;
        let spec = &claim.spec;
        let stages: &Stages = &shared.stages;

        // The decoder: MP4 with the audio track, fed the saved clips first.
        let (dec_tx, dec_rx) = mpsc::channel::<DecodeRequest>(4);
        let start = DecodeStart {
            stream_id: claim.job_id.clone(),
            fps: spec.fps,
            output: VideoOutput::Mp4File as i32,
            clips_per_segment: 0,
            encoding: spec.encoding,
            fast_decoder: false,
            with_audio: true,
        };
        let _ = dec_tx.send(decode(decode_request::Request::Start(start))).await;
        let mut dec_out = stages
            .decoder
            .clone()
            .decode(ReceiverStream::new(dec_rx))
            .await
            .map_err(classify)?
            .into_inner();
        let feed = |r| async { dec_tx.send(decode(r)).await.is_ok() };
        for piece in pcm.chunks(AUDIO_PIECE) {
            if !feed(decode_request::Request::AudioPcm16le(piece.to_vec())).await {
                return Err(decoder_failure(&mut dec_out).await);
            }
        }
        for k in 0..st.done {
            let key = keys_layout::clip_key(&claim.job_id, k);
            let bytes = shared
                .blobs
                .get(&key)
                .await
                .map_err(|e| Failure::Retry(ServiceError::from(e).into()))?;
            let Some(clip) = bytes.and_then(|b| GeneratedClip::decode(b).ok()) else {
                // A saved clip is gone: generate everything again.
                tracing::warn!(clip = k, "saved clip missing; restarting generation from clip 0");
                self.restart_generation(st);
                return Err(Failure::Retry(Status::unavailable("saved clip missing")));
            };
            if !feed(decode_request::Request::Clip(clip)).await {
                return Err(decoder_failure(&mut dec_out).await);
            }
        }

        if st.done < st.clips_total {
            self.generate(claim, audio, st, &dec_tx, &mut dec_out).await?;
        }
        if !feed(decode_request::Request::End(DecodeEnd {})).await {
            return Err(decoder_failure(&mut dec_out).await);
        }
        drop(dec_tx);

        // Collect the file, then store it.
        let path = self.work_path(&claim.job_id);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| Failure::Final(Status::internal(format!("{}: {e}", path.display()))))?;
        let mut written = 0u64;
        let mut complete = false;
        while let Some(msg) = dec_out.message().await.map_err(classify)? {
            if let Some(decode_response::Output::File(chunk)) = msg.output {
                if chunk.offset != written {
                    return Err(Failure::Retry(Status::internal(format!(
                        "transport error: decoder sent offset {} after {written} bytes",
                        chunk.offset
                    ))));
                }
                file.write_all(&chunk.data).await.map_err(|e| {
                    Failure::Final(Status::internal(format!("{}: {e}", path.display())))
                })?;
                written += chunk.data.len() as u64;
                complete |= chunk.last;
            }
        }
        file.flush().await.map_err(|e| Failure::Final(Status::internal(e.to_string())))?;
        drop(file);
        if !complete {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Failure::Retry(Status::unavailable(
                "decoder ended before the file was complete",
            )));
        }
        let stored = shared
            .blobs
            .put_file(&keys_layout::result_key(&claim.job_id), &path)
            .await
            .map_err(|e| Failure::Retry(ServiceError::from(e).into()));
        let _ = tokio::fs::remove_file(&path).await;
        stored
    }

    /// Clips `st.done..` through the audio-encoder and the generator; each
    /// finished clip is saved, recorded, and sent on to the decoder.
    async fn generate(
        &self,
        claim: &Claim,
        audio: &Bytes,
        st: &mut RunState,
        dec_tx: &mpsc::Sender<DecodeRequest>,
        dec_out: &mut tonic::Streaming<osa_proto::v1::DecodeResponse>,
    ) -> Result<(), Failure> {
        let shared = &self.shared;
        let spec = &claim.spec;
        let mut features = shared
            .stages
            .audio
            .clone()
            .encode_file(EncodeFileRequest {
                audio: audio.to_vec(),
                format_hint: String::new(),
                options: Some(FeatureOptions {
                    fps: spec.fps,
                    frames_per_clip: 0,
                    normalize_loudness: false,
                }),
            })
            .await
            .map_err(classify)?
            .into_inner();

        let (gen_tx, gen_rx) = mpsc::channel::<GenerateRequest>(2);
        let start = GenerateStart {
            stream_id: st.stream_id(&claim.job_id),
            avatar_id: keys_layout::generator_avatar_id(&spec.tenant, &spec.avatar_id),
            sampling: Some(SamplingOptions {
                steps: spec.sampling.steps,
                seed: spec.sampling.seed,
            }),
            resume: st.context_may_exist,
        };
        let _ = gen_tx.send(generate(generate_request::Request::Start(start))).await;
        let opened = shared.stages.generator.clone().generate(ReceiverStream::new(gen_rx)).await;
        let mut gen_out = match opened {
            Ok(r) => r.into_inner(),
            Err(s) if stages::stream_missing(&s) && st.done == 0 => {
                st.context_may_exist = false;
                return Err(Failure::Retry(Status::aborted("no stored context; starting fresh")));
            }
            Err(s) if stages::stream_missing(&s) => {
                // Finished or expired while this job was away: generate again
                // from clip 0 (the same seed gives the same clips).
                tracing::warn!(
                    done = st.done,
                    "rolling context lost; generating from clip 0 again"
                );
                self.restart_generation(st);
                return Err(Failure::Retry(Status::aborted("rolling context lost")));
            }
            Err(s) if s.code() == Code::AlreadyExists => {
                st.context_may_exist = true;
                return Err(Failure::Retry(Status::aborted("context exists; resuming it")));
            }
            Err(s) => return Err(classify(s)),
        };
        st.context_may_exist = true;

        while let Some(clip) = features.message().await.map_err(classify)? {
            let Some(timing) = clip.timing else {
                return Err(Failure::Final(Status::internal(
                    "audio-encoder sent a clip without timing",
                )));
            };
            let index = timing.clip_index;
            if clip.last {
                st.clips_total = index + 1;
            }
            if index < st.done {
                continue;
            }
            if gen_tx.send(generate(generate_request::Request::Clip(clip))).await.is_err() {
                return Err(classify(stages::ending_status(&mut gen_out, "generator").await));
            }
            let generated = match gen_out.message().await {
                Ok(Some(g)) => g,
                Ok(None) => {
                    return Err(Failure::Retry(Status::unavailable(format!(
                        "generator stream ended before clip {index}"
                    ))));
                }
                Err(s) if stages::avatar_missing(&s) => {
                    self.prepare_again(claim).await?;
                    return Err(Failure::Retry(Status::aborted("avatar prepared again")));
                }
                Err(s) => return Err(classify(s)),
            };
            let got = generated.timing.as_ref().map_or(u64::MAX, |t| t.clip_index);
            if got != index {
                return Err(Failure::Final(Status::internal(format!(
                    "generator answered clip {got} for clip {index}"
                ))));
            }
            shared
                .blobs
                .put(
                    &keys_layout::clip_key(&claim.job_id, index),
                    Bytes::from(generated.encode_to_vec()),
                )
                .await
                .map_err(|e| Failure::Retry(ServiceError::from(e).into()))?;
            st.done = index + 1;
            let progress = Progress {
                clips_done: st.done,
                clips_total: st.clips_total.max(st.done),
                media_seconds_done: (timing.start_seconds + timing.duration_seconds)
                    .min(st.media_total),
                media_seconds_total: st.media_total,
            };
            if let Err(e) = shared.jobs.progress(&claim.job_id, progress).await {
                return Err(Failure::Retry(ServiceError::from(e).into()));
            }
            metrics::counter!("osa_gateway_clips_total", "kind" => "job").increment(1);
            if dec_tx.send(decode(decode_request::Request::Clip(generated))).await.is_err() {
                return Err(decoder_failure(dec_out).await);
            }
        }
        if st.done < st.clips_total {
            return Err(Failure::Retry(Status::unavailable(format!(
                "audio-encoder ended after clip {} of {}",
                st.done, st.clips_total
            ))));
        }
        Ok(())
    }

    fn restart_generation(&self, st: &mut RunState) {
        st.restarts += 1;
        st.done = 0;
        st.context_may_exist = false;
    }

    /// Prepares the job's avatar on the generator again from the stored
    /// image (its prepared form was evicted).
    async fn prepare_again(&self, claim: &Claim) -> Result<(), Failure> {
        let shared = &self.shared;
        let spec = &claim.spec;
        let key = keys_layout::avatar_image_key(&spec.tenant, &spec.avatar_id);
        let image = shared
            .blobs
            .get(&key)
            .await
            .map_err(|e| Failure::Retry(ServiceError::from(e).into()))?
            .ok_or_else(|| {
                Failure::Final(Status::not_found(format!(
                    "avatar {:?} was deleted before the job could use it",
                    spec.avatar_id
                )))
            })?;
        shared
            .stages
            .generator
            .clone()
            .prepare_reference(PrepareReferenceRequest {
                avatar_id: keys_layout::generator_avatar_id(&spec.tenant, &spec.avatar_id),
                image: image.to_vec(),
            })
            .await
            .map_err(classify)?;
        Ok(())
    }

    fn work_path(&self, job_id: &str) -> PathBuf {
        self.shared.settings.jobs.work_dir.join(format!("{job_id}.mp4.partial"))
    }
}

/// Decoder audio is sent in pieces of this many bytes (2 s of PCM16).
const AUDIO_PIECE: usize = 64_000;

fn decode(r: decode_request::Request) -> DecodeRequest {
    DecodeRequest { request: Some(r) }
}

fn generate(r: generate_request::Request) -> GenerateRequest {
    GenerateRequest { request: Some(r) }
}

async fn decoder_failure(out: &mut tonic::Streaming<osa_proto::v1::DecodeResponse>) -> Failure {
    classify(stages::ending_status(out, "decoder").await)
}

/// 16 kHz f32 samples as PCM16 little-endian bytes.
pub fn pcm16le(samples: &[f32]) -> Bytes {
    let mut out = Vec::with_capacity(samples.len() * 2);
    for s in samples {
        let v = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

/// The span of one run of a job. Its trace id is the job id (a UUID is 16
/// bytes, as a W3C trace id), so every attempt, on every gateway that
/// resumes the job, joins one trace per job.
fn job_span(claim: &Claim) -> tracing::Span {
    let span = tracing::info_span!("job", job = %claim.job_id, tenant = %claim.spec.tenant, reclaimed = claim.reclaimed);
    if let Ok(id) = uuid::Uuid::parse_str(&claim.job_id) {
        let parent = format!("00-{}-{:016x}-01", id.simple(), fastrand::u64(1..));
        let mut headers = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&parent) {
            headers.insert("traceparent", v);
            osa_runtime::telemetry::set_remote_parent(&span, &headers);
        }
    }
    span
}
