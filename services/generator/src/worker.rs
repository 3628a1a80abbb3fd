//! The model thread: the one owner of the pipeline (tch tensors are Send,
//! not Sync, and must never run on tokio workers). Requests arrive on a
//! bounded channel, each with a oneshot reply; clips of different streams
//! that are ready together run through the UNet as one batch.

use std::{
    collections::VecDeque,
    path::PathBuf,
    time::{Duration, Instant},
};

use image::RgbImage;
use osa_model::{
    device::Placement,
    face::Face,
    pipeline::{Avatar, ClipJob, Pipeline},
    preset::Preset,
    rolling::RollingState,
};
use osa_runtime::model_queue::{Inbox, ModelThread, QueueError, Ready, StreamSlot};
use tch::{Kind, Tensor};
use tokio::sync::oneshot;

/// How the worker builds its pipeline and batches.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Weights directory; `None`: tiny preset, seeded random weights.
    pub weights: Option<PathBuf>,
    pub seed: u64,
    pub face_detector: Option<PathBuf>,
    pub placement: Placement,
    pub avatar_cache: usize,
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub max_batch_wait: Duration,
}

/// Shapes the service validates requests against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub frames: i64,
    pub audio_dim: i64,
    pub latent_channels: i64,
    pub latent_height: i64,
    pub latent_width: i64,
    /// Whether a face detector is loaded (else the whole image is used).
    pub face_detector: bool,
}

/// Why a worker request failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the generator queue is full ({0} clips waiting); retry shortly")]
    Busy(usize),
    #[error("avatar {0:?} is not prepared on this replica")]
    AvatarNotCached(String),
    #[error("{0}")]
    Invalid(String),
    #[error("model failure: {0}")]
    Failed(String),
    #[error("the model thread has stopped")]
    Gone,
}

/// What PrepareReference returns.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub faces: Vec<Face>,
    pub crop_box: [u32; 4],
    pub face_found: bool,
    /// The avatar serialised (for the shared store).
    pub bytes: Vec<u8>,
    pub cached: bool,
}

/// One clip to generate.
#[derive(Debug)]
pub struct ClipRequest {
    pub avatar_id: String,
    /// Serialised rolling state; empty for clip 0.
    pub state: Vec<u8>,
    pub seed: u64,
    pub steps: u32,
    /// Audio features [F, S, D], row-major f32.
    pub features: Vec<f32>,
    pub features_shape: [i64; 3],
    /// When the request was queued (queue-wait metric).
    pub enqueued: Instant,
}

/// A generated clip.
#[derive(Debug)]
pub struct ClipResult {
    /// x0 latents [F, 4, h, w], row-major f32.
    pub latents: Vec<f32>,
    /// The serialised state for the next clip.
    pub next_state: Vec<u8>,
    /// Seconds the batch's UNet calls took.
    pub unet_seconds: f64,
    pub batch_size: usize,
}

enum Command {
    Prepare {
        avatar_id: String,
        image_hash: u64,
        image: RgbImage,
        reply: oneshot::Sender<Result<Prepared, WorkerError>>,
    },
    Install {
        avatar_id: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), WorkerError>>,
    },
    Generate {
        request: ClipRequest,
        reply: oneshot::Sender<Result<ClipResult, WorkerError>>,
    },
}

/// Handle to the model thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    thread: ModelThread<Command, Geometry>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("capacity", &self.thread.capacity()).finish()
    }
}

impl Worker {
    /// Starts the thread; it loads the model and warms it up, then reports
    /// ready (see [`Worker::ready`]).
    pub fn start(config: WorkerConfig) -> std::io::Result<Self> {
        let thread = ModelThread::spawn(
            "osa-generator-model",
            config.queue_capacity,
            "osa_generator_queue_size",
            move |inbox, ready| thread_main(config, inbox, ready),
        )?;
        Ok(Self { thread })
    }

    /// Waits until the model is loaded and warm; its geometry, or why it
    /// failed.
    pub async fn ready(&self) -> Result<Geometry, String> {
        self.thread.ready().await
    }

    fn send(&self, cmd: Command) -> Result<(), WorkerError> {
        self.thread.try_send(cmd).map_err(|e| match e {
            QueueError::Full(n) => WorkerError::Busy(n),
            QueueError::Closed => WorkerError::Gone,
        })
    }

    pub async fn prepare(
        &self,
        avatar_id: String,
        image_hash: u64,
        image: RgbImage,
    ) -> Result<Prepared, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Prepare { avatar_id, image_hash, image, reply })?;
        rx.await.map_err(|_| WorkerError::Gone)?
    }

    pub async fn install(&self, avatar_id: String, bytes: Vec<u8>) -> Result<(), WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Install { avatar_id, bytes, reply })?;
        rx.await.map_err(|_| WorkerError::Gone)?
    }

    /// Counts a generate stream as open while the slot lives: the thread
    /// waits for a fuller batch only while other streams are open.
    pub fn open_stream(&self) -> StreamSlot {
        self.thread.open_stream()
    }

    /// Generates one clip. Dropping the future drops the request from the
    /// queue (the thread skips requests nobody waits for).
    pub async fn generate(&self, request: ClipRequest) -> Result<ClipResult, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Generate { request, reply })?;
        rx.await.map_err(|_| WorkerError::Gone)?
    }
}

/// Prepared avatars on the model's device, least recently used dropped.
struct AvatarCache {
    entries: VecDeque<(String, u64, Avatar)>,
    capacity: usize,
}

impl AvatarCache {
    fn get(&mut self, id: &str) -> Option<&Avatar> {
        let i = self.entries.iter().position(|(k, _, _)| k == id)?;
        let entry = self.entries.remove(i)?;
        self.entries.push_back(entry);
        self.entries.back().map(|(_, _, a)| a)
    }

    fn hash_of(&self, id: &str) -> Option<u64> {
        self.entries.iter().find(|(k, _, _)| k == id).map(|(_, h, _)| *h)
    }

    fn insert(&mut self, id: String, hash: u64, avatar: Avatar) {
        self.entries.retain(|(k, _, _)| *k != id);
        while self.entries.len() >= self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((id, hash, avatar));
    }
}

fn load_pipeline(config: &WorkerConfig) -> Result<Pipeline, String> {
    let result = match &config.weights {
        Some(dir) => Pipeline::load(dir, config.placement),
        None => Pipeline::random(
            Preset::tiny(),
            config.seed,
            config.placement,
            config.face_detector.as_deref(),
        ),
    };
    result.map_err(|e| e.to_string())
}

fn warm_up(pipe: &Pipeline) -> Result<Geometry, String> {
    let preset = pipe.preset();
    let img = RgbImage::from_pixel(preset.width, preset.height, image::Rgb([128, 128, 128]));
    let avatar = pipe.prepare_avatar(&img).map_err(|e| e.to_string())?;
    let audio_dim = preset.denoising_unet.cross_attention_dim;
    let audio = Tensor::zeros([preset.frames, 50, audio_dim], (Kind::Float, tch::Device::Cpu));
    pipe.generate_clip(&avatar, &RollingState::new(0, 1), &audio).map_err(|e| e.to_string())?;
    let (h, w) = preset.latent_size();
    Ok(Geometry {
        frames: preset.frames,
        audio_dim,
        latent_channels: preset.denoising_unet.in_channels,
        latent_height: h,
        latent_width: w,
        face_detector: pipe.has_face_detector(),
    })
}

fn thread_main(config: WorkerConfig, inbox: Inbox<Command>, ready: Ready<Geometry>) {
    let started = Instant::now();
    let pipe = match load_pipeline(&config).and_then(|p| warm_up(&p).map(|g| (p, g))) {
        Ok((pipe, geometry)) => {
            tracing::info!(
                preset = pipe.preset().name,
                device = ?config.placement.device,
                ms = started.elapsed().as_millis() as u64,
                "generator model ready"
            );
            ready.set(Ok(geometry));
            pipe
        }
        Err(e) => {
            tracing::error!(error = %e, "generator model failed to load");
            ready.set(Err(e));
            return;
        }
    };
    let mut cache = AvatarCache { entries: VecDeque::new(), capacity: config.avatar_cache };
    while let Some(first) = inbox.recv() {
        let mut clips = Vec::new();
        let mut others = Vec::new();
        let mut sort = |cmd: Command| match cmd {
            Command::Generate { request, reply } => clips.push((request, reply)),
            other => others.push(other),
        };
        sort(first);
        if !clips.is_empty() {
            let deadline = Instant::now() + config.max_batch_wait;
            while clips.len() < config.max_batch {
                // One clip per stream is in flight (each waits for the
                // previous clip's rolling state).
                match inbox.recv_timeout(inbox.batch_wait(clips.len(), deadline)) {
                    Some(Command::Generate { request, reply }) => clips.push((request, reply)),
                    Some(other) => others.push(other),
                    None => break,
                }
            }
        }
        for cmd in others {
            handle_other(&pipe, &mut cache, cmd);
        }
        if !clips.is_empty() {
            run_clips(&pipe, &mut cache, clips);
        }
    }
}

fn handle_other(pipe: &Pipeline, cache: &mut AvatarCache, cmd: Command) {
    match cmd {
        Command::Prepare { avatar_id, image_hash, image, reply } => {
            if reply.is_closed() {
                return;
            }
            let cached = cache.hash_of(&avatar_id) == Some(image_hash);
            let result = if cached {
                cache.get(&avatar_id).ok_or(WorkerError::Gone).and_then(|a| describe(a, true))
            } else {
                let started = Instant::now();
                pipe.prepare_avatar(&image)
                    .map_err(|e| WorkerError::Failed(e.to_string()))
                    .and_then(|avatar| {
                        metrics::histogram!("osa_generator_prepare_seconds")
                            .record(started.elapsed().as_secs_f64());
                        let described = describe(&avatar, false)?;
                        cache.insert(avatar_id, image_hash, avatar);
                        Ok(described)
                    })
            };
            let _ = reply.send(result);
        }
        Command::Install { avatar_id, bytes, reply } => {
            let result = Avatar::from_bytes(&bytes, pipe.placement())
                .map(|a| cache.insert(avatar_id, 0, a))
                .map_err(|e| WorkerError::Failed(format!("stored avatar: {e}")));
            let _ = reply.send(result);
        }
        Command::Generate { .. } => unreachable!("sorted into the batch"),
    }
}

fn describe(avatar: &Avatar, cached: bool) -> Result<Prepared, WorkerError> {
    Ok(Prepared {
        faces: avatar.faces.clone(),
        crop_box: avatar.reference.crop_box,
        face_found: avatar.reference.face_found,
        bytes: avatar.to_bytes().map_err(|e| WorkerError::Failed(e.to_string()))?,
        cached,
    })
}

type Reply = oneshot::Sender<Result<ClipResult, WorkerError>>;

/// Runs a batch: groups by step count, one UNet call per step per group.
fn run_clips(pipe: &Pipeline, cache: &mut AvatarCache, clips: Vec<(ClipRequest, Reply)>) {
    // Skip streams whose client left while queued.
    let before = clips.len();
    let clips: Vec<_> = clips.into_iter().filter(|(_, reply)| !reply.is_closed()).collect();
    metrics::counter!("osa_generator_clips_cancelled_total")
        .increment((before - clips.len()) as u64);
    for (req, _) in &clips {
        metrics::histogram!("osa_generator_queue_wait_seconds")
            .record(req.enqueued.elapsed().as_secs_f64());
    }
    let mut groups: Vec<(u32, Vec<(ClipRequest, Reply)>)> = Vec::new();
    for clip in clips {
        match groups.iter_mut().find(|(s, _)| *s == clip.0.steps) {
            Some((_, g)) => g.push(clip),
            None => groups.push((clip.0.steps, vec![clip])),
        }
    }
    for (_, group) in groups {
        // Make sure every avatar is on the device before borrowing them.
        let mut ready = Vec::new();
        for (req, reply) in group {
            if cache.get(&req.avatar_id).is_some() {
                ready.push((req, reply));
            } else {
                let _ = reply.send(Err(WorkerError::AvatarNotCached(req.avatar_id.clone())));
            }
        }
        let prepared: Vec<(RollingState, Tensor)> = ready
            .iter()
            .map(|(req, _)| {
                let state = if req.state.is_empty() {
                    Ok(RollingState::new(req.seed, req.steps))
                } else {
                    RollingState::from_bytes(&req.state, pipe.placement().device)
                };
                (state, Tensor::from_slice(&req.features).view(req.features_shape))
            })
            .filter_map(|(s, t)| s.ok().map(|s| (s, t)))
            .collect();
        if prepared.len() != ready.len() {
            for (_, reply) in ready {
                let _ = reply
                    .send(Err(WorkerError::Invalid("stored rolling state is unreadable".into())));
            }
            continue;
        }
        let jobs: Vec<ClipJob<'_>> = ready
            .iter()
            .zip(&prepared)
            .map(|((req, _), (state, audio))| ClipJob {
                avatar: cache
                    .entries
                    .iter()
                    .find(|(k, _, _)| *k == req.avatar_id)
                    .map(|(_, _, a)| a)
                    .expect("checked above"),
                state,
                audio,
            })
            .collect();
        let started = Instant::now();
        let result = pipe.generate_clips(&jobs);
        let unet_seconds = started.elapsed().as_secs_f64();
        let batch_size = jobs.len();
        metrics::histogram!("osa_generator_batch_size").record(batch_size as f64);
        metrics::histogram!("osa_generator_unet_seconds").record(unet_seconds);
        match result {
            Ok(out) => {
                for ((_, reply), clip) in ready.into_iter().zip(out) {
                    let r = (|| -> Result<ClipResult, String> {
                        let latents = Vec::<f32>::try_from(
                            clip.latents
                                .to_device(tch::Device::Cpu)
                                .to_kind(Kind::Float)
                                .flatten(0, -1),
                        )
                        .map_err(|e| e.to_string())?;
                        let next_state = clip.next.to_bytes().map_err(|e| e.to_string())?;
                        Ok(ClipResult { latents, next_state, unet_seconds, batch_size })
                    })();
                    let _ = reply.send(r.map_err(WorkerError::Failed));
                }
            }
            Err(e) => {
                for (_, reply) in ready {
                    let _ = reply.send(Err(WorkerError::Failed(e.to_string())));
                }
            }
        }
    }
}
