//! Building blocks shared by the VAE and the UNets, with diffusers' names and
//! math (diffusers 0.35 `models/resnet.py`, `models/attention.py`,
//! `models/attention_processor.py`, `models/embeddings.py`,
//! `models/transformers/transformer_2d.py`, `models/unets/unet_2d_blocks.py`)
//! plus EchoMimic's reference attention (`src/models/mutual_self_attention.py`).
//!
//! # Conventions
//! - Every block is built as `Block::new(vs, &cfg)` with `vs` a
//!   `tch::nn::Path` or `&Path`; the path segments are the checkpoint key
//!   segments (`resnets.0.norm1.weight`, ...).
//! - Tensors are NCHW. Video callers fold frames into the batch, sample-major:
//!   row `b * F + f` holds frame `f` of sample `b` (einops `(b f)`), so a
//!   GroupNorm over a folded tensor is EchoMimic's "inflated" per-frame norm.
//! - Parameters are created filled with zeros (norm scales with ones): weights
//!   always come from a checkpoint, and zero fills make building the 0.8 B
//!   parameter UNets cheap. Use [`load_safetensors`] or `VarStore::load`.
//! - Blocks do not open a `no_grad` guard themselves; the model-level entry
//!   points (`vae`, `unet2d`, `unet3d`) do.
//!
//! # Reference attention (EchoMimic "write" / "read")
//! The reference UNet runs once per avatar on the reference latent (t = 0) in
//! [`RefAttention::Write`] mode: every [`BasicTransformerBlock`] pushes its
//! `norm1` output `[N, HW, C]` to the bank, in forward order (see
//! `unet2d` for the 16-entry order at SD1.5 sizes). The denoiser runs in
//! [`RefAttention::Read`] mode with the same block layout: each transformer
//! block takes the next bank entry (a cursor inside [`BankReader`]), and its
//! `attn1` attends from `norm1(x)` to `concat([norm1(x), bank_entry], tokens)`.
//! The entry `[B_ref, HW, C]` is repeated per frame (`repeat_interleave` by
//! `frames`), so each stream in a batch can carry its own reference.
//!
//! ```ignore
//! // reference UNet: fill the bank once per avatar
//! let mut bank = Vec::new();
//! ref_unet.forward(&ref_latent, &t0, None, &mut RefAttention::Write(&mut bank))?;
//! // denoiser, B streams x F frames folded into N = B * F rows
//! let mut ra = RefAttention::Read(BankReader::new(&bank, frames));
//! denoiser.forward(.., &mut ra)?;
//! ra.finish()?; // every bank entry was consumed exactly once
//! ```
//!
//! For classifier-free guidance EchoMimic recomputes the unconditional half
//! as plain self-attention: [`BankReader::with_plain_samples`] makes the first
//! `k` samples (`k * frames` rows) ignore the bank, and then the bank holds
//! one row per remaining sample (or a single row shared by all of them).
//!
//! The audio cross-attention (`attn2`) output is multiplied by
//! [`TransformerBlockConfig::cross_attention_scale`] before the residual add:
//! 3.0 in EchoMimic's denoiser (`audio_feature_ratio` in
//! `mutual_self_attention.py`), 1.0 in stock diffusers.

pub mod attention;
pub mod embeddings;
pub mod load;
pub mod resnet;
pub mod transformer;
pub mod unet_blocks;

pub use attention::{
    Attention, AttentionConfig, BasicTransformerBlock, FeedForward, TransformerBlockConfig,
};
pub use embeddings::{TimestepEmbedding, Timesteps, timestep_embedding};
pub use load::{KeyRename, LoadReport, load_safetensors, load_tensors};
pub use resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};
pub use transformer::{Transformer2DConfig, Transformer2DModel};
pub use unet_blocks::{DownBlock2D, MidBlock2DCrossAttn, UNetBlockConfig, UpBlock2D};

use std::borrow::Borrow;

use tch::{
    Tensor,
    nn::{self, Init, Path},
};

/// Errors of the network code: bad input shapes, reference-bank misuse and
/// checkpoint loading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input tensor does not have the shape an entry point expects.
    #[error("{what}: expected {expected}, got shape {got:?}")]
    Shape { what: String, expected: String, got: Vec<i64> },
    /// The reference bank does not fit the blocks reading it.
    #[error("reference bank: {0}")]
    Bank(String),
    /// A module was used in a way its layout does not allow (for example
    /// a UNet up block running out of skip connections).
    #[error("layout: {0}")]
    Layout(String),
    /// A checkpoint does not match the module.
    #[error("loading {path}: {msg}")]
    Load { path: String, msg: String },
    #[error(transparent)]
    Tch(#[from] tch::TchError),
}

/// Result of the network code.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::Shape`].
pub fn shape_error(what: impl Into<String>, expected: impl Into<String>, t: &Tensor) -> Error {
    Error::Shape { what: what.into(), expected: expected.into(), got: t.size() }
}

/// Checks that `t` has rank `dims.len()` and matches `dims` where they are
/// `Some` (`None` = any size).
pub fn check_shape(what: &str, t: &Tensor, dims: &[Option<i64>]) -> Result<()> {
    let size = t.size();
    let ok =
        size.len() == dims.len() && size.iter().zip(dims).all(|(s, d)| d.is_none_or(|d| d == *s));
    if ok {
        Ok(())
    } else {
        let expected = dims
            .iter()
            .map(|d| d.map_or_else(|| "_".to_string(), |d| d.to_string()))
            .collect::<Vec<_>>()
            .join(", ");
        Err(shape_error(what, format!("[{expected}]"), t))
    }
}

/// `k x k` Conv2d with bias (`weight` `[out, in, k, k]`, `bias` `[out]`).
pub fn conv2d<'p>(
    vs: impl Borrow<Path<'p>>,
    c_in: i64,
    c_out: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        stride,
        padding,
        ws_init: Init::Const(0.),
        bs_init: Init::Const(0.),
        ..Default::default()
    };
    nn::conv2d(vs, c_in, c_out, k, cfg)
}

/// Linear layer (`weight` `[out, in]`, optional `bias` `[out]`).
pub fn linear<'p>(vs: impl Borrow<Path<'p>>, c_in: i64, c_out: i64, bias: bool) -> nn::Linear {
    let cfg = nn::LinearConfig {
        ws_init: Init::Const(0.),
        bs_init: bias.then_some(Init::Const(0.)),
        bias,
    };
    nn::linear(vs, c_in, c_out, cfg)
}

/// Affine GroupNorm (`weight`, `bias` `[channels]`).
pub fn group_norm<'p>(
    vs: impl Borrow<Path<'p>>,
    groups: i64,
    channels: i64,
    eps: f64,
) -> nn::GroupNorm {
    let cfg = nn::GroupNormConfig { eps, ..Default::default() };
    nn::group_norm(vs, groups, channels, cfg)
}

/// Affine LayerNorm over the last dimension (`weight`, `bias` `[channels]`).
pub fn layer_norm<'p>(vs: impl Borrow<Path<'p>>, channels: i64, eps: f64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig { eps, ..Default::default() };
    nn::layer_norm(vs, vec![channels], cfg)
}

/// How the transformer blocks of one forward pass take part in EchoMimic's
/// reference attention. Passed as `&mut RefAttention<'_>` down every forward
/// call that can reach a [`BasicTransformerBlock`]; see the module docs.
#[derive(Debug, Default)]
pub enum RefAttention<'a> {
    /// Plain self-attention (stock diffusers).
    #[default]
    Off,
    /// Reference UNet: push each block's `norm1` output `[N, HW, C]`.
    Write(&'a mut Vec<Tensor>),
    /// Denoiser: each block reads the next bank entry.
    Read(BankReader<'a>),
}

impl RefAttention<'_> {
    /// After a forward pass in `Read` mode: errors unless every bank entry
    /// was read (a layout mismatch between writer and reader).
    pub fn finish(&self) -> Result<()> {
        match self {
            RefAttention::Read(r) if r.cursor != r.bank.len() => {
                Err(Error::Bank(format!("{} entries written, {} read", r.bank.len(), r.cursor)))
            }
            _ => Ok(()),
        }
    }
}

/// A reference bank being read by the denoiser, one entry per transformer
/// block in forward order.
#[derive(Debug)]
pub struct BankReader<'a> {
    bank: &'a [Tensor],
    cursor: usize,
    frames: i64,
    plain_samples: i64,
}

impl<'a> BankReader<'a> {
    /// `bank[i]` is `[B_ref, HW_i, C_i]`; the blocks see `N = B * frames`
    /// rows with `B_ref` equal to `B` or 1 (shared by all samples).
    pub fn new(bank: &'a [Tensor], frames: i64) -> Self {
        Self { bank, cursor: 0, frames, plain_samples: 0 }
    }

    /// The first `samples` samples (`samples * frames` rows) use plain
    /// self-attention (EchoMimic's CFG unconditional half); the bank then
    /// covers the remaining `B - samples` samples (or is a single row).
    pub fn with_plain_samples(mut self, samples: i64) -> Self {
        self.plain_samples = samples;
        self
    }

    /// Frames per sample.
    pub fn frames(&self) -> i64 {
        self.frames
    }

    /// Leading samples that ignore the bank.
    pub fn plain_samples(&self) -> i64 {
        self.plain_samples
    }

    /// The next entry, advancing the cursor.
    pub fn next_entry(&mut self) -> Result<&'a Tensor> {
        let entry = self.bank.get(self.cursor).ok_or_else(|| {
            Error::Bank(format!(
                "only {} entries, a block asked for entry {}",
                self.bank.len(),
                self.cursor
            ))
        })?;
        self.cursor += 1;
        Ok(entry)
    }
}
