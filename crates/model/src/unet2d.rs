//! The 2D conditional UNet: diffusers `UNet2DConditionModel`
//! (`models/unets/unet_2d_condition.py`) in the SD1.5 layout, and EchoMimic's
//! reference UNet (`src/models/unet_2d_condition.py`) that is the same net
//! without cross-attention (no `attn2`/`norm2`) and without an output head
//! (no `conv_norm_out`/`conv_out`: it returns the last up block's output).
//!
//! The reference UNet runs once per avatar on the reference latent with
//! timestep 0 and no context, in [`RefAttention::Write`] mode
//! ([`UNet2DConditionModel::reference_bank`]). The bank then holds one
//! `norm1` output `[N, H*W, C]` per transformer block, in forward order,
//! which is also the order in which the denoiser (same layout) reads them:
//!
//! | entries | blocks | at 512² (latent 64²) |
//! |---|---|---|
//! | 0, 1 | `down_blocks.0.attentions.0/1` | `[N, 4096, 320]` |
//! | 2, 3 | `down_blocks.1.attentions.0/1` | `[N, 1024, 640]` |
//! | 4, 5 | `down_blocks.2.attentions.0/1` | `[N, 256, 1280]` |
//! | 6 | `mid_block.attentions.0` | `[N, 64, 1280]` |
//! | 7, 8, 9 | `up_blocks.1.attentions.0/1/2` | `[N, 256, 1280]` |
//! | 10, 11, 12 | `up_blocks.2.attentions.0/1/2` | `[N, 1024, 640]` |
//! | 13, 14, 15 | `up_blocks.3.attentions.0/1/2` | `[N, 4096, 320]` |
//!
//! EchoMimic pairs writer and reader blocks by walking both nets in the same
//! (channel-sorted) order, which pairs each block with the block of the same
//! name; pairing by forward order is the same pairing.

use std::borrow::Borrow;

use tch::{
    Kind, Tensor,
    nn::{Module, Path},
};

use crate::nn::{
    DownBlock2D, Error, MidBlock2DCrossAttn, RefAttention, Result, TimestepEmbedding, Timesteps,
    UNetBlockConfig, UpBlock2D, check_shape, conv2d, group_norm, shape_error,
};

/// `UNet2DConditionModel` configuration; `Default` is EchoMimic's reference
/// UNet (SD1.5 layout, no cross-attention, no output head).
#[derive(Debug, Clone, PartialEq)]
pub struct UNet2DConfig {
    pub in_channels: i64,
    /// Channels of `conv_out` (only with `output_head`).
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    /// Per down level: `CrossAttnDownBlock2D` (true) or `DownBlock2D`.
    pub down_block_attention: Vec<bool>,
    /// Per up level (deepest first): `CrossAttnUpBlock2D` or `UpBlock2D`.
    pub up_block_attention: Vec<bool>,
    pub layers_per_block: i64,
    /// Heads of every spatial transformer (diffusers' `attention_head_dim`,
    /// which it reads as a head count).
    pub attention_heads: i64,
    /// `Some(d)`: transformer blocks have `norm2` + `attn2` over a context of
    /// width `d` (stock SD1.5: 768). `None`: EchoMimic's reference UNet.
    pub cross_attention_dim: Option<i64>,
    /// `attn2` output scale (1.0 in diffusers).
    pub cross_attention_scale: f64,
    pub transformer_layers_per_block: i64,
    pub norm_num_groups: i64,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    /// `conv_norm_out` + SiLU + `conv_out` at the end (stock diffusers).
    /// Without it the forward returns the last up block's output.
    pub output_head: bool,
}

impl Default for UNet2DConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_block_attention: vec![true, true, true, false],
            up_block_attention: vec![false, true, true, true],
            layers_per_block: 2,
            attention_heads: 8,
            cross_attention_dim: None,
            cross_attention_scale: 1.0,
            transformer_layers_per_block: 1,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            output_head: false,
        }
    }
}

impl UNet2DConfig {
    /// Stock SD1.5 `UNet2DConditionModel` (cross-attention 768, output head).
    pub fn sd15() -> Self {
        Self { cross_attention_dim: Some(768), output_head: true, ..Self::default() }
    }

    /// Tiny stock UNet for tests: levels of 32/64 channels (cross-attention
    /// down, plain down; plain up, cross-attention up), one layer, 2 heads,
    /// 8 groups, context width 16.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            down_block_attention: vec![true, false],
            up_block_attention: vec![false, true],
            layers_per_block: 1,
            attention_heads: 2,
            cross_attention_dim: Some(16),
            norm_num_groups: 8,
            output_head: true,
            ..Self::default()
        }
    }

    /// [`Self::tiny`] in the reference-UNet form (no cross-attention, no head).
    pub fn tiny_reference() -> Self {
        Self { cross_attention_dim: None, output_head: false, ..Self::tiny() }
    }

    /// Width of the time embedding (4x the first level).
    pub fn time_embed_dim(&self) -> i64 {
        self.block_out_channels[0] * 4
    }

    /// The settings shared by all level blocks.
    pub fn block_config(&self) -> UNetBlockConfig {
        UNetBlockConfig {
            temb_channels: self.time_embed_dim(),
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            heads: self.attention_heads,
            cross_attention_dim: self.cross_attention_dim,
            cross_attention_scale: self.cross_attention_scale,
            transformer_layers: self.transformer_layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
        }
    }

    /// Number of spatial transformer blocks (= reference bank entries).
    pub fn transformer_count(&self) -> usize {
        let per = self.transformer_layers_per_block as usize;
        let down = self.down_block_attention.iter().filter(|a| **a).count()
            * self.layers_per_block as usize;
        let up = self.up_block_attention.iter().filter(|a| **a).count()
            * (self.layers_per_block as usize + 1);
        (down + 1 + up) * per
    }
}

/// SD1.5-layout `UNet2DConditionModel` (stock or EchoMimic reference form).
#[derive(Debug)]
pub struct UNet2DConditionModel {
    pub conv_in: tch::nn::Conv2D,
    pub time_proj: Timesteps,
    pub time_embedding: TimestepEmbedding,
    pub down_blocks: Vec<DownBlock2D>,
    pub mid_block: MidBlock2DCrossAttn,
    pub up_blocks: Vec<UpBlock2D>,
    pub conv_norm_out: Option<tch::nn::GroupNorm>,
    pub conv_out: Option<tch::nn::Conv2D>,
    pub cfg: UNet2DConfig,
}

impl UNet2DConditionModel {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &UNet2DConfig) -> Self {
        let vs = vs.borrow();
        let ch = &cfg.block_out_channels;
        let levels = ch.len();
        let bc = cfg.block_config();
        let down_blocks = (0..levels)
            .map(|i| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                DownBlock2D::new(
                    vs / "down_blocks" / i,
                    c_in,
                    ch[i],
                    cfg.layers_per_block,
                    cfg.down_block_attention[i],
                    i + 1 < levels,
                    &bc,
                )
            })
            .collect();
        let rev: Vec<i64> = ch.iter().rev().copied().collect();
        let up_blocks = (0..levels)
            .map(|i| {
                let c_prev = if i == 0 { rev[0] } else { rev[i - 1] };
                let c_in = rev[(i + 1).min(levels - 1)];
                UpBlock2D::new(
                    vs / "up_blocks" / i,
                    c_in,
                    c_prev,
                    rev[i],
                    cfg.layers_per_block + 1,
                    cfg.up_block_attention[i],
                    i + 1 < levels,
                    &bc,
                )
            })
            .collect();
        let (head_norm, head_conv) = if cfg.output_head {
            (
                Some(group_norm(vs / "conv_norm_out", cfg.norm_num_groups, ch[0], cfg.norm_eps)),
                Some(conv2d(vs / "conv_out", ch[0], cfg.out_channels, 3, 1, 1)),
            )
        } else {
            (None, None)
        };
        Self {
            conv_in: conv2d(vs / "conv_in", cfg.in_channels, ch[0], 3, 1, 1),
            time_proj: Timesteps {
                dim: ch[0],
                flip_sin_to_cos: cfg.flip_sin_to_cos,
                freq_shift: cfg.freq_shift,
            },
            time_embedding: TimestepEmbedding::new(
                vs / "time_embedding",
                ch[0],
                cfg.time_embed_dim(),
            ),
            down_blocks,
            mid_block: MidBlock2DCrossAttn::new(vs / "mid_block", rev[0], &bc),
            up_blocks,
            conv_norm_out: head_norm,
            conv_out: head_conv,
            cfg: cfg.clone(),
        }
    }

    /// Time embedding `[N, 4 * C0]` of `timestep` (0-dim, `[1]` or `[N]`),
    /// in `kind`.
    pub fn time_embed(&self, timestep: &Tensor, n: i64, kind: Kind) -> Result<Tensor> {
        let t = match timestep.size().as_slice() {
            [] | [1] => timestep.reshape([1]).expand([n], false),
            [m] if *m == n => timestep.shallow_clone(),
            _ => return Err(shape_error("timestep", format!("[] or [1] or [{n}]"), timestep)),
        };
        let t_emb = self.time_proj.forward(&t).to_kind(kind);
        Ok(self.time_embedding.forward(&t_emb))
    }

    /// `sample` `[N, in_channels, H, W]`; `timestep` 0-dim, `[1]` or `[N]`;
    /// `context` `[N, S, cross_attention_dim]` when the net has
    /// cross-attention (must be `None` otherwise). Returns the predicted
    /// `[N, out_channels, H, W]` with the output head, else the last up block's
    /// output `[N, C0, H, W]`. `refattn` selects reference write/read.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        context: Option<&Tensor>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<Tensor> {
        check_shape("UNet sample", sample, &[None, Some(self.cfg.in_channels), None, None])?;
        let n = sample.size()[0];
        match (context, self.cfg.cross_attention_dim) {
            (Some(c), Some(d)) => check_shape("UNet context", c, &[Some(n), None, Some(d)])?,
            (None, Some(d)) => {
                return Err(Error::Shape {
                    what: "UNet context".into(),
                    expected: format!("[{n}, S, {d}]"),
                    got: Vec::new(),
                });
            }
            (Some(c), None) => {
                return Err(shape_error("UNet context", "none (no cross-attention)", c));
            }
            (None, None) => {}
        }
        let _guard = tch::no_grad_guard();
        let temb = self.time_embed(timestep, n, sample.kind())?;

        let mut h = self.conv_in.forward(sample);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            let (out, res) = block.forward(&h, &temb, context, refattn)?;
            h = out;
            skips.extend(res);
        }
        h = self.mid_block.forward(&h, &temb, context, refattn)?;
        for block in &self.up_blocks {
            let layers = block.resnets.len();
            let size = match (&block.upsampler, skips.len().checked_sub(layers + 1)) {
                (Some(_), Some(i)) => {
                    let s = skips[i].size();
                    Some([s[2], s[3]])
                }
                _ => None,
            };
            h = block.forward(&h, &mut skips, &temb, context, size, refattn)?;
        }
        if let (Some(norm), Some(conv)) = (&self.conv_norm_out, &self.conv_out) {
            h = conv.forward(&norm.forward(&h).silu());
        }
        Ok(h)
    }

    /// Runs the net in write mode and returns the reference bank (one entry
    /// per transformer block, in the order of the module docs). EchoMimic
    /// calls it with the VAE latent of the reference image (times 0.18215)
    /// and timestep 0.
    pub fn reference_bank(&self, latent: &Tensor, timestep: &Tensor) -> Result<Vec<Tensor>> {
        let mut bank = Vec::with_capacity(self.cfg.transformer_count());
        // The output (the last up block's) is not needed: the bank is.
        let _ = self.forward(latent, timestep, None, &mut RefAttention::Write(&mut bank))?;
        Ok(bank)
    }
}
