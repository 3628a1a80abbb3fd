//! `osa.v1.DecoderService`: the Decode stream.
//!
//! Each stream is one task: it validates `start` into a [`Plan`], then
//! takes clips in order, has the model thread decode them (batched with
//! other streams' clips), and encodes the frames on a blocking thread into
//! the requested output. Video timestamps come from clip indices alone.

use std::{pin::Pin, sync::Arc, time::Instant};

use futures::Stream;
use osa_media::{
    frame::{Fps, RgbFrame, VideoSize},
    opus::OpusConfig,
    output::{LiveChunk, LiveStream, Mp4Render, OutputConfig},
};
use osa_proto::{
    tensor::{DType, HostTensor},
    v1::{
        ByteChunk, ClipTiming, DecodeRequest, DecodeResponse, DecodeStart, Fmp4Segment,
        GeneratedClip, RawFrames, VideoOutput, decode_request, decode_response,
        decoder_service_server::DecoderService,
    },
};
use osa_runtime::ServiceError;
use tokio::sync::{Semaphore, mpsc};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    settings::DecoderSettings,
    worker::{DecodeJob, Geometry, Worker, WorkerError},
};

impl From<WorkerError> for ServiceError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::Busy(_) => ServiceError::ResourceExhausted {
                what: e.to_string(),
                retry_after: Some(std::time::Duration::from_millis(200)),
            },
            WorkerError::Failed(m) => ServiceError::Internal(m),
            WorkerError::Gone => ServiceError::NotServing(e.to_string()),
        }
    }
}

fn media_error(e: osa_media::MediaError) -> ServiceError {
    ServiceError::Internal(format!("encoding: {e}"))
}

/// The DecoderService implementation.
#[derive(Clone)]
pub struct Decoder {
    worker: Worker,
    settings: Arc<DecoderSettings>,
    streams: Arc<Semaphore>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    pub fn new(worker: Worker, settings: DecoderSettings) -> Self {
        let streams = Arc::new(Semaphore::new(settings.max_streams));
        Self { worker, settings: Arc::new(settings), streams }
    }
}

/// How frames leave a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Raw,
    Fmp4 { clips_per_segment: u32 },
    Mp4File,
}

/// A validated `DecodeStart`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub stream_id: String,
    pub fps: Fps,
    pub output: Output,
    pub bitrate_bps: u32,
    pub fast: bool,
    pub with_audio: bool,
}

impl Plan {
    /// Validates `start` against the model and the settings.
    pub fn new(start: DecodeStart, g: Geometry, s: &DecoderSettings) -> Result<Self, ServiceError> {
        if start.stream_id.len() > 256 {
            return Err(ServiceError::invalid("start.stream_id", "is longer than 256 bytes"));
        }
        let fps = Fps::try_from(start.fps).map_err(|_| {
            ServiceError::invalid("start.fps", format!("{} is not one of 24, 25, 30", start.fps))
        })?;
        let output = match VideoOutput::try_from(start.output) {
            Ok(VideoOutput::RawFrames) => Output::Raw,
            Ok(VideoOutput::Fmp4Segments) => {
                Output::Fmp4 { clips_per_segment: start.clips_per_segment.max(1) }
            }
            Ok(VideoOutput::Mp4File) => Output::Mp4File,
            Ok(VideoOutput::Unspecified) => {
                return Err(ServiceError::invalid(
                    "start.output",
                    "is unset: one of RAW_FRAMES, FMP4_SEGMENTS, MP4_FILE",
                ));
            }
            Err(_) => {
                return Err(ServiceError::invalid(
                    "start.output",
                    format!("{} is not a known output format", start.output),
                ));
            }
        };
        if start.clips_per_segment > 1024 {
            return Err(ServiceError::invalid("start.clips_per_segment", "is over 1024"));
        }
        if output == Output::Raw && start.with_audio {
            return Err(ServiceError::invalid(
                "start.with_audio",
                "RAW_FRAMES output carries no audio track",
            ));
        }
        if start.fast_decoder && !g.fast_decoder {
            return Err(ServiceError::invalid(
                "start.fast_decoder",
                "this replica has no fast (TAESD) decoder loaded",
            ));
        }
        let kbps = start.encoding.map_or(0, |e| e.bitrate_kbps);
        if kbps > s.max_bitrate_kbps {
            return Err(ServiceError::invalid(
                "start.encoding.bitrate_kbps",
                format!("{kbps} is over the {} limit", s.max_bitrate_kbps),
            ));
        }
        let kbps = if kbps == 0 { s.default_bitrate_kbps } else { kbps };
        let size = VideoSize::new(g.width, g.height).map_err(media_error)?;
        let default = OutputConfig::new(size, fps).video.bitrate_bps;
        Ok(Self {
            stream_id: start.stream_id,
            fps,
            output,
            bitrate_bps: if kbps == 0 { default } else { kbps * 1000 },
            fast: start.fast_decoder,
            with_audio: start.with_audio,
        })
    }

    fn output_config(&self, g: Geometry) -> Result<OutputConfig, ServiceError> {
        let size = VideoSize::new(g.width, g.height).map_err(media_error)?;
        let mut c = OutputConfig::new(size, self.fps);
        c.video.bitrate_bps = self.bitrate_bps;
        c.audio = self.with_audio.then(OpusConfig::default);
        Ok(c)
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DecodeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DecoderService for Decoder {
    type DecodeStream = ResponseStream;

    async fn decode(
        &self,
        request: Request<Streaming<DecodeRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let permit = self.streams.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted {
                what: format!("{} decode streams are open", self.settings.max_streams),
                retry_after: Some(std::time::Duration::from_millis(500)),
            }
        })?;
        let mut inbound = request.into_inner();
        let start = match inbound.message().await? {
            Some(DecodeRequest { request: Some(decode_request::Request::Start(s)) }) => s,
            Some(_) => {
                return Err(
                    ServiceError::invalid("start", "the first message must be start").into()
                );
            }
            None => {
                return Err(ServiceError::invalid("start", "the stream ended before start").into());
            }
        };
        let geometry = self.worker.ready().await.map_err(ServiceError::NotServing)?;
        let plan = Plan::new(start, geometry, &self.settings)?;
        let sink = Sink::new(&plan, geometry)?;
        let (tx, rx) = mpsc::channel(4);
        let span = tracing::info_span!("decode.stream", stream = %plan.stream_id);
        let mut stream = StreamTask {
            worker: self.worker.clone(),
            settings: self.settings.clone(),
            geometry,
            plan,
            sink,
            next_clip: 0,
            ended_early: false,
            segment_started: None,
            tx: tx.clone(),
        };
        let slot = self.worker.open_stream();
        tokio::spawn(
            async move {
                let _permit = permit;
                let _slot = slot;
                if let Err(e) = stream.run(&mut inbound).await {
                    tracing::debug!(error = %e, "decode stream failed");
                    let _ = tx.send(Err(e.into())).await;
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// The encoder state of one stream.
enum Sink {
    Raw,
    Live(Option<Box<LiveStream>>),
    File(Option<Box<Mp4Render>>),
}

impl Sink {
    fn new(plan: &Plan, g: Geometry) -> Result<Self, ServiceError> {
        Ok(match plan.output {
            Output::Raw => Sink::Raw,
            Output::Fmp4 { clips_per_segment } => Sink::Live(Some(Box::new(
                LiveStream::new(plan.output_config(g)?, clips_per_segment as usize)
                    .map_err(media_error)?,
            ))),
            Output::Mp4File => Sink::File(Some(Box::new(
                Mp4Render::new(plan.output_config(g)?).map_err(media_error)?,
            ))),
        })
    }
}

struct StreamTask {
    worker: Worker,
    settings: Arc<DecoderSettings>,
    geometry: Geometry,
    plan: Plan,
    sink: Sink,
    next_clip: u64,
    /// The last clip had fewer real frames than the clip length: no more
    /// clips may follow.
    ended_early: bool,
    /// When the first clip of the pending fMP4 segment arrived.
    segment_started: Option<Instant>,
    tx: mpsc::Sender<Result<DecodeResponse, Status>>,
}

/// The client left; stop quietly.
struct Gone;

impl StreamTask {
    async fn run(&mut self, inbound: &mut Streaming<DecodeRequest>) -> Result<(), ServiceError> {
        loop {
            let msg = tokio::select! {
                m = inbound.message() => m,
                () = self.tx.closed() => return Ok(()),
            };
            let request = match msg {
                Ok(Some(DecodeRequest { request: Some(r) })) => r,
                Ok(Some(DecodeRequest { request: None })) => {
                    return Err(ServiceError::invalid("request", "is empty"));
                }
                Ok(None) => {
                    return Err(ServiceError::invalid("end", "the stream closed before end"));
                }
                Err(status) => {
                    tracing::debug!(%status, "client stream ended");
                    return Ok(());
                }
            };
            let sent = match request {
                decode_request::Request::Start(_) => {
                    return Err(ServiceError::invalid("start", "was already sent"));
                }
                decode_request::Request::Clip(clip) => self.clip(clip).await?,
                decode_request::Request::AudioPcm16le(pcm) => {
                    self.audio(pcm).await?;
                    Ok(())
                }
                decode_request::Request::End(_) => {
                    let _ = self.end().await?;
                    return Ok(());
                }
            };
            if sent.is_err() {
                return Ok(());
            }
        }
    }

    async fn send(&self, r: DecodeResponse, bytes: usize) -> Result<(), Gone> {
        let output = match self.plan.output {
            Output::Raw => "raw",
            Output::Fmp4 { .. } => "fmp4",
            Output::Mp4File => "mp4",
        };
        metrics::counter!("osa_decoder_bytes_out_total", "output" => output)
            .increment(bytes as u64);
        self.tx.send(Ok(r)).await.map_err(|_| Gone)
    }

    async fn audio(&mut self, pcm: Vec<u8>) -> Result<(), ServiceError> {
        if !self.plan.with_audio {
            return Err(ServiceError::invalid(
                "audio_pcm16le",
                "audio sent but start.with_audio is false",
            ));
        }
        if !pcm.len().is_multiple_of(2) {
            return Err(ServiceError::invalid(
                "audio_pcm16le",
                format!("{} bytes is not a whole number of 16-bit samples", pcm.len()),
            ));
        }
        let samples: Vec<i16> =
            pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
        self.with_sink(move |sink| match sink {
            Sink::Live(Some(live)) => live.push_audio_i16(&samples),
            Sink::File(Some(file)) => file.push_audio_i16(&samples),
            _ => Ok(()),
        })
        .await
    }

    /// Runs `f` on the encoder state on a blocking thread (H.264 and Opus
    /// encoding are CPU work).
    async fn with_sink<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Sink) -> osa_media::Result<T> + Send + 'static,
    ) -> Result<T, ServiceError> {
        let mut sink = std::mem::replace(&mut self.sink, Sink::Raw);
        let (sink, out) = tokio::task::spawn_blocking(move || {
            let out = f(&mut sink);
            (sink, out)
        })
        .await
        .map_err(ServiceError::internal)?;
        self.sink = sink;
        out.map_err(media_error)
    }

    /// Validates a clip, decodes it and emits what became ready.
    async fn clip(&mut self, clip: GeneratedClip) -> Result<Result<(), Gone>, ServiceError> {
        let arrived = Instant::now();
        let g = self.geometry;
        let timing =
            clip.timing.ok_or_else(|| ServiceError::invalid("clip.timing", "is required"))?;
        if self.ended_early {
            return Err(ServiceError::invalid(
                "clip.timing.clip_index",
                format!(
                    "{}: no clip may follow a clip with fewer real frames than its length",
                    timing.clip_index
                ),
            ));
        }
        if timing.clip_index != self.next_clip {
            return Err(ServiceError::invalid(
                "clip.timing.clip_index",
                format!("{} is out of order: expected clip {}", timing.clip_index, self.next_clip),
            ));
        }
        if timing.clip_index >= self.settings.max_clips_per_stream {
            return Err(ServiceError::invalid(
                "clip.timing.clip_index",
                format!(
                    "{} is over the {}-clip limit",
                    timing.clip_index, self.settings.max_clips_per_stream
                ),
            ));
        }
        let frames = g.frames as u32;
        let real = if timing.real_frames == 0 { frames } else { timing.real_frames };
        if real > frames {
            return Err(ServiceError::invalid(
                "clip.timing.real_frames",
                format!("{real} is more than the clip's {frames} frames"),
            ));
        }
        let latents =
            clip.latents.ok_or_else(|| ServiceError::invalid("clip.latents", "is required"))?;
        let latents =
            HostTensor::try_from(latents).map_err(|e| ServiceError::invalid("clip.latents", e))?;
        latents
            .expect_shape(&[
                Some(g.frames as usize),
                Some(g.latent_channels as usize),
                Some(g.latent_height as usize),
                Some(g.latent_width as usize),
            ])
            .map_err(|e| ServiceError::invalid("clip.latents", e))?;
        let values = latents.to_f32_vec().ok_or_else(|| {
            ServiceError::invalid(
                "clip.latents",
                format!("dtype {} is not f32, f16 or bf16", latents.dtype()),
            )
        })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(ServiceError::invalid("clip.latents", "holds NaN or infinite values"));
        }
        let job = DecodeJob {
            latents: values,
            shape: [g.frames, g.latent_channels, g.latent_height, g.latent_width],
            fast: self.plan.fast,
            enqueued: arrived,
        };
        let decoded = tokio::select! {
            d = self.worker.decode(job) => d?,
            () = self.tx.closed() => return Ok(Err(Gone)),
        };
        self.next_clip += 1;
        self.ended_early = real < frames;
        let first_frame = timing.clip_index * u64::from(frames);
        let fps = f64::from(self.plan.fps.as_u32());
        let timing = ClipTiming {
            clip_index: timing.clip_index,
            first_frame,
            frame_count: frames,
            real_frames: real,
            start_seconds: first_frame as f64 / fps,
            duration_seconds: f64::from(real) / fps,
        };
        let (w, h) = (g.width, g.height);
        let frame_len = (w * h * 3) as usize;
        let mut rgb = decoded.rgb;
        rgb.truncate(real as usize * frame_len);
        match self.plan.output {
            Output::Raw => {
                let bytes = rgb.len();
                let tensor =
                    HostTensor::new(DType::U8, vec![real as usize, h as usize, w as usize, 3], rgb)
                        .map_err(ServiceError::internal)?;
                let sent = self
                    .send(
                        DecodeResponse {
                            timing: Some(timing),
                            output: Some(decode_response::Output::Frames(RawFrames {
                                rgb: Some(tensor.into()),
                            })),
                        },
                        bytes,
                    )
                    .await;
                metrics::histogram!("osa_decoder_latency_seconds", "output" => "raw")
                    .record(arrived.elapsed().as_secs_f64());
                Ok(sent)
            }
            Output::Mp4File => {
                self.with_sink(move |sink| {
                    if let Sink::File(Some(file)) = sink {
                        for (i, f) in rgb.chunks_exact(frame_len).enumerate() {
                            file.push_frame(&RgbFrame::new(w, h, f)?, first_frame + i as u64)?;
                        }
                    }
                    Ok(())
                })
                .await?;
                metrics::counter!("osa_decoder_frames_encoded_total").increment(u64::from(real));
                Ok(Ok(()))
            }
            Output::Fmp4 { .. } => {
                self.segment_started.get_or_insert(arrived);
                let chunks = self
                    .with_sink(move |sink| match sink {
                        Sink::Live(Some(live)) => {
                            let frames = rgb
                                .chunks_exact(frame_len)
                                .map(|f| RgbFrame::new(w, h, f))
                                .collect::<osa_media::Result<Vec<_>>>()?;
                            live.push_clip(first_frame, &frames)
                        }
                        _ => Ok(Vec::new()),
                    })
                    .await?;
                metrics::counter!("osa_decoder_frames_encoded_total").increment(u64::from(real));
                Ok(self.emit_segments(chunks, timing).await)
            }
        }
    }

    /// Sends fMP4 chunks: the init segment rides with the first media one.
    async fn emit_segments(
        &mut self,
        chunks: Vec<LiveChunk>,
        timing: ClipTiming,
    ) -> Result<(), Gone> {
        let frames = self.geometry.frames as u64;
        let mut init = Vec::new();
        for chunk in chunks {
            match chunk {
                LiveChunk::Init(bytes) => init = bytes,
                LiveChunk::Segment(seg) => {
                    let first_clip = seg.first_index.map_or(self.next_clip, |i| i / frames);
                    let clip_count = (seg.frame_count as u64).div_ceil(frames) as u32;
                    let bytes = init.len() + seg.bytes.len();
                    let segment = Fmp4Segment {
                        init: std::mem::take(&mut init),
                        start_seconds: seg.start_secs(),
                        duration_seconds: seg.duration_ticks as f64
                            / f64::from(osa_media::frame::VIDEO_TIMESCALE),
                        media: seg.bytes,
                        first_clip,
                        clip_count,
                    };
                    self.send(
                        DecodeResponse {
                            timing: Some(timing),
                            output: Some(decode_response::Output::Segment(segment)),
                        },
                        bytes,
                    )
                    .await?;
                    if let Some(t) = self.segment_started.take() {
                        metrics::histogram!("osa_decoder_latency_seconds", "output" => "fmp4")
                            .record(t.elapsed().as_secs_f64());
                    }
                }
            }
        }
        Ok(())
    }

    fn last_timing(&self) -> ClipTiming {
        let frames = self.geometry.frames as u32;
        let fps = f64::from(self.plan.fps.as_u32());
        let clip = self.next_clip.saturating_sub(1);
        let first = clip * u64::from(frames);
        ClipTiming {
            clip_index: clip,
            first_frame: first,
            frame_count: frames,
            real_frames: frames,
            start_seconds: first as f64 / fps,
            duration_seconds: f64::from(frames) / fps,
        }
    }

    /// Finishes the output: the last fMP4 segment, or the whole MP4 file.
    async fn end(&mut self) -> Result<Result<(), Gone>, ServiceError> {
        let timing = self.last_timing();
        match std::mem::replace(&mut self.sink, Sink::Raw) {
            Sink::Raw => Ok(Ok(())),
            Sink::Live(live) => {
                let started = Instant::now();
                let chunks = tokio::task::spawn_blocking(move || {
                    live.map_or(Ok(Vec::new()), |l| l.finish())
                })
                .await
                .map_err(ServiceError::internal)?
                .map_err(media_error)?;
                self.segment_started.get_or_insert(started);
                Ok(self.emit_segments(chunks, timing).await)
            }
            Sink::File(file) => {
                if self.next_clip == 0 {
                    return Err(ServiceError::invalid("end", "no clip was sent before end"));
                }
                let started = Instant::now();
                let bytes = tokio::task::spawn_blocking(move || {
                    file.map_or(Ok(Vec::new()), |f| f.finish())
                })
                .await
                .map_err(ServiceError::internal)?
                .map_err(media_error)?;
                metrics::histogram!("osa_decoder_latency_seconds", "output" => "mp4")
                    .record(started.elapsed().as_secs_f64());
                let total = bytes.len() as u64;
                let n = bytes.len().div_ceil(self.settings.file_chunk_bytes).max(1);
                for (i, data) in bytes.chunks(self.settings.file_chunk_bytes).enumerate() {
                    let chunk = ByteChunk {
                        offset: (i * self.settings.file_chunk_bytes) as u64,
                        data: data.to_vec(),
                        total_size: total,
                        last: i + 1 == n,
                    };
                    let r = DecodeResponse {
                        timing: Some(timing),
                        output: Some(decode_response::Output::File(chunk)),
                    };
                    if self.send(r, data.len()).await.is_err() {
                        return Ok(Err(Gone));
                    }
                }
                Ok(Ok(()))
            }
        }
    }
}
