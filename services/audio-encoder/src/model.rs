//! The whisper encoder as the recipe runs it (see [`crate::recipe`]): one
//! encoder input per window of `L + C + R` positions, built from the same
//! weights as EchoMimic's 30 s encoder.
//!
//! The encoder is osa-model's [`WhisperEncoder`] built with `n_ctx = L + C +
//! R`: every weight is the same shape as in the 30 s model except the
//! sinusoidal `positional_embedding`, of which the first `n_ctx` rows are
//! loaded (the rows do not depend on the table's length). Random weights
//! are drawn exactly as `osa weights init` draws the audio encoder's.
//!
//! Plain synchronous code: the [`crate::worker`] thread owns it.

use std::path::{Path, PathBuf};

use osa_model::{
    audio::{LogMel, WhisperEncoder, WhisperEncoderConfig},
    device::Placement,
    preset::Preset,
};
use tch::{Device, Kind, Tensor, nn::VarStore};

use crate::recipe::{WindowJob, WindowPlan};

/// Index of the audio encoder in `osa_model::weights::COMPONENTS`: random
/// weights of seed `S` use `S + 4` for it.
const AUDIO_ENCODER_SEED_OFFSET: u64 = 4;

/// Why the model could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("weights: {0}")]
    Weights(String),
    #[error("audio: {0}")]
    Audio(#[from] osa_model::audio::AudioError),
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("window: {0}")]
    Window(String),
}

/// Where the weights come from and how the model runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Weights directory, or `None` for seeded random weights of `preset`.
    pub weights: Option<PathBuf>,
    /// Preset of random weights (`tiny` or `echomimic`).
    pub preset: String,
    /// Seed of random weights (as `osa weights init --seed`).
    pub seed: u64,
    pub placement: Placement,
    pub plan: WindowPlan,
}

/// Parses `auto`, `cpu`, `cuda` or `cuda:N` (`None` = auto).
pub fn parse_device(s: &str) -> Result<Option<Device>, String> {
    match s {
        "auto" => Ok(None),
        "cpu" => Ok(Some(Device::Cpu)),
        "cuda" => Ok(Some(Device::Cuda(0))),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(|n| Some(Device::Cuda(n)))
            .ok_or_else(|| format!("{s:?} is not one of auto, cpu, cuda, cuda:N")),
    }
}

/// The placement for a device setting: fp16 on CUDA, fp32 on CPU.
pub fn placement(device: Option<Device>) -> Placement {
    match device {
        None => Placement::auto(),
        Some(Device::Cpu) => Placement::cpu(),
        Some(d) => Placement { device: d, kind: Kind::Half },
    }
}

/// The encoder dimensions of a weights directory or preset, without
/// building anything.
pub fn encoder_config(
    weights: Option<&Path>,
    preset: &str,
) -> Result<WhisperEncoderConfig, ModelError> {
    let name = match weights {
        Some(dir) => {
            osa_model::weights::read_manifest(dir)
                .map_err(|e| ModelError::Weights(e.to_string()))?
                .preset
        }
        None => preset.to_owned(),
    };
    Preset::by_name(&name)
        .map(|p| p.audio_encoder)
        .ok_or_else(|| ModelError::Weights(format!("unknown preset {name:?}")))
}

/// Floats per encoder position in the hidden states: `(n_layer + 1) * C`.
pub fn stride_of(cfg: &WhisperEncoderConfig) -> usize {
    (cfg.n_hidden() * cfg.n_state) as usize
}

/// Builds a whisper encoder of `cfg` (any `n_ctx`) in a fresh store and
/// fills it from `weights` or with seeded random weights.
pub fn build_encoder(
    cfg: &WhisperEncoderConfig,
    weights: Option<&Path>,
    seed: u64,
    placement: Placement,
) -> Result<(VarStore, WhisperEncoder), ModelError> {
    let mut vs = VarStore::new(placement.device);
    let encoder = WhisperEncoder::new(vs.root() / "encoder", cfg);
    match weights {
        Some(dir) => {
            let path = dir.join("audio_encoder.safetensors");
            let tensors = Tensor::read_safetensors(&path)
                .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
            let mut fitted = Vec::with_capacity(tensors.len());
            for (name, t) in tensors {
                if name == "encoder.positional_embedding" {
                    let rows = t.size().first().copied().unwrap_or(0);
                    if rows < cfg.n_ctx {
                        return Err(ModelError::Weights(format!(
                            "{}: positional_embedding has {rows} rows, the window needs {}",
                            path.display(),
                            cfg.n_ctx
                        )));
                    }
                    fitted.push((name, t.narrow(0, 0, cfg.n_ctx)));
                } else {
                    fitted.push((name, t));
                }
            }
            osa_model::nn::load_tensors(&mut vs, fitted, None)
                .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        }
        None => osa_model::weights::randomize(&vs, seed.wrapping_add(AUDIO_ENCODER_SEED_OFFSET)),
    }
    if placement.kind == Kind::Half {
        vs.half();
    }
    Ok((vs, encoder))
}

/// Log-mel front end plus the windowed encoder.
#[derive(Debug)]
pub struct WindowModel {
    _vs: VarStore,
    encoder: WhisperEncoder,
    log_mel: LogMel,
    plan: WindowPlan,
    stride: usize,
}

impl WindowModel {
    /// Builds the model (on the calling thread, which then owns it).
    pub fn load(cfg: &ModelConfig) -> Result<Self, ModelError> {
        let base = encoder_config(cfg.weights.as_deref(), &cfg.preset)?;
        let n_ctx = cfg.plan.positions() as i64;
        if n_ctx > base.n_ctx {
            return Err(ModelError::Window(format!(
                "a window of {n_ctx} positions exceeds the encoder's {}",
                base.n_ctx
            )));
        }
        let wcfg = WhisperEncoderConfig { n_ctx, ..base };
        let (vs, encoder) = build_encoder(&wcfg, cfg.weights.as_deref(), cfg.seed, cfg.placement)?;
        Ok(Self {
            _vs: vs,
            log_mel: LogMel::new(cfg.placement.device),
            stride: stride_of(&wcfg),
            encoder,
            plan: cfg.plan,
        })
    }

    /// Floats per position of the hidden states.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Hidden width `C`.
    pub fn width(&self) -> usize {
        self.encoder.config().n_state as usize
    }

    /// The window plan.
    pub fn plan(&self) -> WindowPlan {
        self.plan
    }

    /// The normalised, zero-padded encoder input `[80, 2 (L + C + R)]` of
    /// one window.
    pub fn window_mel(&self, job: &WindowJob) -> Result<Tensor, ModelError> {
        let n_frames = 2 * self.plan.positions() as i64;
        let (skip, frames) = (job.skip as i64, job.frames as i64);
        if frames == 0 || frames > n_frames || job.core_offset + job.core_len > job.frames / 2 {
            return Err(ModelError::Window(format!(
                "bad window: {frames} mel frames, core {}+{}",
                job.core_offset, job.core_len
            )));
        }
        let log = self.log_mel.log10_mel(&Tensor::from_slice(&job.span))?;
        if log.size()[1] < skip + frames {
            return Err(ModelError::Window(format!(
                "span of {} samples gives {} mel frames, need {}",
                job.span.len(),
                log.size()[1],
                skip + frames
            )));
        }
        let log = log.narrow(1, skip, frames);
        // Whisper's normalisation against this window's max (LogMel::compute).
        let floor = log.max() - 8.0;
        let mel = (log.maximum(&floor) + 4.0) / 4.0;
        Ok(mel.constant_pad_nd([0, n_frames - frames]))
    }

    /// The core hidden states of each window, `core_len * stride` floats
    /// each, in one forward pass.
    pub fn encode(&self, jobs: &[&WindowJob]) -> Result<Vec<Vec<f32>>, ModelError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = tch::no_grad_guard();
        let mels = jobs.iter().map(|j| self.window_mel(j)).collect::<Result<Vec<_>, _>>()?;
        let states = self
            .encoder
            .hidden_states(&Tensor::stack(&mels, 0))?
            .to_device(Device::Cpu)
            .to_kind(Kind::Float);
        let mut out = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            let core = states
                .get(i as i64)
                .narrow(0, job.core_offset as i64, job.core_len as i64)
                .contiguous()
                .view([-1]);
            out.push(Vec::<f32>::try_from(&core)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("auto").unwrap(), None);
        assert_eq!(parse_device("cuda:1").unwrap(), Some(Device::Cuda(1)));
        assert!(parse_device("gpu").is_err());
    }
}
