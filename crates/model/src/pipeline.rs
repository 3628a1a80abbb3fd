//! The whole OSA-LCM inference path on one thread: reference preparation
//! (face detection, crop and mask, VAE encode, reference-UNet bank, face
//! locator), audio features, one-step rolling generation per clip, and VAE
//! decoding. Services split these steps across stages; the embedded mode
//! runs them here in one process.

use std::path::Path;

use image::RgbImage;
use tch::{Device, Kind, Tensor};

use crate::{
    audio::{AudioError, features::AudioFeatureExtractor},
    device::Placement,
    face::{
        Face, FaceError,
        crop::{PreparedReference, prepare_from_detections},
        mtcnn::Mtcnn,
    },
    face_locator::FaceLocator,
    preset::Preset,
    rolling::{Clip, ClipStart, RollingConfig, RollingError, RollingSampler, RollingState},
    scheduler::{Ddim, NoiseGenerator, SchedulerConfig, guide_batched},
    unet2d::UNet2DConditionModel,
    unet3d::{UNet3DConditionModel, UNet3DInput},
    vae::AutoencoderKL,
    weights::{Components, FACE_DETECTOR_FILE, WeightsError},
};

/// Why a pipeline step failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Network(#[from] crate::nn::Error),
    #[error("audio: {0}")]
    Audio(#[from] AudioError),
    #[error("face: {0}")]
    Face(#[from] FaceError),
    #[error(transparent)]
    Rolling(#[from] RollingError),
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// A prepared avatar: everything per-avatar the generator reuses for every
/// clip of every stream.
#[derive(Debug)]
pub struct Avatar {
    /// All faces found, largest first.
    pub faces: Vec<Face>,
    /// The face/crop/mask the model sees.
    pub reference: PreparedReference,
    /// Scaled reference latent [1, 4, h, w].
    pub latent: Tensor,
    /// Reference-UNet bank: one [1, HW, C] entry per spatial transformer.
    pub bank: Vec<Tensor>,
    /// Face-locator features [1, C0, h, w].
    pub face_features: Tensor,
}

/// One stream's share of a batched generation step.
#[derive(Debug, Clone, Copy)]
pub struct ClipJob<'a> {
    pub avatar: &'a Avatar,
    pub state: &'a RollingState,
    /// The clip's audio features [F, S, D].
    pub audio: &'a Tensor,
}

/// The models of one preset, on one device.
#[derive(Debug)]
pub struct Pipeline {
    preset: Preset,
    placement: Placement,
    vae: AutoencoderKL,
    reference_unet: UNet2DConditionModel,
    denoiser: UNet3DConditionModel,
    face_locator: FaceLocator,
    audio: AudioFeatureExtractor,
    detector: Option<Mtcnn>,
    sampler: RollingSampler,
    /// Keeps the variables' owners alive with the modules.
    _stores: Vec<tch::nn::VarStore>,
}

impl Pipeline {
    /// Seeded random weights for `preset` (tests, the embedded default
    /// without `--weights`): the pipeline runs for real, but no real face
    /// comes out. `face_detector` is an MTCNN weights file (real weights).
    pub fn random(
        preset: Preset,
        seed: u64,
        placement: Placement,
        face_detector: Option<&Path>,
    ) -> Result<Self, PipelineError> {
        let mut components = Components::build(&preset, placement.device);
        components.randomize(seed);
        Self::assemble(preset, placement, components, face_detector)
    }

    /// Loads a weights directory (see [`crate::weights`]).
    pub fn load(dir: &Path, placement: Placement) -> Result<Self, PipelineError> {
        Self::load_sized(dir, placement, None)
    }

    /// [`Self::load`] rendering at `size` (width, height) instead of the
    /// preset's own (EchoMimic: 512x512, 512x896 or 896x512).
    pub fn load_sized(
        dir: &Path,
        placement: Placement,
        size: Option<(u32, u32)>,
    ) -> Result<Self, PipelineError> {
        let manifest = crate::weights::read_manifest(dir)?;
        let mut preset = Preset::by_name(&manifest.preset)
            .ok_or_else(|| PipelineError::Input(format!("unknown preset {:?}", manifest.preset)))?;
        if let Some((w, h)) = size {
            if w == 0 || h == 0 || w % 64 != 0 || h % 64 != 0 {
                return Err(PipelineError::Input(format!(
                    "frame size {w}x{h}: both sides must be positive multiples of 64"
                )));
            }
            preset = preset.sized(w, h);
        }
        let mut components = Components::build(&preset, placement.device);
        components.load(dir)?;
        let detector = dir.join(FACE_DETECTOR_FILE);
        let detector = detector.is_file().then_some(detector);
        Self::assemble(preset, placement, components, detector.as_deref())
    }

    fn assemble(
        preset: Preset,
        placement: Placement,
        mut components: Components,
        face_detector: Option<&Path>,
    ) -> Result<Self, PipelineError> {
        if placement.kind != Kind::Float {
            for (_, vs) in components.stores_mut() {
                vs.set_kind(placement.kind);
            }
        }
        let detector = face_detector.map(|p| Mtcnn::load(p, placement.device)).transpose()?;
        let (h, w) = preset.latent_size();
        let sampler = RollingSampler::new(&RollingConfig {
            frames: preset.frames,
            latent_channels: preset.denoising_unet.in_channels,
            height: h,
            width: w,
            scheduler: SchedulerConfig::default(),
            device: placement.device,
            kind: placement.kind,
            ..RollingConfig::default()
        })?;
        let Components { vae, reference_unet, denoising_unet, face_locator, audio_encoder } =
            components;
        Ok(Self {
            preset,
            placement,
            vae: vae.1,
            reference_unet: reference_unet.1,
            denoiser: denoising_unet.1,
            face_locator: face_locator.1,
            audio: AudioFeatureExtractor::new(audio_encoder.1),
            detector,
            sampler,
            _stores: vec![
                vae.0,
                reference_unet.0,
                denoising_unet.0,
                face_locator.0,
                audio_encoder.0,
            ],
        })
    }

    pub fn preset(&self) -> &Preset {
        &self.preset
    }

    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// Whether a face detector is loaded (else the whole image is used).
    pub fn has_face_detector(&self) -> bool {
        self.detector.is_some()
    }

    /// Detects faces (when a detector is loaded), crops and masks the
    /// reference, and computes everything per-avatar: latent, bank, face
    /// features.
    pub fn prepare_avatar(&self, image: &RgbImage) -> Result<Avatar, PipelineError> {
        let _guard = tch::no_grad_guard();
        let faces = match &self.detector {
            Some(d) => d.detect(image)?,
            None => Vec::new(),
        };
        let (width, height) = (self.preset.width, self.preset.height);
        let mut reference = prepare_from_detections(image, &faces, width.max(height))?;
        if width != height {
            // EchoMimic resizes the square face crop (and its mask) to W x H.
            use image::imageops::{FilterType, resize};
            reference.crop = resize(&reference.crop, width, height, FilterType::Triangle);
            reference.mask = resize(&reference.mask, width, height, FilterType::Triangle);
        }
        let (device, kind) = (self.placement.device, self.placement.kind);
        let (w, h) = reference.crop.dimensions();
        let pixels = Tensor::from_slice(reference.crop.as_raw())
            .view([1, i64::from(h), i64::from(w), 3])
            .permute([0, 3, 1, 2])
            .to_device(device)
            .to_kind(Kind::Float)
            / 127.5
            - 1.0;
        let latent = self.vae.encode_latents(&pixels.to_kind(kind))?;
        let t0 = Tensor::zeros([], (Kind::Int64, device));
        let bank = self.reference_unet.reference_bank(&latent, &t0)?;
        let mask = reference.mask_tensor(device).to_kind(kind);
        let face_features = self.face_locator.forward(&mask)?;
        Ok(Avatar { faces, reference, latent, bank, face_features })
    }

    /// EchoMimic's per-frame audio features of a whole 16 kHz mono signal:
    /// [frames, 50, C].
    pub fn audio_features(&self, samples: &[f32], fps: u32) -> Result<Tensor, PipelineError> {
        let _guard = tch::no_grad_guard();
        Ok(self.audio.features(samples, fps)?)
    }

    /// Generates the clip `state.clip_index` under `audio` ([F, S, D]),
    /// calling the denoising UNet `state.steps` times (once for one-step).
    pub fn generate_clip(
        &self,
        avatar: &Avatar,
        state: &RollingState,
        audio: &Tensor,
    ) -> Result<Clip, PipelineError> {
        let mut clips = self.generate_clips(&[ClipJob { avatar, state, audio }])?;
        Ok(clips.remove(0))
    }

    /// The next clip of several streams in one batch: each step is ONE call
    /// of the denoising UNet on all streams (each with its own avatar,
    /// reference bank, audio and noise). Every stream gets what
    /// [`Self::generate_clip`] would give it alone. All jobs must use the
    /// same step count.
    pub fn generate_clips(&self, jobs: &[ClipJob<'_>]) -> Result<Vec<Clip>, PipelineError> {
        let _guard = tch::no_grad_guard();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let frames = self.preset.frames;
        let device = self.placement.device;
        let audio =
            jobs.iter().map(|j| self.check_clip_audio(j.audio)).collect::<Result<Vec<_>, _>>()?;
        let audio = Tensor::cat(&audio, 0);
        let face =
            Tensor::cat(&jobs.iter().map(|j| &j.avatar.face_features).collect::<Vec<_>>(), 0);
        let bank: Vec<Tensor> = (0..jobs[0].avatar.bank.len())
            .map(|i| Tensor::cat(&jobs.iter().map(|j| &j.avatar.bank[i]).collect::<Vec<_>>(), 0))
            .collect();
        let starts: Vec<ClipStart<'_>> = jobs
            .iter()
            .map(|j| ClipStart {
                state: j.state,
                reference: j.state.latents.is_none().then_some(&j.avatar.latent),
            })
            .collect();
        let clips = self.sampler.next_clips(&starts, |x, t| {
            let timestep = Tensor::from_slice(t).to_device(device);
            self.denoiser.forward(&UNet3DInput {
                sample: x,
                frames,
                timestep: &timestep,
                audio: Some(&audio),
                face: Some(&face),
                reference: Some(&bank),
                plain_samples: 0,
            })
        })?;
        Ok(clips)
    }

    /// The multi-step teacher (EchoMimic's sampler): DDIM over `steps`
    /// trailing timesteps from pure noise, with classifier-free guidance on
    /// audio and face mask — the unconditional half sees zero audio, zero
    /// face features and no reference bank — at `guidance` (EchoMimic: 2.5).
    /// Calls the denoising UNet `steps` times on a batch of two. Returns the
    /// clip's x0 latents [F, 4, h, w].
    pub fn generate_clip_teacher(
        &self,
        avatar: &Avatar,
        audio: &Tensor,
        steps: usize,
        guidance: f64,
        seed: u64,
    ) -> Result<Tensor, PipelineError> {
        let _guard = tch::no_grad_guard();
        let audio = self.check_clip_audio(audio)?;
        let (device, kind) = (self.placement.device, self.placement.kind);
        let frames = self.preset.frames;
        let (h, w) = self.preset.latent_size();
        let ddim = Ddim::new(&SchedulerConfig::default(), steps).map_err(RollingError::from)?;
        let mut rng = NoiseGenerator::new(seed);
        let mut x =
            rng.randn(&[frames, self.preset.denoising_unet.in_channels, h, w], kind, device);
        let audio2 = Tensor::cat(&[audio.zeros_like(), audio.shallow_clone()], 0);
        let face2 = Tensor::cat(
            &[avatar.face_features.zeros_like(), avatar.face_features.shallow_clone()],
            0,
        );
        let mut x0 = None;
        for &t in ddim.timesteps() {
            let timestep = Tensor::from(t).to_device(device);
            let pred = self.denoiser.forward(&UNet3DInput {
                sample: &Tensor::cat(&[&x, &x], 0),
                frames,
                timestep: &timestep,
                audio: Some(&audio2),
                face: Some(&face2),
                reference: Some(&avatar.bank),
                plain_samples: 1,
            })?;
            let guided = guide_batched(&pred, guidance).map_err(RollingError::from)?;
            let step = ddim.step(&guided, t, &x).map_err(RollingError::from)?;
            x = step.prev_sample;
            x0 = Some(step.pred_original_sample);
        }
        Ok(x0.unwrap_or(x))
    }

    /// `audio` as [1, F, S, D] on the pipeline's device and kind.
    fn check_clip_audio(&self, audio: &Tensor) -> Result<Tensor, PipelineError> {
        let frames = self.preset.frames;
        let cross = self.preset.denoising_unet.cross_attention_dim;
        let s = audio.size();
        if s.len() != 3 || s[0] != frames || s[2] != cross {
            return Err(PipelineError::Input(format!(
                "clip audio features must be [{frames}, tokens, {cross}], got {s:?}"
            )));
        }
        Ok(audio.to_device(self.placement.device).to_kind(self.placement.kind).unsqueeze(0))
    }

    /// Decodes clip latents [F, 4, h, w] to RGB frames, u8 [F, H, W, 3].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, PipelineError> {
        let _guard = tch::no_grad_guard();
        let image = self.vae.decode_latents(&latents.to_kind(self.placement.kind))?;
        Ok(((image.to_kind(Kind::Float) + 1.0) * 127.5)
            .round()
            .clamp(0.0, 255.0)
            .to_kind(Kind::Uint8)
            .permute([0, 2, 3, 1])
            .contiguous()
            .to_device(Device::Cpu))
    }
}

/// Magic of [`Avatar::to_bytes`].
const AVATAR_MAGIC: &[u8; 5] = b"OSAA1";

#[derive(serde::Serialize, serde::Deserialize)]
struct AvatarHeader {
    faces: Vec<([f32; 4], f32, [[f32; 2]; 5])>,
    crop_box: [u32; 4],
    face_found: bool,
    size: u32,
}

impl Avatar {
    /// Serialises the avatar (so another replica can load it instead of
    /// recomputing): magic, a JSON header (faces, crop box), then the crop,
    /// mask, latent, bank and face features in libtorch's tensor archive.
    pub fn to_bytes(&self) -> Result<Vec<u8>, PipelineError> {
        let (w, h) = self.reference.crop.dimensions();
        let header = AvatarHeader {
            faces: self.faces.iter().map(|f| (f.bbox, f.probability, f.landmarks)).collect(),
            crop_box: self.reference.crop_box,
            face_found: self.reference.face_found,
            size: w,
        };
        let header =
            serde_json::to_vec(&header).map_err(|e| PipelineError::Input(e.to_string()))?;
        let mut out = Vec::with_capacity(64 + header.len());
        out.extend_from_slice(AVATAR_MAGIC);
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        let hw = [i64::from(h), i64::from(w)];
        let crop = Tensor::from_slice(self.reference.crop.as_raw()).view([hw[0], hw[1], 3]);
        let mask = Tensor::from_slice(self.reference.mask.as_raw()).view(hw);
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let mut named: Vec<(String, Tensor)> = vec![
            ("crop".into(), crop),
            ("mask".into(), mask),
            ("latent".into(), cpu(&self.latent)),
            ("face_features".into(), cpu(&self.face_features)),
        ];
        named.extend(self.bank.iter().enumerate().map(|(i, t)| (format!("bank.{i}"), cpu(t))));
        Tensor::save_multi_to_stream(&named, &mut out)?;
        Ok(out)
    }

    /// Reads [`Avatar::to_bytes`], placing the tensors on `placement`.
    pub fn from_bytes(bytes: &[u8], placement: Placement) -> Result<Self, PipelineError> {
        let bad = |m: String| PipelineError::Input(format!("avatar bytes: {m}"));
        if bytes.len() < 9 || &bytes[..5] != AVATAR_MAGIC {
            return Err(bad("not an osa avatar".into()));
        }
        let len = u32::from_le_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) as usize;
        let body = bytes.get(9..9 + len).ok_or_else(|| bad("truncated header".into()))?;
        let header: AvatarHeader = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let mut tensors: std::collections::HashMap<String, Tensor> =
            Tensor::load_multi_from_stream(std::io::Cursor::new(&bytes[9 + len..]))?
                .into_iter()
                .collect();
        let mut take = |name: &str| tensors.remove(name).ok_or_else(|| bad(format!("no {name}")));
        let size = header.size;
        let crop =
            RgbImage::from_raw(size, size, Vec::<u8>::try_from(take("crop")?.flatten(0, -1))?)
                .ok_or_else(|| bad("crop size".into()))?;
        let mask = image::GrayImage::from_raw(
            size,
            size,
            Vec::<u8>::try_from(take("mask")?.flatten(0, -1))?,
        )
        .ok_or_else(|| bad("mask size".into()))?;
        let place = |t: Tensor| t.to_device(placement.device).to_kind(placement.kind);
        let latent = place(take("latent")?);
        let face_features = place(take("face_features")?);
        let mut bank = Vec::new();
        while let Ok(t) = take(&format!("bank.{}", bank.len())) {
            bank.push(place(t));
        }
        Ok(Self {
            faces: header
                .faces
                .into_iter()
                .map(|(bbox, probability, landmarks)| Face { bbox, probability, landmarks })
                .collect(),
            reference: PreparedReference {
                crop,
                mask,
                crop_box: header.crop_box,
                face_found: header.face_found,
            },
            latent,
            bank,
            face_features,
        })
    }
}
