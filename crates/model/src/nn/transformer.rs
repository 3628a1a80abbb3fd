//! diffusers `Transformer2DModel` for continuous inputs with
//! `use_linear_projection = false` (`models/transformers/transformer_2d.py`,
//! EchoMimic `src/models/transformer_2d.py`): GroupNorm (eps 1e-6), 1x1
//! conv `proj_in`, [`BasicTransformerBlock`]s over the H*W tokens, 1x1 conv
//! `proj_out`, residual.

use std::borrow::Borrow;

use tch::{Tensor, nn::Module, nn::Path};

use super::{
    BasicTransformerBlock, RefAttention, Result, TransformerBlockConfig, conv2d, group_norm,
};

/// Configuration of a [`Transformer2DModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct Transformer2DConfig {
    pub channels: i64,
    pub heads: i64,
    /// Number of transformer blocks (1 in SD1.5).
    pub layers: i64,
    pub groups: i64,
    pub cross_attention_dim: Option<i64>,
    pub cross_attention_scale: f64,
}

impl Transformer2DConfig {
    /// SD1.5 layout: one block, 32 groups, cross-attention scale 1.
    pub fn new(channels: i64, heads: i64, cross_attention_dim: Option<i64>) -> Self {
        Self {
            channels,
            heads,
            layers: 1,
            groups: 32,
            cross_attention_dim,
            cross_attention_scale: 1.0,
        }
    }
}

/// Spatial transformer: `norm`, `proj_in`, `transformer_blocks.N`, `proj_out`.
#[derive(Debug)]
pub struct Transformer2DModel {
    pub norm: tch::nn::GroupNorm,
    pub proj_in: tch::nn::Conv2D,
    pub transformer_blocks: Vec<BasicTransformerBlock>,
    pub proj_out: tch::nn::Conv2D,
}

impl Transformer2DModel {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &Transformer2DConfig) -> Self {
        let vs = vs.borrow();
        let c = cfg.channels;
        let block = TransformerBlockConfig {
            cross_attention_scale: cfg.cross_attention_scale,
            ..TransformerBlockConfig::new(c, cfg.heads, cfg.cross_attention_dim)
        };
        let blocks = vs / "transformer_blocks";
        Self {
            norm: group_norm(vs / "norm", cfg.groups, c, 1e-6),
            proj_in: conv2d(vs / "proj_in", c, c, 1, 1, 0),
            transformer_blocks: (0..cfg.layers)
                .map(|i| BasicTransformerBlock::new(&blocks / i, &block))
                .collect(),
            proj_out: conv2d(vs / "proj_out", c, c, 1, 1, 0),
        }
    }

    /// `x` `[N, C, H, W]`; `context` `[N, S, D]` for cross-attention.
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<Tensor> {
        let s = x.size();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let mut t = self.proj_in.forward(&self.norm.forward(x)).permute([0, 2, 3, 1]).reshape([
            n,
            h * w,
            c,
        ]);
        for block in &self.transformer_blocks {
            t = block.forward(&t, context, refattn)?;
        }
        let t = t.reshape([n, h, w, c]).permute([0, 3, 1, 2]).contiguous();
        Ok(self.proj_out.forward(&t) + x)
    }
}
