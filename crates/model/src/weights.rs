//! The weights directory: one documented layout for every preset.
//!
//! ```text
//! DIR/config.json                  {"format": "osa-weights/1", "preset": "tiny", ...}
//! DIR/vae.safetensors              AutoencoderKL (diffusers keys, vae.tsv)
//! DIR/reference_unet.safetensors   reference UNet (reference_unet.tsv)
//! DIR/denoising_unet.safetensors   denoising UNet incl. motion modules (denoising_unet.tsv)
//! DIR/face_locator.safetensors     face locator (face_locator.tsv)
//! DIR/audio_encoder.safetensors    whisper encoder, keys `encoder.*` (whisper_tiny_encoder.tsv)
//! DIR/face_detector.safetensors    MTCNN (`pnet.*`, `rnet.*`, `onet.*`), optional
//! ```
//!
//! Key names are the upstream checkpoints' (EchoMimic v1), so converted
//! public checkpoints and seeded random weights load the same way.
//! [`init_random`] writes seeded random weights: they exercise the whole
//! pipeline but do not make a real face.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::{
    audio::whisper::WhisperEncoder, face_locator::FaceLocator, preset::Preset,
    scheduler::NoiseGenerator, unet2d::UNet2DConditionModel, unet3d::UNet3DConditionModel,
    vae::AutoencoderKL,
};

/// Value of `config.json`'s `format`.
pub const FORMAT: &str = "osa-weights/1";

/// The network components and their file names.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("vae", "vae.safetensors"),
    ("reference_unet", "reference_unet.safetensors"),
    ("denoising_unet", "denoising_unet.safetensors"),
    ("face_locator", "face_locator.safetensors"),
    ("audio_encoder", "audio_encoder.safetensors"),
];

/// File name of the optional face detector.
pub const FACE_DETECTOR_FILE: &str = "face_detector.safetensors";

/// `config.json` of a weights directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// `tiny` or `echomimic`.
    pub preset: String,
    /// True for seeded random weights (no real face comes out).
    pub random: bool,
    /// The seed of random weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Where the weights came from, for humans.
    #[serde(default)]
    pub source: String,
}

/// Why a weights directory could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Torch { path: PathBuf, source: tch::TchError },
    #[error("{0}")]
    Load(#[from] crate::nn::Error),
}

/// Builds every network component of `preset` in its own VarStore on
/// `device`, in fp32 (call `set_kind` on the stores for fp16).
pub struct Components {
    pub vae: (VarStore, AutoencoderKL),
    pub reference_unet: (VarStore, UNet2DConditionModel),
    pub denoising_unet: (VarStore, UNet3DConditionModel),
    pub face_locator: (VarStore, FaceLocator),
    pub audio_encoder: (VarStore, WhisperEncoder),
}

impl std::fmt::Debug for Components {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Components { .. }")
    }
}

impl Components {
    pub fn build(preset: &Preset, device: Device) -> Self {
        let vae_vs = VarStore::new(device);
        let vae = AutoencoderKL::new(vae_vs.root(), &preset.vae);
        let ref_vs = VarStore::new(device);
        let reference_unet = UNet2DConditionModel::new(ref_vs.root(), &preset.reference_unet);
        let den_vs = VarStore::new(device);
        let denoising_unet = UNet3DConditionModel::new(den_vs.root(), &preset.denoising_unet);
        let fl_vs = VarStore::new(device);
        let face_locator = FaceLocator::new(fl_vs.root(), &preset.face_locator);
        let ae_vs = VarStore::new(device);
        let audio_encoder = WhisperEncoder::new(ae_vs.root() / "encoder", &preset.audio_encoder);
        Self {
            vae: (vae_vs, vae),
            reference_unet: (ref_vs, reference_unet),
            denoising_unet: (den_vs, denoising_unet),
            face_locator: (fl_vs, face_locator),
            audio_encoder: (ae_vs, audio_encoder),
        }
    }

    /// The stores by component name, in [`COMPONENTS`] order.
    pub fn stores_mut(&mut self) -> [(&'static str, &mut VarStore); 5] {
        [
            ("vae", &mut self.vae.0),
            ("reference_unet", &mut self.reference_unet.0),
            ("denoising_unet", &mut self.denoising_unet.0),
            ("face_locator", &mut self.face_locator.0),
            ("audio_encoder", &mut self.audio_encoder.0),
        ]
    }

    /// Fills every component with seeded random weights (see
    /// [`randomize`]); component `i` uses seed `seed + i`.
    pub fn randomize(&mut self, seed: u64) {
        for (i, (_, vs)) in self.stores_mut().into_iter().enumerate() {
            randomize(vs, seed.wrapping_add(i as u64));
        }
    }

    /// Loads every component from a weights directory.
    pub fn load(&mut self, dir: &Path) -> Result<(), WeightsError> {
        for (name, vs) in self.stores_mut() {
            let file = file_of(name);
            let path = dir.join(file);
            if !path.is_file() {
                return Err(WeightsError::Manifest {
                    path,
                    reason: format!("missing: the {name} weights"),
                });
            }
            if name == "vae" {
                crate::vae::load(vs, &path)?;
            } else {
                crate::nn::load_safetensors(vs, &path, None)?;
            }
        }
        Ok(())
    }
}

fn file_of(component: &str) -> &'static str {
    COMPONENTS.iter().find(|(n, _)| *n == component).map_or("", |(_, f)| f)
}

/// Seeded random weights, the same for a seed on every machine: variables
/// are visited in name order; norm scales are 1 + N(0, 0.02²), biases
/// N(0, 0.02²), other weights N(0, 1/fan_in) so activations keep their scale
/// through the network. Fixed sinusoid tables (whisper's
/// `positional_embedding`, the motion modules' `pos_encoder.pe`) keep their
/// computed values.
pub fn randomize(vs: &VarStore, seed: u64) {
    let _guard = tch::no_grad_guard();
    // A private generator, not libtorch's global one: other threads (other
    // models, tests) drawing random numbers meanwhile cannot change these.
    let mut rng = NoiseGenerator::new(seed);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut t) in vars {
        if name.ends_with("positional_embedding") || name.ends_with("pos_encoder.pe") {
            continue;
        }
        let size = t.size();
        let noise = rng.randn(&size, Kind::Float, Device::Cpu);
        let mut parents = name.split('.').rev().skip(1);
        let is_norm =
            parents.any(|p| p.contains("norm") || p.ends_with("_ln") || p.starts_with("ln_"));
        let value = if size.len() == 1 && is_norm && name.ends_with("weight") {
            noise * 0.02 + 1.0
        } else if size.len() == 1 {
            noise * 0.02
        } else {
            let fan_in: i64 = size[1..].iter().product();
            noise / (fan_in.max(1) as f64).sqrt()
        };
        t.copy_(&value.to_kind(t.kind()).to_device(t.device()));
    }
}

/// Writes seeded random weights of `preset` into `out` (created if needed),
/// with `config.json`, and copies `face_detector` (real MTCNN weights) in
/// when given.
pub fn init_random(
    preset: &Preset,
    seed: u64,
    out: &Path,
    face_detector: Option<&Path>,
) -> Result<Manifest, WeightsError> {
    std::fs::create_dir_all(out).map_err(|source| WeightsError::Io { path: out.into(), source })?;
    let mut components = Components::build(preset, Device::Cpu);
    components.randomize(seed);
    for (name, vs) in components.stores_mut() {
        let path = out.join(file_of(name));
        vs.save(&path).map_err(|source| WeightsError::Torch { path, source })?;
    }
    if let Some(src) = face_detector {
        let dst = out.join(FACE_DETECTOR_FILE);
        std::fs::copy(src, &dst).map_err(|source| WeightsError::Io { path: src.into(), source })?;
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        preset: preset.name.into(),
        random: true,
        seed: Some(seed),
        source: "osa weights init (seeded random)".into(),
    };
    write_manifest(out, &manifest)?;
    Ok(manifest)
}

/// Writes `DIR/config.json`.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), WeightsError> {
    let path = dir.join("config.json");
    let text = serde_json::to_string_pretty(manifest)
        .map_err(|e| WeightsError::Manifest { path: path.clone(), reason: e.to_string() })?;
    std::fs::write(&path, text + "\n").map_err(|source| WeightsError::Io { path, source })
}

/// Reads and checks `DIR/config.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, WeightsError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| WeightsError::Io { path: path.clone(), source })?;
    let m: Manifest = serde_json::from_str(&text)
        .map_err(|e| WeightsError::Manifest { path: path.clone(), reason: e.to_string() })?;
    if m.format != FORMAT {
        return Err(WeightsError::Manifest {
            path,
            reason: format!("format {:?} is not {FORMAT:?}", m.format),
        });
    }
    if Preset::by_name(&m.preset).is_none() {
        return Err(WeightsError::Manifest {
            path,
            reason: format!("unknown preset {:?}", m.preset),
        });
    }
    Ok(m)
}

/// All component files of a weights directory that exist, by name.
pub fn component_files(dir: &Path) -> BTreeMap<&'static str, PathBuf> {
    COMPONENTS.iter().map(|(n, f)| (*n, dir.join(f))).filter(|(_, p)| p.is_file()).collect()
}
