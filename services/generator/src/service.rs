//! `osa.v1.GeneratorService`: PrepareReference and the Generate stream.

use std::{
    hash::{Hash as _, Hasher as _},
    pin::Pin,
    sync::Arc,
};

use futures::Stream;
use osa_proto::{
    tensor::{DType, HostTensor},
    v1::{
        self, GenerateRequest, GeneratedClip, PrepareReferenceRequest, PrepareReferenceResponse,
        generate_request, generator_service_server::GeneratorService,
    },
};
use osa_runtime::ServiceError;
use tokio::sync::{OnceCell, mpsc};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    context::{ContextError, ContextStore, LastClip, StreamContext, validate_stream_id},
    settings::GeneratorSettings,
    worker::{ClipRequest, Geometry, Worker, WorkerError},
};

/// Smallest face side accepted, in pixels of the uploaded image: below it
/// the crop is upscaled too far to carry a face.
pub const MIN_FACE_SIDE: f32 = 48.0;

impl From<WorkerError> for ServiceError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Busy(_) => ServiceError::ResourceExhausted {
                what: e.to_string(),
                retry_after: Some(std::time::Duration::from_millis(200)),
            },
            WorkerError::AvatarNotCached(id) => ServiceError::NotFound { kind: "avatar", id },
            WorkerError::Invalid(m) => ServiceError::invalid("request", m),
            WorkerError::Failed(m) => ServiceError::Internal(m),
            WorkerError::Gone => ServiceError::NotServing(e.to_string()),
        }
    }
}

/// The store, once connected (Redis may come up after the service).
pub type SharedStore = Arc<OnceCell<Arc<dyn ContextStore>>>;

#[derive(Clone)]
pub struct Generator {
    worker: Worker,
    store: SharedStore,
    settings: Arc<GeneratorSettings>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").finish_non_exhaustive()
    }
}

impl Generator {
    pub fn new(worker: Worker, store: SharedStore, settings: GeneratorSettings) -> Self {
        Self { worker, store, settings: Arc::new(settings) }
    }

    fn store(&self) -> Result<Arc<dyn ContextStore>, ServiceError> {
        self.store.get().cloned().ok_or_else(|| ServiceError::Unavailable {
            dependency: "redis",
            detail: "not connected yet".into(),
        })
    }

    async fn geometry(&self) -> Result<Geometry, ServiceError> {
        self.worker.ready().await.map_err(ServiceError::NotServing)
    }
}

fn face_of(f: &osa_model::face::Face) -> v1::Face {
    v1::Face {
        r#box: Some(v1::Box { x1: f.bbox[0], y1: f.bbox[1], x2: f.bbox[2], y2: f.bbox[3] }),
        probability: f.probability,
        landmarks: f.landmarks.iter().map(|p| v1::Point { x: p[0], y: p[1] }).collect(),
    }
}

type ClipStream = Pin<Box<dyn Stream<Item = Result<GeneratedClip, Status>> + Send>>;

#[tonic::async_trait]
impl GeneratorService for Generator {
    async fn prepare_reference(
        &self,
        request: Request<PrepareReferenceRequest>,
    ) -> Result<Response<PrepareReferenceResponse>, Status> {
        let req = request.into_inner();
        validate_stream_id(&req.avatar_id).map_err(|e| ServiceError::invalid("avatar_id", e))?;
        let max = self.settings.max_image_bytes;
        if req.image.is_empty() {
            return Err(ServiceError::invalid("image", "is empty").into());
        }
        if req.image.len() > max {
            return Err(ServiceError::invalid(
                "image",
                format!("{} bytes is over the {max}-byte limit", req.image.len()),
            )
            .into());
        }
        let format = image::guess_format(&req.image)
            .map_err(|_| ServiceError::invalid("image", "not a JPEG, PNG or WebP image"))?;
        if !matches!(
            format,
            image::ImageFormat::Jpeg | image::ImageFormat::Png | image::ImageFormat::WebP
        ) {
            return Err(ServiceError::invalid(
                "image",
                format!("{format:?} is not JPEG, PNG or WebP"),
            )
            .into());
        }
        let reader = image::ImageReader::with_format(std::io::Cursor::new(&req.image), format);
        let (w, h) = reader
            .into_dimensions()
            .map_err(|e| ServiceError::invalid("image", format!("unreadable: {e}")))?;
        let side = self.settings.max_image_side;
        if w == 0 || h == 0 || w > side || h > side {
            return Err(ServiceError::invalid(
                "image",
                format!("{w}x{h} pixels is outside 1..={side} on each side"),
            )
            .into());
        }
        let img = image::load_from_memory_with_format(&req.image, format)
            .map_err(|e| ServiceError::invalid("image", format!("unreadable: {e}")))?
            .to_rgb8();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        req.image.hash(&mut hasher);
        let prepared = self
            .worker
            .prepare(req.avatar_id.clone(), hasher.finish(), img)
            .await
            .map_err(ServiceError::from)?;
        if !prepared.faces.is_empty() && !prepared.face_found {
            return Err(ServiceError::invalid(
                "image",
                "no face clear enough to animate (probability below 0.8)",
            )
            .into());
        }
        if let Some(f) = prepared.faces.first() {
            let side = (f.bbox[2] - f.bbox[0]).min(f.bbox[3] - f.bbox[1]);
            if side < MIN_FACE_SIDE {
                return Err(ServiceError::invalid(
                    "image",
                    format!("the face is too small ({side:.0} px; at least {MIN_FACE_SIDE} px)"),
                )
                .into());
            }
        }
        if prepared.faces.is_empty() && self.geometry().await?.face_detector {
            return Err(ServiceError::invalid("image", "no face found").into());
        }
        self.store()?
            .put_avatar(&req.avatar_id, &prepared.bytes)
            .await
            .map_err(ServiceError::from)?;
        if prepared.faces.len() > 1 {
            tracing::info!(avatar = %req.avatar_id, faces = prepared.faces.len(), "several faces; using the largest");
        }
        let [x0, y0, x1, y1] = prepared.crop_box.map(|v| v as f32);
        Ok(Response::new(PrepareReferenceResponse {
            face: prepared.faces.first().map(face_of),
            faces_found: prepared.faces.len() as u32,
            crop: Some(v1::Box { x1: x0, y1: y0, x2: x1, y2: y1 }),
            image_width: w,
            image_height: h,
            cached: prepared.cached,
        }))
    }

    type GenerateStream = ClipStream;

    async fn generate(
        &self,
        request: Request<Streaming<GenerateRequest>>,
    ) -> Result<Response<ClipStream>, Status> {
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(GenerateRequest { request: Some(generate_request::Request::Start(s)) }) => s,
            Some(_) => {
                return Err(
                    ServiceError::invalid("start", "the first message must be start").into()
                );
            }
            None => {
                return Err(ServiceError::invalid("start", "the stream ended before start").into());
            }
        };
        validate_stream_id(&start.stream_id)
            .map_err(|e| ServiceError::invalid("start.stream_id", e))?;
        validate_stream_id(&start.avatar_id)
            .map_err(|e| ServiceError::invalid("start.avatar_id", e))?;
        let sampling = start.sampling.unwrap_or_default();
        let steps = if sampling.steps == 0 { 1 } else { sampling.steps };
        if !matches!(steps, 1 | 2 | 4) {
            return Err(ServiceError::invalid(
                "start.sampling.steps",
                format!("{steps} is not one of 1, 2, 4"),
            )
            .into());
        }
        let geometry = self.geometry().await?;
        let store = self.store()?;
        let id = start.stream_id.clone();
        if start.resume {
            let stored = store.load(&id).await.map_err(ServiceError::from)?;
            if stored.context.avatar_id != start.avatar_id {
                return Err(ServiceError::invalid(
                    "start.avatar_id",
                    format!("stream {id:?} animates avatar {:?}", stored.context.avatar_id),
                )
                .into());
            }
        } else {
            let ctx = StreamContext {
                avatar_id: start.avatar_id.clone(),
                steps,
                seed: sampling.seed,
                next_clip: 0,
                state: Vec::new(),
                last: None,
            };
            store.create(&id, &ctx).await.map_err(ServiceError::from)?;
        }
        let (tx, rx) = mpsc::channel(2);
        let this = self.clone();
        let span = tracing::info_span!("generate.stream", stream = %id);
        // Only the first clip of a resumed stream may be the one already
        // generated (its answer was lost with the replica that made it).
        let mut may_replay = start.resume;
        let slot = self.worker.open_stream();
        tokio::spawn(
            async move {
                let _slot = slot;
                loop {
                    let msg = tokio::select! {
                        m = inbound.message() => m,
                        () = tx.closed() => break,
                    };
                    let clip = match msg {
                        Ok(Some(GenerateRequest {
                            request: Some(generate_request::Request::Clip(c)),
                        })) => c,
                        Ok(Some(_)) => {
                            let e =
                                ServiceError::invalid("clip", "expected clip features after start");
                            let _ = tx.send(Err(e.into())).await;
                            break;
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%status, "client stream ended");
                            break;
                        }
                    };
                    let last = clip.last;
                    // A client that leaves while its clip waits for the
                    // model takes the clip out of the queue: dropping this
                    // future drops the reply the model thread checks.
                    let result = tokio::select! {
                        r = this.one_clip(&store, &id, geometry, clip, may_replay) => r,
                        () = tx.closed() => {
                            tracing::debug!("client left; clip dropped");
                            break;
                        }
                    };
                    may_replay = false;
                    match result {
                        Ok(out) => {
                            if tx.send(Ok(out)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            break;
                        }
                    }
                    if last {
                        if let Err(e) = store.delete(&id).await {
                            tracing::warn!(error = %e, "could not forget the finished stream");
                        }
                        break;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Runs a store operation, recording its round-trip time.
async fn timed<T>(op: &'static str, fut: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = fut.await;
    metrics::histogram!("osa_generator_store_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    out
}

/// The wire message of a clip's answer.
fn answer(g: Geometry, last: LastClip) -> Result<GeneratedClip, ServiceError> {
    let shape = [g.frames, g.latent_channels, g.latent_height, g.latent_width];
    let latents = HostTensor::new(DType::F32, shape.map(|d| d as usize).to_vec(), last.latents)
        .map_err(|e| {
            ServiceError::internal(format!("latents of clip {}: {e}", last.timing.clip_index))
        })?;
    Ok(GeneratedClip {
        timing: Some(last.timing),
        latents: Some(latents.into()),
        unet_seconds: last.unet_seconds,
    })
}

impl Generator {
    /// Generates one clip and commits the stream's context (with the clip's
    /// answer) before answering. With `may_replay` (the first clip of a
    /// resumed stream), the clip committed last is answered again from the
    /// store instead of being refused: the replica that generated it may
    /// have died before its answer left.
    async fn one_clip(
        &self,
        store: &Arc<dyn ContextStore>,
        id: &str,
        g: Geometry,
        clip: v1::ClipFeatures,
        may_replay: bool,
    ) -> Result<GeneratedClip, ServiceError> {
        let timing =
            clip.timing.ok_or_else(|| ServiceError::invalid("clip.timing", "is required"))?;
        let features =
            clip.features.ok_or_else(|| ServiceError::invalid("clip.features", "is required"))?;
        let features = HostTensor::try_from(features)
            .map_err(|e| ServiceError::invalid("clip.features", e))?;
        features
            .expect_shape(&[Some(g.frames as usize), None, Some(g.audio_dim as usize)])
            .map_err(|e| ServiceError::invalid("clip.features", e))?;
        let shape = features.shape();
        let values = features.to_f32_vec().ok_or_else(|| {
            ServiceError::invalid("clip.features", "dtype must be f32, f16 or bf16")
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ServiceError::invalid("clip.features", "holds NaN or infinite values"));
        }
        let stored = timed("load", store.load(id)).await?;
        let ctx = &stored.context;
        if timing.clip_index < ctx.next_clip {
            let replay = ctx.last.as_ref().filter(|last| {
                may_replay
                    && timing.clip_index + 1 == ctx.next_clip
                    && last.timing.clip_index == timing.clip_index
            });
            if let Some(last) = replay {
                metrics::counter!("osa_generator_replays_total").increment(1);
                tracing::info!(
                    clip = timing.clip_index,
                    "resumed stream: answering the stored clip"
                );
                return answer(g, last.clone());
            }
            return Err(ServiceError::Aborted(format!(
                "clip {} of stream {id:?} was already generated (next is {}); another request advanced it",
                timing.clip_index, ctx.next_clip
            )));
        }
        if timing.clip_index > ctx.next_clip {
            return Err(ServiceError::invalid(
                "clip.timing.clip_index",
                format!(
                    "{} skips ahead: the stream expects clip {}",
                    timing.clip_index, ctx.next_clip
                ),
            ));
        }
        let request = |state: Vec<u8>| ClipRequest {
            avatar_id: ctx.avatar_id.clone(),
            state,
            seed: ctx.seed,
            steps: ctx.steps,
            features: values.clone(),
            features_shape: [shape[0] as i64, shape[1] as i64, shape[2] as i64],
            enqueued: std::time::Instant::now(),
        };
        let result = match self.worker.generate(request(ctx.state.clone())).await {
            Err(WorkerError::AvatarNotCached(_)) => {
                // Prepared on another replica: load it from the store.
                let bytes = store.get_avatar(&ctx.avatar_id).await?.ok_or_else(|| {
                    ServiceError::NotFound { kind: "avatar", id: ctx.avatar_id.clone() }
                })?;
                self.worker.install(ctx.avatar_id.clone(), bytes).await?;
                self.worker.generate(request(ctx.state.clone())).await?
            }
            other => other?,
        };
        let mut latents = Vec::with_capacity(result.latents.len() * 4);
        for v in &result.latents {
            latents.extend_from_slice(&v.to_le_bytes());
        }
        let last = LastClip { timing, latents, unet_seconds: result.unet_seconds };
        let next = StreamContext {
            next_clip: ctx.next_clip + 1,
            state: result.next_state,
            last: Some(last.clone()),
            ..ctx.clone()
        };
        metrics::histogram!("osa_generator_context_bytes")
            .record((next.state.len() + last.latents.len()) as f64);
        timed("commit", store.commit(id, stored.version, &next)).await.map_err(|e| match e {
            ContextError::Conflict { .. } => ServiceError::Aborted(e.to_string()),
            other => other.into(),
        })?;
        metrics::counter!("osa_generator_clips_total").increment(1);
        answer(g, last)
    }
}
