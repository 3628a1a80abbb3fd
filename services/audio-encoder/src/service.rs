//! `osa.v1.AudioEncoderService`: EncodeFile (a whole file in, clips out) and
//! EncodeStream (PCM16 chunks in, clips out as soon as they are ready). Both
//! drive the same [`Segment`] recipe; the model runs on the [`Worker`]
//! thread.

use std::{sync::Arc, time::Duration};

use osa_audio::{AudioError, DecodeLimits, PcmAssembler, PcmAssemblerConfig};
use osa_proto::{
    tensor::HostTensor,
    v1::{
        ClipFeatures, ClipTiming, EncodeFileRequest, EncodeStreamRequest, FeatureOptions,
        audio_encoder_service_server::AudioEncoderService, encode_stream_request::Request as In,
    },
};
use osa_runtime::{ServiceError, model_queue::StreamSlot};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    recipe::{Clip, Layout, RecipeError, SAMPLE_RATE, Segment, WindowPlan},
    settings::WireDType,
    worker::Worker,
};

/// Largest `frames_per_clip` accepted (the motion modules' 32 positions).
pub const MAX_FRAMES_PER_CLIP: u32 = 32;
/// Clips buffered per call before the encoder waits for the client.
const OUT_BUFFER: usize = 4;

/// What the service needs besides the worker.
#[derive(Debug, Clone)]
pub struct StageConfig {
    pub plan: WindowPlan,
    /// Floats per encoder position, `(n_layer + 1) * C`.
    pub stride: usize,
    /// Hidden width `C`.
    pub width: usize,
    pub dtype: WireDType,
    pub max_audio_duration: Duration,
    pub max_streams: usize,
    /// Windows per encode request.
    pub max_batch: usize,
    /// Frames per clip when the caller sends 0.
    pub default_frames_per_clip: usize,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AudioEncoder {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    worker: Worker,
    cfg: StageConfig,
    streams: Arc<Semaphore>,
}

type Out = mpsc::Sender<Result<ClipFeatures, Status>>;

impl AudioEncoder {
    pub fn new(worker: Worker, cfg: StageConfig) -> Self {
        let streams = Arc::new(Semaphore::new(cfg.max_streams));
        Self { inner: Arc::new(Inner { worker, cfg, streams }) }
    }

    fn admit(&self) -> Result<OwnedSemaphorePermit, ServiceError> {
        self.inner.streams.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted {
                what: format!(
                    "{} encode calls are running, the limit (audio_encoder.max_streams)",
                    self.inner.cfg.max_streams
                ),
                retry_after: Some(Duration::from_millis(500)),
            }
        })
    }
}

/// Validates the caller's layout; `field` prefixes the messages.
pub fn layout(
    options: Option<&FeatureOptions>,
    field: &str,
    default_fpc: usize,
) -> Result<Layout, ServiceError> {
    let Some(o) = options else {
        return Err(ServiceError::invalid(field, "missing (fps is required)"));
    };
    if !matches!(o.fps, 24 | 25 | 30) {
        return Err(ServiceError::invalid(
            format!("{field}.fps"),
            format!("{} is not one of 24, 25, 30", o.fps),
        ));
    }
    if o.frames_per_clip > MAX_FRAMES_PER_CLIP {
        return Err(ServiceError::invalid(
            format!("{field}.frames_per_clip"),
            format!("{} is more than {MAX_FRAMES_PER_CLIP}", o.frames_per_clip),
        ));
    }
    let frames_per_clip =
        if o.frames_per_clip == 0 { default_fpc } else { o.frames_per_clip as usize };
    Ok(Layout { fps: o.fps, frames_per_clip })
}

fn audio_error(field: &str, e: AudioError) -> ServiceError {
    match e {
        AudioError::BufferFull { .. } => {
            ServiceError::ResourceExhausted { what: e.to_string(), retry_after: None }
        }
        AudioError::Internal(_) => ServiceError::internal(e),
        e => ServiceError::invalid(field, e),
    }
}

fn recipe_error(field: &str, e: RecipeError) -> ServiceError {
    ServiceError::invalid(field, e)
}

impl Inner {
    /// The wire message of a clip.
    fn message(
        &self,
        clip: Clip,
        layout: Layout,
        audio_seconds: f64,
    ) -> Result<ClipFeatures, ServiceError> {
        let fpc = layout.frames_per_clip;
        let tokens = clip.features.len() / fpc / self.cfg.width;
        let shape = vec![fpc, tokens, self.cfg.width];
        let tensor = match self.cfg.dtype {
            WireDType::F32 => HostTensor::from_f32(shape, &clip.features),
            WireDType::F16 => HostTensor::from_f32_as_f16(shape, &clip.features),
        }
        .map_err(ServiceError::internal)?;
        let fps = f64::from(layout.fps);
        let first_frame = clip.index * fpc as u64;
        metrics::counter!("osa_audio_encoder_clips_total").increment(1);
        Ok(ClipFeatures {
            timing: Some(ClipTiming {
                clip_index: clip.index,
                first_frame,
                frame_count: fpc as u32,
                real_frames: clip.real_frames as u32,
                start_seconds: first_frame as f64 / fps,
                duration_seconds: clip.real_frames as f64 / fps,
            }),
            features: Some(tensor.into()),
            last: clip.last,
            audio_seconds,
        })
    }

    /// Encodes every window `seg` has ready and sends the clips that become
    /// ready. `Ok(false)` when the client has gone.
    async fn advance(
        &self,
        seg: &mut Segment,
        layout: Layout,
        audio_seconds: f64,
        out: &Out,
    ) -> Result<bool, ServiceError> {
        loop {
            let jobs = seg.ready_windows(self.cfg.max_batch);
            if jobs.is_empty() {
                break;
            }
            let states = tokio::select! {
                r = self.worker.encode(jobs) => r?,
                () = out.closed() => return Ok(false),
            };
            for s in &states {
                seg.accept(s);
            }
            for clip in seg.ready_clips() {
                let msg = self.message(clip, layout, audio_seconds)?;
                if out.send(Ok(msg)).await.is_err() {
                    return Ok(false);
                }
            }
        }
        for clip in seg.ready_clips() {
            let msg = self.message(clip, layout, audio_seconds)?;
            if out.send(Ok(msg)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn encode_samples(
        &self,
        samples: Vec<f32>,
        layout: Layout,
        out: &Out,
    ) -> Result<(), ServiceError> {
        let mut seg = Segment::new(self.cfg.plan, layout, self.cfg.stride, 0);
        seg.push(&samples);
        let seconds = samples.len() as f64 / SAMPLE_RATE as f64;
        drop(samples);
        seg.finish().map_err(|e| recipe_error("audio", e))?;
        self.advance(&mut seg, layout, seconds, out).await?;
        Ok(())
    }

    async fn encode_stream(
        &self,
        mut input: Streaming<EncodeStreamRequest>,
        out: &Out,
    ) -> Result<(), ServiceError> {
        let next = |m: Result<Option<EncodeStreamRequest>, Status>| match m {
            Ok(Some(r)) => Ok(Some(r.request)),
            Ok(None) => Ok(None),
            Err(s) => {
                Err(ServiceError::Cancelled(format!("request stream failed: {}", s.message())))
            }
        };
        let first = tokio::select! {
            m = input.message() => next(m)?,
            () = out.closed() => return Ok(()),
        };
        let layout = match first {
            Some(Some(In::Start(o))) => {
                if o.normalize_loudness {
                    return Err(ServiceError::invalid(
                        "start.normalize_loudness",
                        "not available for live streams (EBU R128 integrated loudness needs the \
                         whole signal); normalise before sending",
                    ));
                }
                layout(Some(&o), "start", self.cfg.default_frames_per_clip)?
            }
            None => {
                return Err(ServiceError::invalid("request", "the stream ended before `start`"));
            }
            Some(_) => {
                return Err(ServiceError::invalid("request", "the first message must be `start`"));
            }
        };
        let mut pcm = PcmAssembler::new(PcmAssemblerConfig {
            max_buffered_samples: self.cfg.max_audio_duration.as_secs() as usize * SAMPLE_RATE
                + SAMPLE_RATE,
            max_total: Some(self.cfg.max_audio_duration),
        });
        let mut seg = Segment::new(self.cfg.plan, layout, self.cfg.stride, 0);
        let mut buf = Vec::new();
        loop {
            let msg = tokio::select! {
                m = input.message() => next(m)?,
                () = out.closed() => return Ok(()),
            };
            match msg {
                None => {
                    return Err(ServiceError::Cancelled(
                        "the request stream closed without `end`; buffered audio was dropped"
                            .into(),
                    ));
                }
                Some(None) => {
                    return Err(ServiceError::invalid(
                        "request",
                        "empty message: set one of start, pcm16le, reset, end",
                    ));
                }
                Some(Some(In::Start(_))) => {
                    return Err(ServiceError::invalid(
                        "start",
                        "sent twice; it must be the first message only",
                    ));
                }
                Some(Some(In::Pcm16le(bytes))) => {
                    pcm.push(&bytes).map_err(|e| audio_error("pcm16le", e))?;
                    buf.clear();
                    pcm.drain_into(&mut buf, usize::MAX);
                    metrics::gauge!("osa_audio_encoder_audio_seconds_total", "rpc" => "stream")
                        .increment(buf.len() as f64 / SAMPLE_RATE as f64);
                    seg.push(&buf);
                    let seconds = pcm.total_samples() as f64 / SAMPLE_RATE as f64;
                    if !self.advance(&mut seg, layout, seconds, out).await? {
                        return Ok(());
                    }
                }
                Some(Some(In::Reset(_))) => {
                    seg =
                        Segment::new(self.cfg.plan, layout, self.cfg.stride, seg.next_clip_index());
                }
                Some(Some(In::End(_))) => {
                    if seg.received() == 0 {
                        if pcm.total_samples() == 0 {
                            return Err(ServiceError::invalid(
                                "end",
                                "no audio was sent (zero length)",
                            ));
                        }
                        return Ok(());
                    }
                    seg.finish().map_err(|e| recipe_error("pcm16le", e))?;
                    let seconds = pcm.total_samples() as f64 / SAMPLE_RATE as f64;
                    self.advance(&mut seg, layout, seconds, out).await?;
                    return Ok(());
                }
            }
        }
    }
}

/// Runs `work` on its own task, its error (if any) ending the response
/// stream; the admission permit lives as long as the task.
fn respond<F>(
    permit: OwnedSemaphorePermit,
    slot: StreamSlot,
    work: impl FnOnce(Out) -> F,
) -> Response<ReceiverStream<Result<ClipFeatures, Status>>>
where
    F: Future<Output = Result<(), ServiceError>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    let fut = work(tx.clone());
    metrics::gauge!("osa_audio_encoder_streams_active").increment(1.0);
    tokio::spawn(
        async move {
            let result = fut.await;
            if let Err(e) = result {
                tracing::debug!(error = %e, "encode call failed");
                let _ = tx.send(Err(e.into())).await;
            }
            metrics::gauge!("osa_audio_encoder_streams_active").decrement(1.0);
            drop(slot);
            drop(permit);
        }
        .instrument(tracing::Span::current()),
    );
    Response::new(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl AudioEncoderService for AudioEncoder {
    type EncodeFileStream = ReceiverStream<Result<ClipFeatures, Status>>;
    type EncodeStreamStream = ReceiverStream<Result<ClipFeatures, Status>>;

    async fn encode_file(
        &self,
        request: Request<EncodeFileRequest>,
    ) -> Result<Response<Self::EncodeFileStream>, Status> {
        let permit = self.admit()?;
        let req = request.into_inner();
        let layout =
            layout(req.options.as_ref(), "options", self.inner.cfg.default_frames_per_clip)?;
        let normalize = req.options.as_ref().is_some_and(|o| o.normalize_loudness);
        let limits = DecodeLimits { max_duration: self.inner.cfg.max_audio_duration };
        let hint = (!req.format_hint.is_empty()).then_some(req.format_hint);
        let bytes = req.audio;
        let decoded = tokio::task::spawn_blocking(move || {
            let mut audio = osa_audio::decode_file(&bytes, hint.as_deref(), &limits)?;
            if normalize {
                let rate = audio.sample_rate();
                osa_audio::normalize_loudness(&mut audio.samples, rate, &Default::default())?;
            }
            Ok::<_, AudioError>(audio)
        })
        .await
        .map_err(|e| ServiceError::internal(format!("decoder task: {e}")))?
        .map_err(|e| audio_error("audio", e))?;
        tracing::debug!(
            codec = %decoded.codec,
            container = %decoded.container,
            seconds = decoded.samples.len() as f64 / SAMPLE_RATE as f64,
            "decoded"
        );
        metrics::gauge!("osa_audio_encoder_audio_seconds_total", "rpc" => "file")
            .increment(decoded.samples.len() as f64 / SAMPLE_RATE as f64);
        let inner = self.inner.clone();
        Ok(respond(permit, self.inner.worker.open_stream(), move |out| async move {
            inner.encode_samples(decoded.samples, layout, &out).await
        }))
    }

    async fn encode_stream(
        &self,
        request: Request<Streaming<EncodeStreamRequest>>,
    ) -> Result<Response<Self::EncodeStreamStream>, Status> {
        let permit = self.admit()?;
        let input = request.into_inner();
        let inner = self.inner.clone();
        Ok(respond(permit, self.inner.worker.open_stream(), move |out| async move {
            inner.encode_stream(input, &out).await
        }))
    }
}
