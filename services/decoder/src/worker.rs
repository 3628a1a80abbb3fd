//! The model thread: the one owner of the VAE decoder (and the optional
//! TAESD decoder). tch tensors are Send, not Sync, and never run on tokio
//! workers. Clips arrive on a bounded channel, each with a oneshot reply;
//! clips of different streams that are ready together are decoded as one
//! batch (bounded by `max_batch` clips and `max_batch_wait`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use osa_model::{
    device::Placement,
    preset::Preset,
    taesd::{TaesdConfig, TaesdDecoder},
    vae::AutoencoderKL,
};
use osa_runtime::model_queue::{Inbox, ModelThread, QueueError, Ready, StreamSlot};
use tch::{Device, Kind, Tensor, nn::VarStore};
use tokio::sync::oneshot;

/// How the worker builds its decoders and batches.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Weights directory; `None`: tiny preset, seeded random weights.
    pub weights: Option<PathBuf>,
    pub seed: u64,
    /// TAESD weights; `None`: seeded random when `weights` is `None`, else
    /// no fast decoder.
    pub fast_decoder: Option<PathBuf>,
    pub placement: Placement,
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub max_batch_wait: Duration,
}

/// Shapes the service validates clips against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub frames: i64,
    pub latent_channels: i64,
    pub latent_height: i64,
    pub latent_width: i64,
    pub width: u32,
    pub height: u32,
    /// Whether `fast_decoder` requests can be served.
    pub fast_decoder: bool,
}

/// Why a worker request failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the decoder queue is full ({0} clips waiting); retry shortly")]
    Busy(usize),
    #[error("model failure: {0}")]
    Failed(String),
    #[error("the model thread has stopped")]
    Gone,
}

/// One clip to decode.
#[derive(Debug)]
pub struct DecodeJob {
    /// UNet-space latents [F, C, h, w], row-major f32.
    pub latents: Vec<f32>,
    pub shape: [i64; 4],
    /// Use the TAESD decoder.
    pub fast: bool,
    /// When the job was queued (queue-wait metric).
    pub enqueued: Instant,
}

/// A decoded clip.
#[derive(Debug)]
pub struct Decoded {
    /// RGB u8 [F, H, W, 3].
    pub rgb: Vec<u8>,
    /// Clips decoded in the same call.
    pub batch_size: usize,
}

type Reply = oneshot::Sender<Result<Decoded, WorkerError>>;

struct Command {
    job: DecodeJob,
    reply: Reply,
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
    /// Starts the thread; it loads the decoders and warms them up, then
    /// reports ready (see [`Worker::ready`]).
    pub fn start(config: WorkerConfig) -> std::io::Result<Self> {
        let thread = ModelThread::spawn(
            "osa-decoder-model",
            config.queue_capacity,
            "osa_decoder_queue_size",
            move |inbox, ready| thread_main(config, inbox, ready),
        )?;
        Ok(Self { thread })
    }

    /// Waits until the model is loaded and warm; its geometry, or why it
    /// failed.
    pub async fn ready(&self) -> Result<Geometry, String> {
        self.thread.ready().await
    }

    /// Counts a decode stream as open while the slot lives: the thread
    /// waits for a fuller batch only while other streams are open.
    pub fn open_stream(&self) -> StreamSlot {
        self.thread.open_stream()
    }

    /// Decodes one clip. Dropping the future drops the job (the thread
    /// skips jobs nobody waits for).
    pub async fn decode(&self, job: DecodeJob) -> Result<Decoded, WorkerError> {
        let (reply, rx) = oneshot::channel();
        self.thread.try_send(Command { job, reply }).map_err(|e| match e {
            QueueError::Full(n) => WorkerError::Busy(n),
            QueueError::Closed => WorkerError::Gone,
        })?;
        rx.await.map_err(|_| WorkerError::Gone)?
    }
}

/// The decoders the thread owns.
pub struct Decoders {
    pub preset: Preset,
    pub placement: Placement,
    pub vae: AutoencoderKL,
    pub taesd: Option<TaesdDecoder>,
    _stores: Vec<VarStore>,
}

impl std::fmt::Debug for Decoders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoders").field("preset", &self.preset.name).finish_non_exhaustive()
    }
}

impl Decoders {
    /// Builds the VAE (only) of `preset` with the weights `Pipeline::random`
    /// gives it for `seed`, plus a seeded random TAESD decoder.
    pub fn random(preset: Preset, seed: u64, placement: Placement) -> Self {
        let mut vs = VarStore::new(placement.device);
        let vae = AutoencoderKL::new(vs.root(), &preset.vae);
        // The VAE is component 0 of `Components::randomize`: seed + 0.
        osa_model::weights::randomize(&vs, seed);
        let mut tvs = VarStore::new(placement.device);
        let taesd = TaesdDecoder::new(tvs.root() / "decoder", &TaesdConfig::default());
        osa_model::weights::randomize(&tvs, seed.wrapping_add(1000));
        if placement.kind != Kind::Float {
            vs.set_kind(placement.kind);
            tvs.set_kind(placement.kind);
        }
        Self { preset, placement, vae, taesd: Some(taesd), _stores: vec![vs, tvs] }
    }

    /// Loads the VAE from a weights directory and the TAESD decoder from
    /// `fast` (when given).
    pub fn load(
        dir: &std::path::Path,
        fast: Option<&std::path::Path>,
        placement: Placement,
    ) -> Result<Self, String> {
        let manifest = osa_model::weights::read_manifest(dir).map_err(|e| e.to_string())?;
        let preset = Preset::by_name(&manifest.preset)
            .ok_or_else(|| format!("unknown preset {:?}", manifest.preset))?;
        let mut vs = VarStore::new(placement.device);
        let vae = AutoencoderKL::new(vs.root(), &preset.vae);
        let path = osa_model::weights::component_files(dir)
            .remove("vae")
            .ok_or_else(|| format!("{}: no vae weights", dir.display()))?;
        osa_model::vae::load(&mut vs, &path).map_err(|e| e.to_string())?;
        let mut stores = vec![vs];
        let taesd = match fast {
            Some(p) => Some(Self::load_taesd(p, placement.device, &mut stores)?),
            None => None,
        };
        if placement.kind != Kind::Float {
            for vs in &mut stores {
                vs.set_kind(placement.kind);
            }
        }
        Ok(Self { preset, placement, vae, taesd, _stores: stores })
    }

    fn load_taesd(
        path: &std::path::Path,
        device: Device,
        stores: &mut Vec<VarStore>,
    ) -> Result<TaesdDecoder, String> {
        let mut vs = VarStore::new(device);
        let d = TaesdDecoder::new(vs.root() / "decoder", &TaesdConfig::default());
        osa_model::nn::load_safetensors(&mut vs, path, Some(&osa_model::taesd::bare_key_rename))
            .map_err(|e| e.to_string())?;
        stores.push(vs);
        Ok(d)
    }

    pub fn geometry(&self) -> Geometry {
        let (h, w) = self.preset.latent_size();
        Geometry {
            frames: self.preset.frames,
            latent_channels: self.preset.vae.latent_channels,
            latent_height: h,
            latent_width: w,
            width: self.preset.width,
            height: self.preset.height,
            fast_decoder: self.taesd.is_some(),
        }
    }

    /// Decodes UNet-space latents [N, C, h, w] to RGB u8 [N, H, W, 3] on
    /// the CPU: the VAE exactly as `Pipeline::decode`, TAESD mapped from
    /// [0, 1] the same way.
    pub fn decode(&self, latents: &Tensor, fast: bool) -> Result<Tensor, String> {
        let _guard = tch::no_grad_guard();
        let x = latents.to_device(self.placement.device).to_kind(self.placement.kind);
        let unit = if fast {
            let taesd = self.taesd.as_ref().ok_or("no fast decoder is loaded")?;
            taesd.decode(&x).map_err(|e| e.to_string())?.to_kind(Kind::Float) * 2.0 - 1.0
        } else {
            self.vae.decode_latents(&x).map_err(|e| e.to_string())?.to_kind(Kind::Float)
        };
        Ok(((unit + 1.0) * 127.5)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .to_device(Device::Cpu))
    }
}

fn build(config: &WorkerConfig) -> Result<Decoders, String> {
    match &config.weights {
        Some(dir) => Decoders::load(dir, config.fast_decoder.as_deref(), config.placement),
        None => {
            let mut d = Decoders::random(Preset::tiny(), config.seed, config.placement);
            if let Some(p) = &config.fast_decoder {
                let mut stores = Vec::new();
                d.taesd = Some(Decoders::load_taesd(p, config.placement.device, &mut stores)?);
                d._stores.extend(stores);
            }
            Ok(d)
        }
    }
}

/// Decodes the largest batch the thread will ever run (`max_batch` clips)
/// with each decoder before the service reports ready: a replica whose
/// device cannot hold it fails at start, not under load (on a GPU,
/// libtorch's caching allocator then keeps that working set reserved).
fn warm_up(d: &Decoders, max_batch: usize) -> Result<Geometry, String> {
    let g = d.geometry();
    let frames = g.frames * max_batch.max(1) as i64;
    let z = Tensor::zeros(
        [frames, g.latent_channels, g.latent_height, g.latent_width],
        (Kind::Float, Device::Cpu),
    );
    let _ = d.decode(&z, false)?;
    if d.taesd.is_some() {
        let _ = d.decode(&z, true)?;
    }
    Ok(g)
}

fn thread_main(config: WorkerConfig, inbox: Inbox<Command>, ready: Ready<Geometry>) {
    let started = Instant::now();
    let decoders = match build(&config).and_then(|d| warm_up(&d, config.max_batch).map(|g| (d, g)))
    {
        Ok((d, geometry)) => {
            tracing::info!(
                preset = d.preset.name,
                device = ?config.placement.device,
                fast_decoder = geometry.fast_decoder,
                ms = started.elapsed().as_millis() as u64,
                "decoder model ready"
            );
            ready.set(Ok(geometry));
            d
        }
        Err(e) => {
            tracing::error!(error = %e, "decoder model failed to load");
            ready.set(Err(e));
            return;
        }
    };
    while let Some(first) = inbox.recv() {
        let mut batch = vec![first];
        let deadline = Instant::now() + config.max_batch_wait;
        while batch.len() < config.max_batch {
            // Each stream has at most a clip or two queued: counting clips
            // as streams can only shorten the wait, never stretch it.
            match inbox.recv_timeout(inbox.batch_wait(batch.len(), deadline)) {
                Some(cmd) => batch.push(cmd),
                None => break,
            }
        }
        run_batch(&decoders, batch);
    }
}

/// Decodes a batch: one decoder call per decoder kind for all its clips.
fn run_batch(d: &Decoders, batch: Vec<Command>) {
    // Skip streams whose client left while queued.
    let batch: Vec<Command> = batch.into_iter().filter(|c| !c.reply.is_closed()).collect();
    for c in &batch {
        metrics::histogram!("osa_decoder_queue_wait_seconds")
            .record(c.job.enqueued.elapsed().as_secs_f64());
    }
    let (fast, full): (Vec<Command>, Vec<Command>) = batch.into_iter().partition(|c| c.job.fast);
    for (group, is_fast) in [(full, false), (fast, true)] {
        if group.is_empty() {
            continue;
        }
        let inputs: Vec<Tensor> =
            group.iter().map(|c| Tensor::from_slice(&c.job.latents).view(c.job.shape)).collect();
        let frames: Vec<i64> = group.iter().map(|c| c.job.shape[0]).collect();
        let started = Instant::now();
        let result = d.decode(&Tensor::cat(&inputs, 0), is_fast);
        let seconds = started.elapsed().as_secs_f64();
        let n = group.len();
        let total: i64 = frames.iter().sum();
        let decoder = if is_fast { "taesd" } else { "vae" };
        metrics::histogram!("osa_decoder_batch_size").record(n as f64);
        metrics::histogram!("osa_decoder_decode_seconds", "decoder" => decoder).record(seconds);
        metrics::counter!("osa_decoder_frames_decoded_total", "decoder" => decoder)
            .increment(total as u64);
        if seconds > 0.0 {
            metrics::gauge!("osa_decoder_frames_decoded_per_second", "decoder" => decoder)
                .set(total as f64 / seconds);
        }
        match result {
            Ok(rgb) => {
                for (c, part) in group.into_iter().zip(rgb.split_with_sizes(&frames, 0)) {
                    let out = Vec::<u8>::try_from(part.flatten(0, -1))
                        .map(|rgb| Decoded { rgb, batch_size: n })
                        .map_err(|e| WorkerError::Failed(e.to_string()));
                    let _ = c.reply.send(out);
                }
            }
            Err(e) => {
                for c in group {
                    let _ = c.reply.send(Err(WorkerError::Failed(e.clone())));
                }
            }
        }
    }
}
