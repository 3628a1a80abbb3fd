//! `osa.v1.LiveService`: interactive sessions. Audio streams in, and each
//! clip leaves as soon as its audio (plus the encoder's look-ahead) has
//! arrived and the stages have made it:
//!
//! ```text
//! client audio -> EncodeStream -> [queue] -> Generate (one clip at a time) -> Decode -> client
//! ```
//!
//! Three tasks per session, joined by bounded channels: the encoder reader
//! fills the queue; the pump sends queued clips to the generator and the
//! results to the decoder; the decoder reader sends segments to the client.
//! An interrupt drops the queue and starts a fresh encoder stream; the
//! generator stream (and its rolling context) goes on, so the video stays
//! continuous and clip indices stay consecutive. A client that leaves
//! cancels every stage stream at once: nothing beyond the clip already on
//! the generator is computed.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::Stream;
use osa_proto::v1::{
    ClipFeatures, ClipTiming, DecodeEnd, DecodeRequest, DecodeStart, EncodeEnd,
    EncodeStreamRequest, FeatureOptions, GenerateRequest, GenerateStart, GeneratedClip, LiveClip,
    LiveEnded, LiveInterrupted, LiveRequest, LiveResponse, LiveStart, LiveStarted,
    PrepareReferenceRequest, VideoOutput, decode_request, decode_response, encode_stream_request,
    generate_request, live_clip, live_request, live_response, live_service_server::LiveService,
};
use osa_runtime::ServiceError;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    keys_layout,
    render::{check_fps, check_sampling},
    stages,
    state::{Shared, tenant},
};

/// Largest audio message accepted (about 30 s of PCM16).
const MAX_AUDIO_MESSAGE: usize = 1 << 20;

/// The LiveService implementation.
#[derive(Debug, Clone)]
pub struct Live {
    shared: Shared,
}

impl Live {
    pub fn new(shared: Shared) -> Self {
        Self { shared }
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<LiveResponse, Status>> + Send>>;

/// A session's options, checked.
#[derive(Debug, Clone)]
struct Plan {
    session_id: String,
    tenant: String,
    avatar_id: String,
    fps: u32,
    steps: u32,
    seed: u64,
    output: VideoOutput,
    clips_per_segment: u32,
    start: LiveStart,
}

fn plan(tenant: String, start: LiveStart) -> Result<Plan, ServiceError> {
    let fps = check_fps("start.fps", start.fps)?;
    let sampling = check_sampling("start.sampling", start.sampling)?;
    let output = match VideoOutput::try_from(start.output) {
        Ok(VideoOutput::Unspecified) => VideoOutput::Fmp4Segments,
        Ok(o @ (VideoOutput::Fmp4Segments | VideoOutput::RawFrames)) => o,
        Ok(VideoOutput::Mp4File) => {
            return Err(ServiceError::invalid(
                "start.output",
                "MP4_FILE is for render jobs; live sessions send FMP4_SEGMENTS or RAW_FRAMES",
            ));
        }
        Err(_) => return Err(ServiceError::invalid("start.output", "unknown value")),
    };
    let clips_per_segment = if start.clips_per_segment == 0 { 1 } else { start.clips_per_segment };
    if clips_per_segment > 64 {
        return Err(ServiceError::invalid("start.clips_per_segment", "is over 64"));
    }
    Ok(Plan {
        session_id: uuid::Uuid::now_v7().to_string(),
        tenant,
        avatar_id: start.avatar_id.clone(),
        fps,
        steps: sampling.steps,
        seed: sampling.seed,
        output,
        clips_per_segment,
        start,
    })
}

#[tonic::async_trait]
impl LiveService for Live {
    type LiveStream = Responses;

    async fn live(
        &self,
        request: Request<Streaming<LiveRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let tenant = tenant(&request)?;
        let mut inbound = request.into_inner();
        let idle = self.shared.settings.live.idle_timeout;
        let first = tokio::time::timeout(idle, inbound.message())
            .await
            .map_err(|_| ServiceError::DeadlineExceeded("no start message in time".into()))??;
        let start = match first {
            Some(LiveRequest { request: Some(live_request::Request::Start(s)) }) => s,
            Some(_) => {
                return Err(
                    ServiceError::invalid("start", "the first message must be start").into()
                );
            }
            None => {
                return Err(ServiceError::invalid("start", "the stream ended before start").into());
            }
        };
        let plan = plan(tenant, start)?;
        let record = self
            .shared
            .avatars
            .get(&plan.tenant, &plan.avatar_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::NotFound { kind: "avatar", id: plan.avatar_id.clone() })?;
        let max = self.shared.settings.gateway.max_live_sessions_per_key;
        let ttl = self.shared.settings.live.slot_ttl;
        let slot = self
            .shared
            .sessions
            .acquire(&plan.tenant, &plan.session_id, max, ttl)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::ResourceExhausted {
                what: format!("{max} live sessions are open for this key"),
                retry_after: Some(Duration::from_secs(1)),
            })?;
        let (out_tx, out_rx) = mpsc::channel(8);
        let session = Session {
            shared: self.shared.clone(),
            generator_avatar: record.generator_id,
            plan,
            out: out_tx,
            abort: CancellationToken::new(),
            queue: Arc::new(Queue::default()),
            timings: Arc::new(Mutex::new(HashMap::new())),
            next_index: Arc::new(AtomicU64::new(0)),
            last_audio: Arc::new(Mutex::new(Instant::now())),
            generator_opened: Arc::default(),
        };
        let span = tracing::info_span!("live", session = %session.plan.session_id, tenant = %session.plan.tenant);
        tokio::spawn(
            async move {
                metrics::gauge!("osa_gateway_live_sessions").increment(1.0);
                let renew = {
                    let abort = session.abort.clone();
                    let every = ttl / 3;
                    async move {
                        loop {
                            tokio::select! {
                                () = tokio::time::sleep(every) => {}
                                () = abort.cancelled() => return,
                            }
                            if let Err(e) = slot.renew().await {
                                tracing::warn!(error = %e, "could not renew the session slot");
                            }
                        }
                    }
                };
                let abort = session.abort.clone();
                let run = session.run(inbound);
                let renewer = tokio::spawn(renew);
                run.await;
                abort.cancel();
                let _ = renewer.await;
                metrics::gauge!("osa_gateway_live_sessions").decrement(1.0);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// Clips waiting for the generator.
#[derive(Default)]
struct Queue {
    /// The clips, and the utterance (encoder stream) that may still add to
    /// them: an interrupt moves to the next one under the same lock, so a
    /// late clip of an interrupted utterance can never slip in.
    items: Mutex<(u64, VecDeque<Item>)>,
    ready: Notify,
}

enum Item {
    Clip {
        features: ClipFeatures,
        audio_at: Instant,
    },
    /// The audio ended (after `end` or a closed request stream).
    EndOfAudio,
}

impl Queue {
    /// Queues `item` unless `utterance` was interrupted.
    fn push(&self, utterance: u64, item: Item) {
        let mut items = self.items.lock().expect("queue lock");
        if items.0 == utterance {
            items.1.push_back(item);
            self.ready.notify_one();
        }
    }

    /// The utterance new clips belong to.
    fn utterance(&self) -> u64 {
        self.items.lock().expect("queue lock").0
    }

    async fn pop(&self) -> Item {
        loop {
            if let Some(item) = self.items.lock().expect("queue lock").1.pop_front() {
                return item;
            }
            self.ready.notified().await;
        }
    }

    /// Ends the current utterance and drops its queued clips; returns how
    /// many.
    fn interrupt(&self) -> u64 {
        let mut items = self.items.lock().expect("queue lock");
        items.0 += 1;
        let n = items.1.iter().filter(|i| matches!(i, Item::Clip { .. })).count();
        items.1.retain(|i| matches!(i, Item::EndOfAudio));
        n as u64
    }
}

/// Timing and audio arrival of each generated clip, until it leaves.
type Timings = Arc<Mutex<HashMap<u64, (ClipTiming, Instant)>>>;

#[derive(Clone)]
struct Session {
    shared: Shared,
    generator_avatar: String,
    plan: Plan,
    out: mpsc::Sender<Result<LiveResponse, Status>>,
    abort: CancellationToken,
    queue: Arc<Queue>,
    timings: Timings,
    next_index: Arc<AtomicU64>,
    /// When the latest audio message arrived.
    last_audio: Arc<Mutex<Instant>>,
    /// Whether a generator stream was opened (its context exists).
    generator_opened: Arc<std::sync::atomic::AtomicBool>,
}

/// The open encoder stream of the current utterance.
struct Encoder {
    tx: mpsc::Sender<EncodeStreamRequest>,
    reader: tokio::task::JoinHandle<()>,
    audio_bytes: u64,
}

fn respond(r: live_response::Response) -> Result<LiveResponse, Status> {
    Ok(LiveResponse { response: Some(r) })
}

impl Session {
    async fn fail(&self, status: Status) {
        tracing::warn!(code = ?status.code(), message = status.message(), "live session failed");
        metrics::counter!("osa_gateway_errors_total", "code" => format!("{:?}", status.code()), "rpc" => "Live").increment(1);
        let _ = self.out.send(Err(status)).await;
        self.abort.cancel();
    }

    async fn run(self, mut inbound: Streaming<LiveRequest>) {
        let (width, height, frames_per_clip) = self.shared.settings.model.geometry();
        let started = LiveStarted {
            session_id: self.plan.session_id.clone(),
            fps: self.plan.fps,
            width,
            height,
            frames_per_clip,
            sampling: Some(osa_proto::v1::SamplingOptions {
                steps: self.plan.steps,
                seed: self.plan.seed,
            }),
        };
        if self.out.send(respond(live_response::Response::Started(started))).await.is_err() {
            return;
        }
        // Decoder first: the pump feeds it.
        let (dec_tx, dec_rx) = mpsc::channel::<DecodeRequest>(4);
        let start = DecodeStart {
            stream_id: self.plan.session_id.clone(),
            fps: self.plan.fps,
            output: self.plan.output as i32,
            clips_per_segment: self.plan.clips_per_segment,
            encoding: self.plan.start.encoding,
            fast_decoder: self.shared.settings.live.fast_decoder,
            with_audio: false,
        };
        let _ = dec_tx
            .send(DecodeRequest { request: Some(decode_request::Request::Start(start)) })
            .await;
        // The three stage streams open at once and before the first audio
        // is read, so none of their round trips (nor the generator's context
        // in Redis, nor the decoder's H.264 encoder set-up) lands on the
        // first segment: the generator's in the pump, the decoder's and the
        // first utterance's encoder stream here. A failure cancels `abort`,
        // which stops the pump.
        let pump = tokio::spawn(self.clone().pump(dec_tx));
        let mut dec_client = self.shared.stages.decoder.clone();
        let (dec_out, encoder) =
            tokio::join!(dec_client.decode(ReceiverStream::new(dec_rx)), self.open_encoder());
        let dec_out = match dec_out {
            Ok(r) => r.into_inner(),
            Err(s) => return self.fail(s).await,
        };
        let first_audio: Arc<Mutex<Option<Instant>>> = Arc::default();
        let decoder = tokio::spawn(self.clone().read_decoder(dec_out, first_audio.clone()));
        let mut encoder: Option<Encoder> = match encoder {
            Ok(e) => Some(e),
            Err(s) => return self.fail(s).await,
        };
        let mut audio_samples = 0u64;
        let max_samples = self.shared.settings.gateway.max_audio_duration.as_secs_f64() * 16_000.0;
        let idle = self.shared.settings.live.idle_timeout;
        // Requests until `end`, a closed stream, an error or the idle timeout.
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout(idle, inbound.message()) => m,
                () = self.abort.cancelled() => break,
                () = self.out.closed() => { self.abort.cancel(); break; }
            };
            let request = match msg {
                Err(_) => {
                    let s = ServiceError::DeadlineExceeded(format!(
                        "no message for {}; the session is closed",
                        humantime_duration(idle)
                    ));
                    return self.fail(s.into()).await;
                }
                Ok(Err(status)) => {
                    tracing::debug!(%status, "client left");
                    self.abort.cancel();
                    break;
                }
                Ok(Ok(None)) => {
                    self.end_audio(encoder.take()).await;
                    break;
                }
                Ok(Ok(Some(LiveRequest { request: None }))) => {
                    let e = ServiceError::invalid(
                        "request",
                        "empty message: set one of audio, interrupt, end",
                    );
                    return self.fail(e.into()).await;
                }
                Ok(Ok(Some(LiveRequest { request: Some(r) }))) => r,
            };
            match request {
                live_request::Request::Start(_) => {
                    return self
                        .fail(ServiceError::invalid("start", "was already sent").into())
                        .await;
                }
                live_request::Request::Audio(a) => {
                    let pcm = a.pcm16le;
                    if pcm.len() % 2 != 0 {
                        let e = ServiceError::invalid(
                            "audio.pcm16le",
                            format!("{} bytes is not a whole number of 16-bit samples", pcm.len()),
                        );
                        return self.fail(e.into()).await;
                    }
                    if pcm.len() > MAX_AUDIO_MESSAGE {
                        let e = ServiceError::invalid(
                            "audio.pcm16le",
                            format!(
                                "{} bytes is over the {MAX_AUDIO_MESSAGE}-byte message limit",
                                pcm.len()
                            ),
                        );
                        return self.fail(e.into()).await;
                    }
                    if pcm.is_empty() {
                        continue;
                    }
                    audio_samples += pcm.len() as u64 / 2;
                    if audio_samples as f64 > max_samples {
                        let e = ServiceError::ResourceExhausted {
                            what: format!(
                                "the session sent more than {} of audio",
                                humantime_duration(self.shared.settings.gateway.max_audio_duration)
                            ),
                            retry_after: None,
                        };
                        return self.fail(e.into()).await;
                    }
                    first_audio.lock().expect("lock").get_or_insert_with(Instant::now);
                    if encoder.is_none() {
                        match self.open_encoder().await {
                            Ok(e) => encoder = Some(e),
                            Err(s) => return self.fail(s).await,
                        }
                    }
                    let enc = encoder.as_mut().expect("opened above");
                    enc.audio_bytes += pcm.len() as u64;
                    let sent = enc
                        .tx
                        .send(EncodeStreamRequest {
                            request: Some(encode_stream_request::Request::Pcm16le(pcm)),
                        })
                        .await;
                    if sent.is_err() {
                        // The reader saw the encoder fail and reported it.
                        break;
                    }
                    *self.last_audio.lock().expect("lock") = Instant::now();
                }
                live_request::Request::Interrupt(_) => {
                    if let Some(enc) = encoder.take() {
                        enc.reader.abort();
                    }
                    let dropped = self.queue.interrupt();
                    metrics::counter!("osa_gateway_live_interrupts_total").increment(1);
                    let next = self.next_index.load(Ordering::SeqCst);
                    let ack = LiveInterrupted { dropped_clips: dropped, next_clip_index: next };
                    if self
                        .out
                        .send(respond(live_response::Response::Interrupted(ack)))
                        .await
                        .is_err()
                    {
                        self.abort.cancel();
                        break;
                    }
                }
                live_request::Request::End(_) => {
                    self.end_audio(encoder.take()).await;
                    break;
                }
            }
        }
        // Wait for the last clips to leave (or for a failure).
        let clips = tokio::select! {
            r = decoder => r.unwrap_or(Ok(0)),
            () = self.abort.cancelled() => Ok(0),
        };
        pump.abort();
        if self.abort.is_cancelled() {
            return;
        }
        match clips {
            Ok(clips) => {
                let ended = LiveEnded { clips, audio_seconds: audio_samples as f64 / 16_000.0 };
                let _ = self.out.send(respond(live_response::Response::Ended(ended))).await;
                tracing::info!(
                    clips,
                    audio_seconds = audio_samples as f64 / 16_000.0,
                    "live session ended"
                );
            }
            Err(s) => self.fail(s).await,
        }
        self.abort.cancel();
    }

    /// Opens the encoder stream of a new utterance and its reader, which
    /// queues each clip's features.
    async fn open_encoder(&self) -> Result<Encoder, Status> {
        let (tx, rx) = mpsc::channel::<EncodeStreamRequest>(8);
        let start =
            FeatureOptions { fps: self.plan.fps, frames_per_clip: 0, normalize_loudness: false };
        let _ = tx
            .send(EncodeStreamRequest {
                request: Some(encode_stream_request::Request::Start(start)),
            })
            .await;
        let mut features = self
            .shared
            .stages
            .audio
            .clone()
            .encode_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let this = self.clone();
        let utterance = self.queue.utterance();
        let reader = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = features.message() => m,
                    () = this.abort.cancelled() => return,
                };
                match msg {
                    Ok(Some(clip)) => {
                        let audio_at = *this.last_audio.lock().expect("lock");
                        let last = clip.last;
                        this.queue.push(utterance, Item::Clip { features: clip, audio_at });
                        if last {
                            this.queue.push(utterance, Item::EndOfAudio);
                            return;
                        }
                    }
                    Ok(None) => {
                        this.queue.push(utterance, Item::EndOfAudio);
                        return;
                    }
                    Err(status) => {
                        // Live audio cannot be replayed to another replica.
                        this.fail(status).await;
                        return;
                    }
                }
            }
        });
        Ok(Encoder { tx, reader, audio_bytes: 0 })
    }

    /// No more audio: flush the current utterance's last (padded) clip, or
    /// just close the queue when nothing was sent since the last interrupt.
    async fn end_audio(&self, encoder: Option<Encoder>) {
        match encoder {
            Some(enc) if enc.audio_bytes > 0 => {
                let end = EncodeStreamRequest {
                    request: Some(encode_stream_request::Request::End(EncodeEnd {})),
                };
                if enc.tx.send(end).await.is_err() {
                    self.queue.push(self.queue.utterance(), Item::EndOfAudio);
                }
                // The reader queues the last clip and the end.
            }
            Some(enc) => {
                enc.reader.abort();
                self.queue.push(self.queue.utterance(), Item::EndOfAudio);
            }
            None => self.queue.push(self.queue.utterance(), Item::EndOfAudio),
        }
    }

    /// Sends queued clips through the generator, one at a time, and the
    /// results on to the decoder.
    async fn pump(self, dec_tx: mpsc::Sender<DecodeRequest>) {
        // Likewise the generator stream (and its context in Redis), while
        // the first clip's audio is still arriving; a failure here is
        // retried with the first clip.
        let mut generator: Option<GeneratorStream> = match self.open_generator(false).await {
            Ok(g) => {
                self.generator_opened.store(true, Ordering::SeqCst);
                Some(g)
            }
            Err(s) => {
                tracing::debug!(code = ?s.code(), "generator not opened ahead; retrying with the first clip");
                if s.code() == tonic::Code::AlreadyExists {
                    self.generator_opened.store(true, Ordering::SeqCst);
                }
                None
            }
        };
        let (_, _, frames_per_clip) = self.shared.settings.model.geometry();
        loop {
            let item = tokio::select! {
                i = self.queue.pop() => i,
                () = self.abort.cancelled() => return,
            };
            let (mut features, audio_at) = match item {
                Item::Clip { features, audio_at } => (features, audio_at),
                Item::EndOfAudio => break,
            };
            let index = self.next_index.load(Ordering::SeqCst);
            let Some(timing) = features.timing.as_mut() else {
                return self
                    .fail(Status::internal("audio-encoder sent a clip without timing"))
                    .await;
            };
            // Renumber across utterances: the video's clips are consecutive.
            timing.clip_index = index;
            timing.first_frame = index * u64::from(frames_per_clip);
            timing.start_seconds = timing.first_frame as f64 / f64::from(self.plan.fps);
            let timing = *timing;
            let last = features.last;
            let generated = tokio::select! {
                g = self.generate_one(&mut generator, features) => g,
                () = self.abort.cancelled() => return,
            };
            let generated = match generated {
                Ok(g) => g,
                Err(s) => return self.fail(s).await,
            };
            self.next_index.store(index + 1, Ordering::SeqCst);
            self.timings.lock().expect("lock").insert(index, (timing, audio_at));
            metrics::counter!("osa_gateway_clips_total", "kind" => "live").increment(1);
            let clip = DecodeRequest { request: Some(decode_request::Request::Clip(generated)) };
            if dec_tx.send(clip).await.is_err() {
                return; // the decoder reader reports its failure
            }
            if last {
                break;
            }
        }
        let _ = dec_tx
            .send(DecodeRequest { request: Some(decode_request::Request::End(DecodeEnd {})) })
            .await;
    }

    /// One clip through the generator, retried on another replica when the
    /// current one fails (the rolling context in Redis makes that safe).
    async fn generate_one(
        &self,
        generator: &mut Option<GeneratorStream>,
        features: ClipFeatures,
    ) -> Result<GeneratedClip, Status> {
        let attempts = self.shared.settings.jobs.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            if generator.is_none() {
                // After the first open the generator holds the stream's
                // context (even before clip 0 is done): resume it.
                let resume = self.generator_opened.load(Ordering::SeqCst);
                match self.open_generator(resume).await {
                    Ok(g) => {
                        self.generator_opened.store(true, Ordering::SeqCst);
                        *generator = Some(g);
                    }
                    Err(s) if s.code() == tonic::Code::AlreadyExists && attempt < attempts => {
                        // Created by an open whose answer was lost.
                        self.generator_opened.store(true, Ordering::SeqCst);
                        continue;
                    }
                    Err(s) if stages::retryable(&s) && attempt < attempts => {
                        tokio::time::sleep(stages::backoff(attempt, &s)).await;
                        continue;
                    }
                    Err(s) => return Err(s),
                }
            }
            let g = generator.as_mut().expect("opened above");
            let clip = GenerateRequest {
                request: Some(generate_request::Request::Clip(features.clone())),
            };
            let result = if g.tx.send(clip).await.is_err() {
                Err(stages::ending_status(&mut g.out, "generator").await)
            } else {
                match g.out.message().await {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => Err(Status::unavailable("generator closed the stream")),
                    Err(s) => Err(s),
                }
            };
            match result {
                Ok(c) => return Ok(c),
                Err(s) if stages::avatar_missing(&s) && attempt < attempts => {
                    *generator = None;
                    self.prepare_again().await?;
                }
                Err(s) if stages::retryable(&s) && attempt < attempts => {
                    tracing::warn!(code = ?s.code(), message = s.message(), "generator failed; resuming on another replica");
                    metrics::counter!("osa_gateway_stage_retries_total", "stage" => "generator")
                        .increment(1);
                    *generator = None;
                    tokio::time::sleep(stages::backoff(attempt, &s)).await;
                }
                Err(s) => return Err(s),
            }
        }
    }

    async fn open_generator(&self, resume: bool) -> Result<GeneratorStream, Status> {
        let (tx, rx) = mpsc::channel::<GenerateRequest>(2);
        let start = GenerateStart {
            stream_id: self.plan.session_id.clone(),
            avatar_id: self.generator_avatar.clone(),
            sampling: Some(osa_proto::v1::SamplingOptions {
                steps: self.plan.steps,
                seed: self.plan.seed,
            }),
            resume,
        };
        let _ = tx
            .send(GenerateRequest { request: Some(generate_request::Request::Start(start)) })
            .await;
        let out = self
            .shared
            .stages
            .generator
            .clone()
            .generate(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(GeneratorStream { tx, out })
    }

    async fn prepare_again(&self) -> Result<(), Status> {
        let key = keys_layout::avatar_image_key(&self.plan.tenant, &self.plan.avatar_id);
        let image = self
            .shared
            .blobs
            .get(&key)
            .await
            .map_err(|e| Status::from(ServiceError::from(e)))?
            .ok_or_else(|| {
                Status::not_found(format!("avatar {:?} was deleted", self.plan.avatar_id))
            })?;
        let request = PrepareReferenceRequest {
            avatar_id: self.generator_avatar.clone(),
            image: image.to_vec(),
        };
        self.shared.stages.generator.clone().prepare_reference(request).await?;
        Ok(())
    }

    /// Sends the decoder's output to the client; returns the clips sent.
    async fn read_decoder(
        self,
        mut out: Streaming<osa_proto::v1::DecodeResponse>,
        first_audio: Arc<Mutex<Option<Instant>>>,
    ) -> Result<u64, Status> {
        let mut sent = 0u64;
        let mut first = true;
        let mut media_end = 0.0;
        loop {
            let msg = tokio::select! {
                m = out.message() => m?,
                () = self.abort.cancelled() => return Ok(sent),
            };
            let Some(msg) = msg else { break };
            let Some(timing) = msg.timing else { continue };
            let video = match msg.output {
                Some(decode_response::Output::Segment(s)) => live_clip::Video::Segment(s),
                Some(decode_response::Output::Frames(f)) => live_clip::Video::Frames(f),
                _ => continue,
            };
            // Clips closed by this segment but not last in it carry no bytes.
            for index in sent..=timing.clip_index {
                let known = self.timings.lock().expect("lock").remove(&index);
                let (t, audio_at) = known.unwrap_or((timing, Instant::now()));
                let is_last = index == timing.clip_index;
                let clip = LiveClip {
                    timing: Some(if is_last { timing } else { t }),
                    video: is_last.then(|| video.clone()),
                    latency_seconds: audio_at.elapsed().as_secs_f64(),
                };
                if is_last {
                    metrics::histogram!("osa_gateway_live_clip_latency_seconds")
                        .record(clip.latency_seconds);
                }
                if self.out.send(respond(live_response::Response::Clip(clip))).await.is_err() {
                    self.abort.cancel();
                    return Ok(sent);
                }
            }
            sent = timing.clip_index + 1;
            media_end = timing.start_seconds + timing.duration_seconds;
            if first {
                first = false;
                if let Some(at) = *first_audio.lock().expect("lock") {
                    metrics::histogram!("osa_gateway_time_to_first_segment_seconds")
                        .record(at.elapsed().as_secs_f64());
                }
            }
        }
        // Wall time from the first audio to the last clip out, per second of
        // video: at least 1 when audio arrives in real time; below 1 only
        // when it arrives faster (a benchmark).
        let first_audio = *first_audio.lock().expect("lock");
        if let Some(at) = first_audio
            && media_end > 0.0
        {
            metrics::histogram!("osa_gateway_live_real_time_factor")
                .record(at.elapsed().as_secs_f64() / media_end);
        }
        Ok(sent)
    }
}

struct GeneratorStream {
    tx: mpsc::Sender<GenerateRequest>,
    out: Streaming<GeneratedClip>,
}

fn humantime_duration(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}
