//! Whole-file features for inspection (`osa audio features`): the log-mel
//! of the whole signal and the per-frame features, written as safetensors.
//!
//! Synchronous: the caller's thread builds and owns the model.

use std::path::{Path, PathBuf};

use osa_model::{
    audio::{AudioFeatureExtractor, LogMel},
    device::Placement,
};
use tch::{Device, Kind, Tensor};

use crate::{
    model::{ModelConfig, ModelError, WindowModel, build_encoder, encoder_config},
    recipe::{Clip, Layout, RecipeError, Segment, WindowPlan},
};

/// Which definition of the features to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recipe {
    /// The service's streaming recipe (what EncodeFile and EncodeStream
    /// send), see [`crate::recipe`]: the real frames only.
    #[default]
    Service,
    /// EchoMimic's offline recipe (file-wide log-mel max, 30 s pieces):
    /// `osa_model::audio::AudioFeatureExtractor`, with EchoMimic's frame
    /// count (`frames_for_duration`, a few more than the real frames).
    EchoMimic,
}

impl std::str::FromStr for Recipe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "service" => Ok(Self::Service),
            "echomimic" => Ok(Self::EchoMimic),
            _ => Err(format!("{s:?} is not one of service, echomimic")),
        }
    }
}

/// Options of [`features_file`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeaturesOptions {
    /// Video frame rate: 24, 25 or 30.
    pub fps: u32,
    /// Weights directory; `None` = seeded random weights (seed 0) of
    /// `preset`.
    pub weights: Option<PathBuf>,
    /// Preset of the random weights: `tiny` (C = 16) or `echomimic`
    /// (whisper-tiny, C = 384).
    pub preset: String,
    pub recipe: Recipe,
    /// Longest audio accepted.
    pub max_duration: std::time::Duration,
}

impl FeaturesOptions {
    /// The service recipe at `fps`, random tiny weights, 10 min limit.
    pub fn new(fps: u32) -> Self {
        Self {
            fps,
            weights: None,
            preset: "tiny".into(),
            recipe: Recipe::Service,
            max_duration: std::time::Duration::from_secs(600),
        }
    }
}

/// What [`features_file`] computed (CPU f32 tensors).
#[derive(Debug)]
pub struct FileFeatures {
    /// Whisper's log-mel of the whole 16 kHz signal, `[80, n / 160]`
    /// (file-wide max, `osa_model::audio::LogMel::compute`).
    pub mel: Tensor,
    /// Per-frame features `[frames, 10 (n_layer + 1), C]` (`[N, 50, 384]`
    /// for whisper-tiny).
    pub features: Tensor,
    /// Frames backed by audio (`max(1, round(seconds * fps))`).
    pub real_frames: usize,
    /// The decoded 16 kHz samples' count.
    pub samples: usize,
}

/// Why [`features_file`] failed.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Audio { path: PathBuf, source: osa_audio::AudioError },
    #[error("fps {0} is not one of 24, 25, 30")]
    Fps(u32),
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Decodes `audio` (any supported format) and computes the whole-signal
/// log-mel and the per-frame features with `options.recipe`, on the CPU.
pub fn features_file(
    audio: &Path,
    options: &FeaturesOptions,
) -> Result<FileFeatures, FeaturesError> {
    let bytes = std::fs::read(audio)
        .map_err(|source| FeaturesError::Read { path: audio.into(), source })?;
    let hint = audio.extension().and_then(|e| e.to_str());
    let limits = osa_audio::DecodeLimits { max_duration: options.max_duration };
    let decoded = osa_audio::decode_file(&bytes, hint, &limits)
        .map_err(|source| FeaturesError::Audio { path: audio.into(), source })?;
    features_of_samples(&decoded.samples, options)
}

/// [`features_file`] for 16 kHz mono samples.
pub fn features_of_samples(
    samples: &[f32],
    options: &FeaturesOptions,
) -> Result<FileFeatures, FeaturesError> {
    if !matches!(options.fps, 24 | 25 | 30) {
        return Err(FeaturesError::Fps(options.fps));
    }
    let placement = Placement::cpu();
    let layout = Layout { fps: options.fps, frames_per_clip: 1 };
    let mut seg = Segment::new(WindowPlan::default(), layout, 1, 0);
    seg.push(samples);
    seg.finish()?;
    let real_frames = seg.real_frames().unwrap_or(1);
    let _guard = tch::no_grad_guard();
    let mel =
        LogMel::new(Device::Cpu).compute(&Tensor::from_slice(samples)).map_err(ModelError::from)?;
    let weights = options.weights.as_deref();
    let features = match options.recipe {
        Recipe::Service => {
            let model = WindowModel::load(&ModelConfig {
                weights: weights.map(Path::to_path_buf),
                preset: options.preset.clone(),
                seed: 0,
                placement,
                plan: WindowPlan::default(),
            })?;
            let (f, _) = service_features(&model, samples, options.fps)?;
            f
        }
        Recipe::EchoMimic => {
            let cfg = encoder_config(weights, &options.preset)?;
            let (_vs, encoder) = build_encoder(&cfg, weights, 0, placement)?;
            AudioFeatureExtractor::new(encoder)
                .features(samples, options.fps)
                .map_err(ModelError::from)?
                .to_kind(Kind::Float)
        }
    };
    Ok(FileFeatures { mel, features, real_frames, samples: samples.len() })
}

/// Encoder windows per forward pass in [`service_clips`]: the service's
/// default `audio_encoder.max_batch`, so a file is batched as EncodeFile
/// batches it on an otherwise idle stage.
pub const FILE_BATCH: usize = 16;

/// The service recipe's features of a whole signal with `model`:
/// `[real_frames, 10 (n_layer + 1), C]` and the number of encoder windows.
pub fn service_features(
    model: &WindowModel,
    samples: &[f32],
    fps: u32,
) -> Result<(Tensor, usize), FeaturesError> {
    let (rows, windows) = service_clips(model, samples, Layout { fps, frames_per_clip: 1 })?;
    let frames = rows.iter().filter(|c| c.real_frames > 0).count() as i64;
    let data: Vec<f32> = rows.into_iter().flat_map(|c| c.features).collect();
    let width = model.width() as i64;
    Ok((Tensor::from_slice(&data).view([frames, -1, width]), windows))
}

/// The clips EncodeFile sends for a whole 16 kHz signal (f32 on the wire),
/// computed here with `model`: `layout.frames_per_clip` frames each
/// (`[frames, 10 (n_layer + 1), C]` row-major), the last clip padded with
/// frames of the same formula, and the number of encoder windows. The
/// embedded mode feeds these to the generator as the cluster does.
pub fn service_clips(
    model: &WindowModel,
    samples: &[f32],
    layout: Layout,
) -> Result<(Vec<Clip>, usize), FeaturesError> {
    let mut seg = Segment::new(model.plan(), layout, model.stride(), 0);
    seg.push(samples);
    seg.finish()?;
    let mut clips = Vec::new();
    let mut windows = 0;
    loop {
        let jobs = seg.ready_windows(FILE_BATCH);
        if jobs.is_empty() {
            break;
        }
        windows += jobs.len();
        for states in model.encode(&jobs.iter().collect::<Vec<_>>())? {
            seg.accept(&states);
        }
        clips.extend(seg.ready_clips());
    }
    clips.extend(seg.ready_clips());
    Ok((clips, windows))
}

/// Writes `mel` and `features` (f32) to a safetensors file.
pub fn write_safetensors(path: &Path, f: &FileFeatures) -> Result<(), FeaturesError> {
    let mel = f.mel.to_kind(Kind::Float).contiguous();
    let features = f.features.to_kind(Kind::Float).contiguous();
    Tensor::write_safetensors(&[("mel", &mel), ("features", &features)], path)?;
    Ok(())
}
