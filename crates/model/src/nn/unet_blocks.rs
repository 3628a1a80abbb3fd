//! The SD UNet's level blocks (diffusers `models/unets/unet_2d_blocks.py`):
//! `CrossAttnDownBlock2D` / `DownBlock2D` as [`DownBlock2D`] (with or
//! without `attentions`), `UNetMidBlock2DCrossAttn` as
//! [`MidBlock2DCrossAttn`], `CrossAttnUpBlock2D` / `UpBlock2D` as
//! [`UpBlock2D`]. Fields are public so the video UNet can walk the same
//! layers with motion modules in between.

use std::borrow::Borrow;

use tch::{Tensor, nn::Path};

use super::{
    Downsample2D, RefAttention, ResnetBlock2D, ResnetConfig, Result, Transformer2DConfig,
    Transformer2DModel, Upsample2D,
};

/// Settings shared by every level block of one UNet.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetBlockConfig {
    pub temb_channels: i64,
    pub groups: i64,
    pub eps: f64,
    /// Attention heads of every spatial transformer.
    pub heads: i64,
    pub cross_attention_dim: Option<i64>,
    pub cross_attention_scale: f64,
    pub transformer_layers: i64,
    /// Conv padding of the downsamplers (1 in SD).
    pub downsample_padding: i64,
    /// `output_scale_factor` of the mid block's resnets.
    pub mid_block_scale_factor: f64,
}

impl UNetBlockConfig {
    pub fn resnet(&self, c_in: i64, c_out: i64) -> ResnetConfig {
        ResnetConfig {
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            ..ResnetConfig::new(c_in, c_out)
        }
    }

    pub fn transformer(&self, channels: i64) -> Transformer2DConfig {
        Transformer2DConfig {
            layers: self.transformer_layers,
            groups: self.groups,
            cross_attention_scale: self.cross_attention_scale,
            ..Transformer2DConfig::new(channels, self.heads, self.cross_attention_dim)
        }
    }
}

/// A down level: `resnets.i` (each followed by `attentions.i` when the level
/// has attention) and an optional `downsamplers.0`.
#[derive(Debug)]
pub struct DownBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty for a plain `DownBlock2D`.
    pub attentions: Vec<Transformer2DModel>,
    pub downsampler: Option<Downsample2D>,
}

impl DownBlock2D {
    pub fn new<'p>(
        vs: impl Borrow<Path<'p>>,
        c_in: i64,
        c_out: i64,
        layers: i64,
        attention: bool,
        add_downsample: bool,
        cfg: &UNetBlockConfig,
    ) -> Self {
        let vs = vs.borrow();
        let resnets = (0..layers)
            .map(|i| {
                ResnetBlock2D::new(
                    vs / "resnets" / i,
                    &cfg.resnet(if i == 0 { c_in } else { c_out }, c_out),
                )
            })
            .collect();
        let attentions = if attention {
            (0..layers)
                .map(|i| Transformer2DModel::new(vs / "attentions" / i, &cfg.transformer(c_out)))
                .collect()
        } else {
            Vec::new()
        };
        let downsampler = add_downsample.then(|| {
            Downsample2D::new(vs / "downsamplers" / 0, c_out, c_out, cfg.downsample_padding)
        });
        Self { resnets, attentions, downsampler }
    }

    /// Returns the output and the skip tensors it adds (one per layer plus
    /// one after the downsampler), in push order.
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = x.shallow_clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context, refattn)?;
            }
            skips.push(h.shallow_clone());
        }
        if let Some(down) = &self.downsampler {
            h = down.forward(&h);
            skips.push(h.shallow_clone());
        }
        Ok((h, skips))
    }
}

/// `UNetMidBlock2DCrossAttn` with one layer: `resnets.0`, `attentions.0`,
/// `resnets.1`.
#[derive(Debug)]
pub struct MidBlock2DCrossAttn {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Transformer2DModel>,
}

impl MidBlock2DCrossAttn {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, channels: i64, cfg: &UNetBlockConfig) -> Self {
        let vs = vs.borrow();
        let rc = ResnetConfig {
            output_scale_factor: cfg.mid_block_scale_factor,
            ..cfg.resnet(channels, channels)
        };
        Self {
            resnets: (0..2).map(|i| ResnetBlock2D::new(vs / "resnets" / i, &rc)).collect(),
            attentions: vec![Transformer2DModel::new(
                vs / "attentions" / 0,
                &cfg.transformer(channels),
            )],
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        context: Option<&Tensor>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x, Some(temb));
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = attn.forward(&h, context, refattn)?;
            h = resnet.forward(&h, Some(temb));
        }
        Ok(h)
    }
}

/// An up level: `resnets.i` on `cat([h, skip], channels)` (each followed by
/// `attentions.i` when the level has attention) and an optional
/// `upsamplers.0`.
#[derive(Debug)]
pub struct UpBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    /// Empty for a plain `UpBlock2D`.
    pub attentions: Vec<Transformer2DModel>,
    pub upsampler: Option<Upsample2D>,
}

impl UpBlock2D {
    /// `c_in`: width of the matching down level's input (the last skip);
    /// `c_prev`: width of the incoming hidden state; `layers` is
    /// `layers_per_block + 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn new<'p>(
        vs: impl Borrow<Path<'p>>,
        c_in: i64,
        c_prev: i64,
        c_out: i64,
        layers: i64,
        attention: bool,
        add_upsample: bool,
        cfg: &UNetBlockConfig,
    ) -> Self {
        let vs = vs.borrow();
        let resnets = (0..layers)
            .map(|i| {
                let skip = if i == layers - 1 { c_in } else { c_out };
                let from = if i == 0 { c_prev } else { c_out };
                ResnetBlock2D::new(vs / "resnets" / i, &cfg.resnet(from + skip, c_out))
            })
            .collect();
        let attentions = if attention {
            (0..layers)
                .map(|i| Transformer2DModel::new(vs / "attentions" / i, &cfg.transformer(c_out)))
                .collect()
        } else {
            Vec::new()
        };
        let upsampler = add_upsample.then(|| Upsample2D::new(vs / "upsamplers" / 0, c_out, c_out));
        Self { resnets, attentions, upsampler }
    }

    /// Pops one skip per layer from the end of `skips`; `upsample_size` is
    /// the spatial size of the next skip (None: double).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &mut Vec<Tensor>,
        temb: &Tensor,
        context: Option<&Tensor>,
        upsample_size: Option<[i64; 2]>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| {
                super::Error::Layout("UNet skip connections exhausted".to_string())
            })?;
            h = resnet.forward(&Tensor::cat(&[h, skip], 1), Some(temb));
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, context, refattn)?;
            }
        }
        if let Some(up) = &self.upsampler {
            h = up.forward(&h, upsample_size);
        }
        Ok(h)
    }
}
