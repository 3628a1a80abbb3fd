//! EFT rolling sampling (OSA-LCM, stage II "EFT"): a stream of clips where
//! clip 0 starts from noise (or from the noised reference latent) and clip
//! n+1 is the consistency function applied to clip n's latents noised to the
//! rolling timestep, under clip n+1's audio: `x0^{n+1} = f(noise(x0^n, t))`.
//!
//! Everything a stream needs to continue lives in [`RollingState`], a plain
//! value that serialises to a few bytes plus the fp16 latents, so a stream
//! can move between workers between clips. The state holds the latents
//! already rounded to fp16, which makes a clip generated from a
//! deserialised state identical to one generated from the in-memory state.
//!
//! The denoiser is a closure (one call of the denoising UNet per step,
//! returning its v-prediction); [`RollingSampler`] only does the scheduler
//! arithmetic around it and draws noise from a generator seeded by
//! (seed, clip index), so any clip can be regenerated from its state.

use tch::{Device, Kind, Tensor};

use crate::scheduler::{Lcm, NoiseGenerator, SchedulerConfig, SchedulerError};

/// Version byte of the [`RollingState`] encoding.
pub const STATE_VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"OSAR";
const HEADER_LEN: usize = 4 + 1 + 1 + 4 + 8 + 8;

/// Errors of the rolling sampler and of the state encoding.
#[derive(Debug, thiserror::Error)]
pub enum RollingError {
    #[error("rolling state bytes: {0}")]
    Decode(String),
    #[error("{what}: shape {got:?} does not match {want:?}")]
    Shape { what: &'static str, got: Vec<i64>, want: Vec<i64> },
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("denoiser failed: {0}")]
    Denoiser(Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// One stream's position: which clip comes next and the previous clip's x0.
#[derive(Debug)]
pub struct RollingState {
    /// Index of the next clip to generate (0 before the first).
    pub clip_index: u64,
    /// Stream seed; clip `n` draws its noise from `(seed, n)`.
    pub seed: u64,
    /// Network calls per clip (1 = one-step; 2 and 4 as quality knobs).
    pub steps: u32,
    /// The previous clip's x0 latents [F, 4, h, w] in fp16; `None` before
    /// clip 0.
    pub latents: Option<Tensor>,
}

impl Clone for RollingState {
    fn clone(&self) -> Self {
        Self { latents: self.latents.as_ref().map(Tensor::copy), ..*self }
    }
}

impl PartialEq for RollingState {
    fn eq(&self, other: &Self) -> bool {
        let same_latents = match (&self.latents, &other.latents) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.size() == b.size() && a.to_device(Device::Cpu).equal(&b.to_device(Device::Cpu))
            }
            _ => false,
        };
        self.clip_index == other.clip_index
            && self.seed == other.seed
            && self.steps == other.steps
            && same_latents
    }
}

impl RollingState {
    /// A fresh stream.
    pub fn new(seed: u64, steps: u32) -> Self {
        Self { clip_index: 0, seed, steps, latents: None }
    }

    /// Encoding: `"OSAR"`, version u8, flags u8 (bit 0: latents present),
    /// steps u32, clip_index u64, seed u64 (little endian); then, with
    /// latents, the rank u8 and each dim as u32, then the fp16 values
    /// (little endian, row-major). Reads the latents back to the host.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RollingError> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.latents.as_ref().map_or(0, |t| 1 + 16 + 2 * t.numel()),
        );
        out.extend_from_slice(MAGIC);
        out.push(STATE_VERSION);
        out.push(u8::from(self.latents.is_some()));
        out.extend_from_slice(&self.steps.to_le_bytes());
        out.extend_from_slice(&self.clip_index.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        if let Some(t) = &self.latents {
            let dims = t.size();
            out.push(dims.len() as u8);
            for d in &dims {
                let d = u32::try_from(*d)
                    .map_err(|_| RollingError::Decode(format!("dimension {d} too large")))?;
                out.extend_from_slice(&d.to_le_bytes());
            }
            let values =
                Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
            for v in values {
                out.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Decodes [`RollingState::to_bytes`]; latents land on `device` in fp16.
    /// Wrong magic, unknown version, unknown flags, truncated or trailing
    /// bytes are errors.
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Self, RollingError> {
        let bad = |m: &str| RollingError::Decode(m.to_string());
        let mut r = Reader { bytes, pos: 0 };
        if r.take(4)? != MAGIC {
            return Err(bad("not a rolling state (bad magic)"));
        }
        let version = r.take(1)?[0];
        if version != STATE_VERSION {
            return Err(RollingError::Decode(format!(
                "unsupported version {version} (expected {STATE_VERSION})"
            )));
        }
        let flags = r.take(1)?[0];
        if flags > 1 {
            return Err(RollingError::Decode(format!("unknown flags {flags:#x}")));
        }
        let steps = u32::from_le_bytes(r.array()?);
        let clip_index = u64::from_le_bytes(r.array()?);
        let seed = u64::from_le_bytes(r.array()?);
        let latents = if flags & 1 == 1 {
            let rank = r.take(1)?[0] as usize;
            if rank == 0 || rank > 8 {
                return Err(RollingError::Decode(format!("latent rank {rank}")));
            }
            let dims: Vec<i64> = (0..rank)
                .map(|_| r.array().map(|b| i64::from(u32::from_le_bytes(b))))
                .collect::<Result<_, _>>()?;
            let numel = dims
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
                .ok_or_else(|| bad("size overflow"))?;
            let raw = r.take(numel.checked_mul(2).ok_or_else(|| bad("size overflow"))?)?;
            let values: Vec<f32> = raw
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            Some(
                Tensor::from_slice(&values)
                    .view(dims.as_slice())
                    .to_kind(Kind::Half)
                    .to_device(device),
            )
        } else {
            None
        };
        if r.pos != bytes.len() {
            return Err(RollingError::Decode(format!("{} trailing bytes", bytes.len() - r.pos)));
        }
        Ok(Self { clip_index, seed, steps, latents })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RollingError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end =
            end.ok_or_else(|| RollingError::Decode(format!("truncated at byte {}", self.pos)))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RollingError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
}

/// Sampler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RollingConfig {
    /// Frames per clip (EchoMimic's context length: 12).
    pub frames: i64,
    pub latent_channels: i64,
    /// Latent height and width (image size / 8).
    pub height: i64,
    pub width: i64,
    /// Timestep clip n's latents are noised to before clip n+1 is denoised
    /// from them. Under zero terminal SNR, 999 would erase them, so it must
    /// be lower; the value OSA-LCM trains with is not public. 759 is the
    /// second timestep of the four-step LCM schedule.
    pub rolling_timestep: i64,
    pub scheduler: SchedulerConfig,
    /// Where latents and noise live, and their kind.
    pub device: Device,
    pub kind: Kind,
}

impl Default for RollingConfig {
    fn default() -> Self {
        Self {
            frames: 12,
            latent_channels: 4,
            height: 64,
            width: 64,
            rolling_timestep: 759,
            scheduler: SchedulerConfig::default(),
            device: Device::Cpu,
            kind: Kind::Float,
        }
    }
}

/// What [`RollingSampler::next_clip`] returns.
#[derive(Debug)]
pub struct Clip {
    /// The clip's x0 latents [F, 4, h, w] in the sampler's kind (decode these).
    pub latents: Tensor,
    /// The state to generate the following clip from.
    pub next: RollingState,
}

/// Generates clips of a stream; holds no per-stream data.
#[derive(Debug)]
pub struct RollingSampler {
    cfg: RollingConfig,
}

impl RollingSampler {
    pub fn new(cfg: &RollingConfig) -> Result<Self, RollingError> {
        // Validates the scheduler settings and the rolling timestep once.
        Lcm::with_start(&cfg.scheduler, 1, cfg.rolling_timestep)?;
        Ok(Self { cfg: cfg.clone() })
    }

    pub fn config(&self) -> &RollingConfig {
        &self.cfg
    }

    /// Latent shape of one clip, [F, 4, h, w].
    pub fn clip_shape(&self) -> [i64; 4] {
        [self.cfg.frames, self.cfg.latent_channels, self.cfg.height, self.cfg.width]
    }

    /// The timesteps clip `state.clip_index` will be denoised at.
    pub fn timesteps(
        &self,
        state: &RollingState,
        from_latents: bool,
    ) -> Result<Vec<i64>, RollingError> {
        Ok(self.schedule(state.steps as usize, from_latents)?.timesteps().to_vec())
    }

    fn schedule(&self, steps: usize, from_latents: bool) -> Result<Lcm, RollingError> {
        let cfg = &self.cfg.scheduler;
        Ok(if from_latents {
            Lcm::with_start(cfg, steps, self.cfg.rolling_timestep)?
        } else {
            Lcm::new(cfg, steps)?
        })
    }

    /// Generates clip `state.clip_index`, calling `denoise(x_t, t)` (the
    /// denoising UNet under this clip's audio, returning its model output
    /// for [F, 4, h, w] latents) exactly `state.steps` times.
    ///
    /// Clip 0 starts from pure noise, or, when `reference` ([4, h, w] or
    /// [1, 4, h, w]) is given, from the reference latent repeated over the
    /// frames and noised to the rolling timestep. Later clips start from the
    /// state's latents noised to the rolling timestep.
    pub fn next_clip<E>(
        &self,
        state: &RollingState,
        reference: Option<&Tensor>,
        mut denoise: impl FnMut(&Tensor, i64) -> Result<Tensor, E>,
    ) -> Result<Clip, RollingError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut clips =
            self.next_clips(&[ClipStart { state, reference }], |x, t| denoise(x, t[0]))?;
        Ok(clips.remove(0))
    }

    /// [`Self::next_clip`] for several streams at once: each step calls
    /// `denoise(x_t, t)` ONCE for all of them, with `x_t` the streams'
    /// latents folded sample-major ([B*F, 4, h, w]) and `t` one timestep per
    /// stream, and must return the model output in the same layout. Every
    /// stream gets exactly what [`Self::next_clip`] would give it alone (its
    /// own noise and schedule). All streams must use the same step count.
    pub fn next_clips<E>(
        &self,
        starts: &[ClipStart<'_>],
        mut denoise: impl FnMut(&Tensor, &[i64]) -> Result<Tensor, E>,
    ) -> Result<Vec<Clip>, RollingError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(first) = starts.first() else { return Ok(Vec::new()) };
        let steps = first.state.steps;
        if let Some(other) = starts.iter().find(|s| s.state.steps != steps) {
            return Err(RollingError::Decode(format!(
                "a batch mixes {steps} and {} steps per clip",
                other.state.steps
            )));
        }
        let shape = self.clip_shape();
        let frames = shape[0];
        let mut streams = starts
            .iter()
            .map(|s| self.start(s.state, s.reference))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..steps as usize {
            let xs: Vec<&Tensor> = streams.iter().map(|s| &s.x).collect();
            let ts: Vec<i64> = streams.iter().map(|s| s.lcm.timesteps()[i]).collect();
            let x = if xs.len() == 1 { xs[0].shallow_clone() } else { Tensor::cat(&xs, 0) };
            let v = denoise(&x, &ts).map_err(|e| RollingError::Denoiser(e.into()))?;
            let want = [frames * streams.len() as i64, shape[1], shape[2], shape[3]];
            check(&v, "denoiser output", &want)?;
            for (b, s) in streams.iter_mut().enumerate() {
                let v = v.narrow(0, b as i64 * frames, frames);
                let step = s.lcm.step(i, &v, &s.x, &mut s.rng)?;
                s.x = step.prev_sample;
                s.denoised = Some(step.denoised);
            }
        }
        Ok(starts
            .iter()
            .zip(streams)
            .map(|(start, s)| {
                let latents = s.denoised.unwrap_or(s.x);
                let state = start.state;
                let next = RollingState {
                    clip_index: state.clip_index + 1,
                    seed: state.seed,
                    steps: state.steps,
                    // Rounded to fp16 now so the in-memory and serialised
                    // states continue identically.
                    latents: Some(latents.to_kind(Kind::Half)),
                };
                Clip { latents, next }
            })
            .collect())
    }

    /// One stream's schedule, noise generator and starting x_t.
    fn start(
        &self,
        state: &RollingState,
        reference: Option<&Tensor>,
    ) -> Result<StreamStep, RollingError> {
        let shape = self.clip_shape();
        let (device, kind) = (self.cfg.device, self.cfg.kind);
        let start = match (&state.latents, reference) {
            (Some(prev), _) => {
                check(prev, "state latents", &shape)?;
                Some(prev.to_device(device).to_kind(kind))
            }
            (None, Some(r)) => {
                let r = if r.dim() == 4 { r.shallow_clone() } else { r.unsqueeze(0) };
                check(&r, "reference latent", &[1, shape[1], shape[2], shape[3]])?;
                Some(r.to_device(device).to_kind(kind).expand(shape, false))
            }
            (None, None) => None,
        };
        let lcm = self.schedule(state.steps as usize, start.is_some())?;
        let mut rng = NoiseGenerator::for_stream(state.seed, state.clip_index);
        let noise = rng.randn(&shape, kind, device);
        let x = match &start {
            Some(x0) => lcm.schedule().add_noise(x0, &noise, lcm.timesteps()[0])?,
            None => noise,
        };
        Ok(StreamStep { lcm, rng, x, denoised: None })
    }
}

/// Where one stream's next clip starts (see [`RollingSampler::next_clips`]).
#[derive(Debug, Clone, Copy)]
pub struct ClipStart<'a> {
    pub state: &'a RollingState,
    /// The reference latent, used by clip 0 (see [`RollingSampler::next_clip`]).
    pub reference: Option<&'a Tensor>,
}

/// A stream in flight inside [`RollingSampler::next_clips`].
struct StreamStep {
    lcm: Lcm,
    rng: NoiseGenerator,
    x: Tensor,
    denoised: Option<Tensor>,
}

fn check(t: &Tensor, what: &'static str, want: &[i64]) -> Result<(), RollingError> {
    if t.size() == want {
        Ok(())
    } else {
        Err(RollingError::Shape { what, got: t.size(), want: want.to_vec() })
    }
}
