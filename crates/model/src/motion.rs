//! AnimateDiff "Vanilla" motion module as EchoMimic builds it
//! (`src/models/motion_module.py`, adapted from guoyww/AnimateDiff):
//! temporal self-attention over the frames of each pixel.
//!
//! `VanillaTemporalModule` → `temporal_transformer`:
//! GroupNorm (per frame, eps 1e-6) → `proj_in` Linear → transformer blocks
//! → `proj_out` Linear → + input. Each transformer block runs, for every
//! attention block, `x + attn(norm(x) + pe[:F])` (the sinusoidal position
//! encoding is added to the attention input, inside `VersatileAttention`),
//! then `x + ff(ff_norm(x))`. Attention is self-attention over the F frames
//! of one pixel, 8 heads, `to_q/k/v` without bias.
//!
//! Input layout: frames folded into the batch, sample-major (`(b f) c h w`),
//! like every 2D block of the denoiser, plus the frame count. Upstream
//! rearranges `(b f) d c -> (b d) f c` around each attention; the
//! per-token layers (LayerNorm, Linear, FF) do not care about token order,
//! so here the tokens are put in `(b d) f c` order once after the GroupNorm
//! and back once before the residual.

use tch::{Device, Kind, Tensor, nn::Module, nn::Path};

use crate::nn::{
    Attention, AttentionConfig, Error, FeedForward, Result, check_shape, group_norm, layer_norm,
    linear,
};

/// `motion_module_kwargs` of EchoMimic's inference_v2.yaml plus the fixed
/// choices of `TemporalTransformer3DModel`; `Default` at 320 channels.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionModuleConfig {
    pub in_channels: i64,
    pub num_attention_heads: i64,
    pub num_transformer_block: usize,
    /// Number of `Temporal_Self` attention blocks per transformer block.
    pub num_attention_blocks: usize,
    /// Length of the stored sinusoidal table (`pos_encoder.pe` [1, L, C]);
    /// `None` = no position encoding.
    pub temporal_position_encoding_max_len: Option<i64>,
    pub temporal_attention_dim_div: i64,
    pub norm_num_groups: i64,
}

impl Default for MotionModuleConfig {
    fn default() -> Self {
        Self::echomimic(320)
    }
}

impl MotionModuleConfig {
    /// EchoMimic's settings at `channels` width: 8 heads, 1 transformer block
    /// of two temporal self-attentions, position encoding up to 32 frames.
    pub fn echomimic(channels: i64) -> Self {
        Self {
            in_channels: channels,
            num_attention_heads: 8,
            num_transformer_block: 1,
            num_attention_blocks: 2,
            temporal_position_encoding_max_len: Some(32),
            temporal_attention_dim_div: 1,
            norm_num_groups: 32,
        }
    }

    /// Test size: 32 channels (head width 4), same structure.
    pub fn tiny() -> Self {
        Self::echomimic(32)
    }

    fn inner_dim(&self) -> i64 {
        let head_dim =
            self.in_channels / self.num_attention_heads / self.temporal_attention_dim_div;
        head_dim * self.num_attention_heads
    }
}

/// The sinusoidal table of AnimateDiff's `PositionalEncoding`, [1, len, d]:
/// `pe[0, p, 2i] = sin(p * w_i)`, `pe[0, p, 2i+1] = cos(p * w_i)`,
/// `w_i = exp(2i * -ln(10000) / d)`; computed in f32 as upstream does.
pub fn sinusoidal_position_encoding(len: i64, d: i64) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    let position = Tensor::arange(len, opts).unsqueeze(1);
    let div_term = (Tensor::arange_start_step(0, d, 2, opts) * (-(10000f64.ln()) / d as f64)).exp();
    let angles = position * div_term.unsqueeze(0);
    // Interleave: stack [sin, cos] on a trailing axis, then flatten pairs.
    let pe = Tensor::stack(&[angles.sin(), angles.cos()], -1).view([len, -1]);
    pe.narrow(1, 0, d).unsqueeze(0)
}

/// `VersatileAttention` in `Temporal` self mode: `to_q/k/v`, `to_out.0`,
/// `pos_encoder.pe`.
#[derive(Debug)]
struct TemporalAttention {
    attn: Attention,
    pe: Option<Tensor>,
}

impl TemporalAttention {
    fn new(vs: Path<'_>, dim: i64, cfg: &MotionModuleConfig) -> Self {
        let heads = cfg.num_attention_heads;
        let mut acfg = AttentionConfig::unet(dim, None, heads);
        acfg.dim_head = dim / heads;
        // A buffer in the checkpoint (motion_module.pth stores it); filled
        // with the formula so a checkpoint without it still works.
        let pe = cfg.temporal_position_encoding_max_len.map(|len| {
            let mut pe = (&vs / "pos_encoder").zeros_no_train("pe", &[1, len, dim]);
            tch::no_grad(|| pe.copy_(&sinusoidal_position_encoding(len, dim)));
            pe
        });
        let attn = Attention::new(vs, &acfg);
        Self { attn, pe }
    }

    /// `x` [(b d), F, C] -> [(b d), F, C].
    fn forward(&self, x: &Tensor) -> Tensor {
        let x = match &self.pe {
            Some(pe) => x + pe.narrow(1, 0, x.size()[1]),
            None => x.shallow_clone(),
        };
        self.attn.forward(&x, None)
    }
}

/// `TemporalTransformerBlock`: `attention_blocks.*`, `norms.*`, `ff`,
/// `ff_norm`.
#[derive(Debug)]
struct TemporalTransformerBlock {
    attention_blocks: Vec<TemporalAttention>,
    norms: Vec<tch::nn::LayerNorm>,
    ff: FeedForward,
    ff_norm: tch::nn::LayerNorm,
}

impl TemporalTransformerBlock {
    fn new(vs: Path<'_>, dim: i64, cfg: &MotionModuleConfig) -> Self {
        let n = cfg.num_attention_blocks;
        Self {
            attention_blocks: (0..n)
                .map(|i| TemporalAttention::new(&vs / "attention_blocks" / i, dim, cfg))
                .collect(),
            norms: (0..n).map(|i| layer_norm(&vs / "norms" / i, dim, 1e-5)).collect(),
            ff: FeedForward::new(&vs / "ff", dim, 4),
            ff_norm: layer_norm(&vs / "ff_norm", dim, 1e-5),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for (attn, norm) in self.attention_blocks.iter().zip(&self.norms) {
            h = attn.forward(&norm.forward(&h)) + h;
        }
        self.ff.forward(&self.ff_norm.forward(&h)) + h
    }
}

/// `VanillaTemporalModule` (its only child is `temporal_transformer`).
#[derive(Debug)]
pub struct VanillaTemporalModule {
    norm: tch::nn::GroupNorm,
    proj_in: tch::nn::Linear,
    transformer_blocks: Vec<TemporalTransformerBlock>,
    proj_out: tch::nn::Linear,
    cfg: MotionModuleConfig,
}

impl VanillaTemporalModule {
    pub fn new(vs: Path<'_>, cfg: &MotionModuleConfig) -> Self {
        let tt = &vs / "temporal_transformer";
        let (c, inner) = (cfg.in_channels, cfg.inner_dim());
        Self {
            norm: group_norm(&tt / "norm", cfg.norm_num_groups, c, 1e-6),
            proj_in: linear(&tt / "proj_in", c, inner, true),
            transformer_blocks: (0..cfg.num_transformer_block)
                .map(|i| TemporalTransformerBlock::new(&tt / "transformer_blocks" / i, inner, cfg))
                .collect(),
            proj_out: linear(&tt / "proj_out", inner, c, true),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &MotionModuleConfig {
        &self.cfg
    }

    /// `x` [B*F, C, H, W] (frames folded into the batch, sample-major) ->
    /// same shape: `proj_out(blocks(proj_in(norm x))) + x`, attention over
    /// the `frames` frames of each pixel of each sample.
    pub fn forward(&self, x: &Tensor, frames: i64) -> Result<Tensor> {
        check_shape("motion module input", x, &[None, Some(self.cfg.in_channels), None, None])?;
        let s = x.size();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        if frames <= 0 || n % frames != 0 {
            return Err(Error::Shape {
                what: "motion module input".into(),
                expected: format!("a multiple of {frames} frames in dim 0"),
                got: s,
            });
        }
        if let Some(max) = self.cfg.temporal_position_encoding_max_len
            && frames > max
        {
            return Err(Error::Shape {
                what: "motion module frames".into(),
                expected: format!("at most {max} frames (position encoding length)"),
                got: s,
            });
        }
        let b = n / frames;
        // [(b f), C, H, W] -> [b, f, C, HW] -> [b, HW, f, C] -> [(b HW), f, C]
        let tokens = self
            .norm
            .forward(x)
            .view([b, frames, c, h * w])
            .permute([0, 3, 1, 2])
            .reshape([b * h * w, frames, c]);
        let mut t = self.proj_in.forward(&tokens);
        for block in &self.transformer_blocks {
            t = block.forward(&t);
        }
        let out = self
            .proj_out
            .forward(&t)
            .view([b, h * w, frames, c])
            .permute([0, 2, 3, 1])
            .reshape([n, c, h, w]);
        Ok(out + x)
    }
}
