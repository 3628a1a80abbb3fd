//! The embedded mode: every stage of the cluster in one process, computing
//! exactly what the cluster computes for the same seed and inputs.
//!
//! "Exactly" is by construction, not by a second implementation:
//! - audio features are the audio-encoder's EncodeFile clips
//!   ([`osa_audio_encoder::file::service_clips`]: its streaming recipe, its
//!   window batching, f32 as on the wire), not EchoMimic's offline recipe;
//! - random weights (no weights directory) are seeded as the services seed
//!   them by default: every component of seed [`RANDOM_WEIGHTS_SEED`] as
//!   `osa weights init --seed 0` writes it (component `i` uses `0 + i`; the
//!   audio encoder's windowed model draws the same numbers);
//! - generation follows the generator's per-clip semantics: one stream with
//!   the caller's seed and steps, clip indices from 0, the rolling state
//!   passed between clips through its serialised bytes (as it goes through
//!   the context store), one clip per UNet call (a batch of one), latents
//!   read back as f32 — the values `GeneratedClip.latents` carries.
//!
//! Clips run one after another on the calling thread with libtorch's
//! default intra-op thread count, which is also what every service uses:
//! no service setting changes libtorch's threads.

use std::path::PathBuf;

use anyhow::Context as _;
use image::RgbImage;
use osa_audio_encoder::{
    file::service_clips,
    model::{ModelConfig, WindowModel},
    recipe::{Layout, WindowPlan},
};
use osa_model::{
    device::Placement,
    pipeline::{Avatar, ClipJob, Pipeline},
    preset::Preset,
    rolling::RollingState,
};
use tch::{Device, Kind, Tensor};

/// Seed of the random weights used without a weights directory: the
/// generator's and the audio-encoder's default `seed` setting.
pub const RANDOM_WEIGHTS_SEED: u64 = 0;

/// What to render and with which model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Video frame rate: 24, 25 or 30.
    pub fps: u32,
    /// Denoising steps per clip: 1, 2 or 4.
    pub steps: u32,
    /// The stream's noise seed (`SamplingOptions.seed`).
    pub seed: u64,
    /// Weights directory; `None`: the tiny preset with seeded random
    /// weights (no real face comes out).
    pub weights: Option<PathBuf>,
    /// MTCNN weights when there is no weights directory (with one, its own
    /// `face_detector.safetensors` is used when present).
    pub face_detector: Option<PathBuf>,
    /// Frame size (width, height), multiples of 64; `None`: the preset's.
    pub size: Option<(u32, u32)>,
    /// Longest audio accepted, in seconds.
    pub max_audio_seconds: u64,
}

impl EmbeddedOptions {
    /// One step, seed 0, random tiny weights, no face detector, the
    /// preset's size, at most 10 minutes of audio.
    pub fn new(fps: u32) -> Self {
        Self {
            fps,
            steps: 1,
            seed: 0,
            weights: None,
            face_detector: None,
            size: None,
            max_audio_seconds: 600,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(self.fps, 24 | 25 | 30),
            "fps {} is not one of 24, 25, 30",
            self.fps
        );
        anyhow::ensure!(
            matches!(self.steps, 1 | 2 | 4),
            "steps {} is not one of 1, 2, 4",
            self.steps
        );
        Ok(())
    }
}

/// One generated clip, as the generator answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedClip {
    /// Index of the clip in the stream, from 0.
    pub index: u64,
    /// Latents in the UNet's space, row-major f32 `[frames, 4, h/8, w/8]`
    /// (see [`EmbeddedRender::latent_shape`]).
    pub latents: Vec<f32>,
    /// Frames of the clip backed by audio (the rest is padding, not shown).
    pub real_frames: usize,
    /// True on the stream's last clip.
    pub last: bool,
}

/// Every clip's latents of a render.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedRender {
    /// Each clip's latents, in order: what each `GeneratedClip` carries.
    pub clips: Vec<Vec<f32>>,
    /// Shape of each clip's latents: `[frames, 4, h/8, w/8]`.
    pub latent_shape: [usize; 4],
    /// Video frames backed by audio (the video's length).
    pub frames: usize,
    /// Frame rate.
    pub fps: u32,
}

/// The models of a render, loaded once.
#[derive(Debug)]
pub struct Embedded {
    pipe: Pipeline,
    audio: WindowModel,
    options: EmbeddedOptions,
    random_weights: bool,
}

impl Embedded {
    /// Loads (or seeds) the pipeline and the audio encoder's windowed model
    /// on the best device (CUDA in fp16 when visible, as the services'
    /// `device = "auto"`).
    pub fn load(options: EmbeddedOptions) -> anyhow::Result<Self> {
        options.validate()?;
        let placement = Placement::auto();
        let (pipe, random_weights) = match &options.weights {
            Some(dir) => {
                let pipe = Pipeline::load_sized(dir, placement, options.size)
                    .with_context(|| format!("loading weights from {}", dir.display()))?;
                (pipe, osa_model::weights::read_manifest(dir)?.random)
            }
            None => {
                let preset = match options.size {
                    Some((w, h)) => {
                        anyhow::ensure!(
                            w > 0 && h > 0 && w.is_multiple_of(64) && h.is_multiple_of(64),
                            "frame size {w}x{h}: both sides must be positive multiples of 64"
                        );
                        Preset::tiny().sized(w, h)
                    }
                    None => Preset::tiny(),
                };
                let pipe = Pipeline::random(
                    preset,
                    RANDOM_WEIGHTS_SEED,
                    placement,
                    options.face_detector.as_deref(),
                )?;
                (pipe, true)
            }
        };
        let audio = WindowModel::load(&ModelConfig {
            weights: options.weights.clone(),
            preset: "tiny".into(),
            seed: RANDOM_WEIGHTS_SEED,
            placement,
            plan: WindowPlan::default(),
        })
        .context("building the audio encoder")?;
        Ok(Self { pipe, audio, options, random_weights })
    }

    /// The pipeline (its preset, and the VAE to decode latents with).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipe
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &EmbeddedOptions {
        &self.options
    }

    /// True when the weights are random (no real face comes out).
    pub fn random_weights(&self) -> bool {
        self.random_weights
    }

    /// Shape of one clip's latents: `[frames, 4, h/8, w/8]`.
    pub fn latent_shape(&self) -> [usize; 4] {
        let p = self.pipe.preset();
        let (h, w) = p.latent_size();
        [p.frames, p.denoising_unet.in_channels, h, w].map(|d| d as usize)
    }

    /// Face detection, crop and the per-avatar tensors (the generator's
    /// PrepareReference).
    pub fn prepare_avatar(&self, image: &RgbImage) -> anyhow::Result<Avatar> {
        Ok(self.pipe.prepare_avatar(image)?)
    }

    /// The audio-encoder's clips of a 16 kHz mono signal: `(features
    /// [frames, tokens, C] row-major, real frames)` per clip.
    pub fn audio_clips(&self, samples: &[f32]) -> anyhow::Result<Vec<(Vec<f32>, usize)>> {
        let layout = Layout { fps: self.options.fps, frames_per_clip: self.latent_shape()[0] };
        let (clips, _) = service_clips(&self.audio, samples, layout)?;
        Ok(clips.into_iter().map(|c| (c.features, c.real_frames)).collect())
    }

    /// Generates the stream clip by clip from the audio-encoder's clips,
    /// handing each to `on_clip` as soon as it exists (so a caller can
    /// decode as it goes and never hold every clip).
    pub fn generate(
        &self,
        avatar: &Avatar,
        clips: &[(Vec<f32>, usize)],
        mut on_clip: impl FnMut(EmbeddedClip) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let frames = self.latent_shape()[0];
        let device = self.pipe.placement().device;
        let mut state: Vec<u8> = Vec::new();
        for (i, (features, real_frames)) in clips.iter().enumerate() {
            // As the generator worker does with the stored context.
            let rolling = if state.is_empty() {
                RollingState::new(self.options.seed, self.options.steps)
            } else {
                RollingState::from_bytes(&state, device)?
            };
            let per_frame = features.len() / frames;
            let width = self.audio.width();
            anyhow::ensure!(
                per_frame * frames == features.len() && per_frame.is_multiple_of(width),
                "clip {i}: {} feature values do not make {frames} frames of width {width}",
                features.len()
            );
            let audio = Tensor::from_slice(features).view([
                frames as i64,
                (per_frame / width) as i64,
                width as i64,
            ]);
            let mut out = self
                .pipe
                .generate_clips(&[ClipJob { avatar, state: &rolling, audio: &audio }])
                .with_context(|| format!("generating clip {i}"))?;
            let clip = out.remove(0);
            let latents = Vec::<f32>::try_from(
                clip.latents.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1),
            )?;
            state = clip.next.to_bytes()?;
            on_clip(EmbeddedClip {
                index: i as u64,
                latents,
                real_frames: *real_frames,
                last: i + 1 == clips.len(),
            })?;
        }
        Ok(())
    }

    /// A clip's latents as a tensor on the pipeline's device, ready for
    /// [`Pipeline::decode`].
    pub fn latents_tensor(&self, latents: &[f32]) -> Tensor {
        let shape = self.latent_shape().map(|d| d as i64);
        let p = self.pipe.placement();
        Tensor::from_slice(latents).view(shape).to_device(p.device).to_kind(p.kind)
    }
}

/// Decodes `audio` (any supported format), computes the audio-encoder's
/// clips, prepares `image` and generates every clip: the latents the
/// cluster produces for the same seed and inputs. `progress(done, total)`
/// is called after each clip.
pub fn render_latents(
    image: &RgbImage,
    audio: &[u8],
    options: &EmbeddedOptions,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<EmbeddedRender> {
    let limits = osa_audio::DecodeLimits {
        max_duration: std::time::Duration::from_secs(options.max_audio_seconds),
    };
    let decoded = osa_audio::decode_file(audio, None, &limits).context("audio")?;
    let embedded = Embedded::load(options.clone())?;
    let avatar = embedded.prepare_avatar(image)?;
    let clips = embedded.audio_clips(&decoded.samples)?;
    let total = clips.len() as u64;
    let frames = clips.iter().map(|(_, real)| real).sum();
    let mut out = Vec::with_capacity(clips.len());
    embedded.generate(&avatar, &clips, |clip| {
        out.push(clip.latents);
        progress(out.len() as u64, total);
        Ok(())
    })?;
    Ok(EmbeddedRender {
        clips: out,
        latent_shape: embedded.latent_shape(),
        frames,
        fps: options.fps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_and_inputs_are_named_before_any_model_loads() {
        let image = RgbImage::new(64, 64);
        for (options, needle) in [
            (EmbeddedOptions::new(20), "fps 20"),
            (EmbeddedOptions { steps: 3, ..EmbeddedOptions::new(25) }, "steps 3"),
            (EmbeddedOptions { size: Some((100, 64)), ..EmbeddedOptions::new(25) }, "100x64"),
        ] {
            let err = Embedded::load(options).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err:#}");
        }
        let err =
            render_latents(&image, b"not audio", &EmbeddedOptions::new(25), |_, _| {}).unwrap_err();
        assert!(format!("{err:#}").starts_with("audio"), "{err:#}");
    }
}
