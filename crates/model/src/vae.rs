//! The SD VAE, diffusers `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`,
//! `models/autoencoders/vae.py` `Encoder`/`Decoder`, `DownEncoderBlock2D`,
//! `UpDecoderBlock2D`, `UNetMidBlock2D` from `unets/unet_2d_blocks.py`),
//! with the sd-vae-ft-mse config EchoMimic uses. Key names follow diffusers
//! (`to_q/to_k/to_v/to_out.0` in the mid-block attentions); the older
//! `query/key/value/proj_attn` spellings load through [`legacy_key_rename`].
//!
//! Images are `[N, 3, H, W]` in -1..1; latents `[N, 4, H/8, W/8]`. EchoMimic
//! encodes the reference with the posterior mean times 0.18215 and decodes
//! `latents / 0.18215` one frame at a time ([`AutoencoderKL::encode_latents`],
//! [`AutoencoderKL::decode_latents`]).

use std::{borrow::Borrow, path::Path as FsPath};

use tch::{
    Tensor,
    nn::{Module, Path, VarStore},
};

use crate::nn::{
    Attention, AttentionConfig, Downsample2D, LoadReport, ResnetBlock2D, ResnetConfig, Result,
    Upsample2D, check_shape, conv2d, group_norm, load_safetensors, shape_error,
};

/// AutoencoderKL configuration; `Default` is sd-vae-ft-mse.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub latent_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub norm_num_groups: i64,
    /// Latent scale used by the pipelines (not applied by encode/decode).
    pub scaling_factor: f64,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            norm_num_groups: 32,
            scaling_factor: 0.18215,
        }
    }
}

impl VaeConfig {
    /// Two levels of 32/64 channels, one layer each, 8 groups (tests).
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 64],
            layers_per_block: 1,
            norm_num_groups: 8,
            ..Self::default()
        }
    }

    /// Spatial reduction between image and latent (8 for sd-vae-ft-mse).
    pub fn downscale(&self) -> i64 {
        1 << (self.block_out_channels.len() - 1)
    }

    fn resnet(&self, c_in: i64, c_out: i64) -> ResnetConfig {
        ResnetConfig {
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: 1e-6,
            ..ResnetConfig::new(c_in, c_out)
        }
    }
}

/// `UNetMidBlock2D` without time embedding: `resnets.0`, `attentions.0`
/// (one head over all channels), `resnets.1`.
#[derive(Debug)]
pub struct MidBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub attentions: Vec<Attention>,
}

impl MidBlock2D {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, channels: i64, cfg: &VaeConfig) -> Self {
        let vs = vs.borrow();
        let rc = cfg.resnet(channels, channels);
        Self {
            resnets: (0..2).map(|i| ResnetBlock2D::new(vs / "resnets" / i, &rc)).collect(),
            attentions: vec![Attention::new(
                vs / "attentions" / 0,
                &AttentionConfig::vae(channels, cfg.norm_num_groups, 1e-6),
            )],
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.resnets[0].forward(x, None);
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            h = resnet.forward(&attn.forward_spatial(&h), None);
        }
        h
    }
}

/// `DownEncoderBlock2D`: resnets, then a stride-2 conv with the asymmetric
/// (bottom/right) zero pad on all but the last level.
#[derive(Debug)]
pub struct DownEncoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub downsampler: Option<Downsample2D>,
}

/// `UpDecoderBlock2D`: `layers_per_block + 1` resnets, then nearest x2 and
/// a conv on all but the last level.
#[derive(Debug)]
pub struct UpDecoderBlock2D {
    pub resnets: Vec<ResnetBlock2D>,
    pub upsampler: Option<Upsample2D>,
}

/// VAE encoder: image -> `2 * latent_channels` moments (before `quant_conv`).
#[derive(Debug)]
pub struct Encoder {
    pub conv_in: tch::nn::Conv2D,
    pub down_blocks: Vec<DownEncoderBlock2D>,
    pub mid_block: MidBlock2D,
    pub conv_norm_out: tch::nn::GroupNorm,
    pub conv_out: tch::nn::Conv2D,
}

impl Encoder {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &VaeConfig) -> Self {
        let vs = vs.borrow();
        let ch = &cfg.block_out_channels;
        let last = *ch.last().expect("block_out_channels is not empty");
        let down_blocks = ch
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let p = vs / "down_blocks" / i;
                DownEncoderBlock2D {
                    resnets: (0..cfg.layers_per_block)
                        .map(|j| {
                            ResnetBlock2D::new(
                                &p / "resnets" / j,
                                &cfg.resnet(if j == 0 { c_in } else { c_out }, c_out),
                            )
                        })
                        .collect(),
                    downsampler: (i + 1 < ch.len())
                        .then(|| Downsample2D::new(&p / "downsamplers" / 0, c_out, c_out, 0)),
                }
            })
            .collect();
        Self {
            conv_in: conv2d(vs / "conv_in", cfg.in_channels, ch[0], 3, 1, 1),
            down_blocks,
            mid_block: MidBlock2D::new(vs / "mid_block", last, cfg),
            conv_norm_out: group_norm(vs / "conv_norm_out", cfg.norm_num_groups, last, 1e-6),
            conv_out: conv2d(vs / "conv_out", last, 2 * cfg.latent_channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for block in &self.down_blocks {
            for r in &block.resnets {
                h = r.forward(&h, None);
            }
            if let Some(d) = &block.downsampler {
                h = d.forward(&h);
            }
        }
        let h = self.mid_block.forward(&h);
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// VAE decoder: latent (after `post_quant_conv`) -> image.
#[derive(Debug)]
pub struct Decoder {
    pub conv_in: tch::nn::Conv2D,
    pub mid_block: MidBlock2D,
    pub up_blocks: Vec<UpDecoderBlock2D>,
    pub conv_norm_out: tch::nn::GroupNorm,
    pub conv_out: tch::nn::Conv2D,
}

impl Decoder {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &VaeConfig) -> Self {
        let vs = vs.borrow();
        let rev: Vec<i64> = cfg.block_out_channels.iter().rev().copied().collect();
        let up_blocks = rev
            .iter()
            .enumerate()
            .map(|(i, &c_out)| {
                let c_in = if i == 0 { rev[0] } else { rev[i - 1] };
                let p = vs / "up_blocks" / i;
                UpDecoderBlock2D {
                    resnets: (0..=cfg.layers_per_block)
                        .map(|j| {
                            ResnetBlock2D::new(
                                &p / "resnets" / j,
                                &cfg.resnet(if j == 0 { c_in } else { c_out }, c_out),
                            )
                        })
                        .collect(),
                    upsampler: (i + 1 < rev.len())
                        .then(|| Upsample2D::new(&p / "upsamplers" / 0, c_out, c_out)),
                }
            })
            .collect();
        let first = cfg.block_out_channels[0];
        Self {
            conv_in: conv2d(vs / "conv_in", cfg.latent_channels, rev[0], 3, 1, 1),
            mid_block: MidBlock2D::new(vs / "mid_block", rev[0], cfg),
            up_blocks,
            conv_norm_out: group_norm(vs / "conv_norm_out", cfg.norm_num_groups, first, 1e-6),
            conv_out: conv2d(vs / "conv_out", first, cfg.out_channels, 3, 1, 1),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid_block.forward(&self.conv_in.forward(z));
        for block in &self.up_blocks {
            for r in &block.resnets {
                h = r.forward(&h, None);
            }
            if let Some(u) = &block.upsampler {
                h = u.forward(&h, None);
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h).silu())
    }
}

/// The VAE posterior: a diagonal Gaussian per latent element.
#[derive(Debug)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    /// Log-variance, clamped to `[-30, 20]` as diffusers does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    pub fn std(&self) -> Tensor {
        (&self.logvar * 0.5).exp()
    }

    /// `mean + std * noise`, with `noise` ~ N(0, 1) of the latent's shape
    /// supplied by the caller (so sampling is reproducible).
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.size() != self.mean.size() {
            return Err(shape_error("posterior noise", format!("{:?}", self.mean.size()), noise));
        }
        Ok(&self.mean + self.std() * noise.to_kind(self.mean.kind()))
    }
}

/// diffusers `AutoencoderKL`: `encoder`, `quant_conv`, `post_quant_conv`,
/// `decoder`.
#[derive(Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quant_conv: tch::nn::Conv2D,
    pub post_quant_conv: tch::nn::Conv2D,
    pub cfg: VaeConfig,
}

impl AutoencoderKL {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &VaeConfig) -> Self {
        let vs = vs.borrow();
        let l = cfg.latent_channels;
        Self {
            encoder: Encoder::new(vs / "encoder", cfg),
            decoder: Decoder::new(vs / "decoder", cfg),
            quant_conv: conv2d(vs / "quant_conv", 2 * l, 2 * l, 1, 1, 0),
            post_quant_conv: conv2d(vs / "post_quant_conv", l, l, 1, 1, 0),
            cfg: cfg.clone(),
        }
    }

    /// The posterior of `image` `[N, C_in, H, W]` (H, W multiples of
    /// [`VaeConfig::downscale`]).
    pub fn encode_dist(&self, image: &Tensor) -> Result<DiagonalGaussian> {
        let f = self.cfg.downscale();
        check_shape("VAE image", image, &[None, Some(self.cfg.in_channels), None, None])?;
        let s = image.size();
        if s[2] % f != 0 || s[3] % f != 0 || s[0] == 0 {
            return Err(shape_error(
                "VAE image",
                format!("[N>0, {}, H, W] with H, W multiples of {f}", s[1]),
                image,
            ));
        }
        let _guard = tch::no_grad_guard();
        let moments = self.quant_conv.forward(&self.encoder.forward(image)).chunk(2, 1);
        Ok(DiagonalGaussian {
            mean: moments[0].shallow_clone(),
            logvar: moments[1].clamp(-30.0, 20.0),
        })
    }

    /// Posterior mean of `image` (what EchoMimic uses for the reference).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.encode_dist(image)?.mean)
    }

    /// `latent` `[N, latent_channels, h, w]` -> image `[N, C_out, h*f, w*f]`.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        check_shape("VAE latent", latent, &[None, Some(self.cfg.latent_channels), None, None])?;
        let _guard = tch::no_grad_guard();
        Ok(self.decoder.forward(&self.post_quant_conv.forward(latent)))
    }

    /// Posterior mean times the scaling factor (the UNets' latent space).
    pub fn encode_latents(&self, image: &Tensor) -> Result<Tensor> {
        Ok(self.encode(image)? * self.cfg.scaling_factor)
    }

    /// Decodes UNet-space latents (divides by the scaling factor first).
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(&(latents / self.cfg.scaling_factor))
    }
}

/// Maps a legacy VAE key (`*.mid_block.attentions.N.{query,key,value,proj_attn}.*`,
/// the spelling of checkpoints written before diffusers 0.14, e.g.
/// sd-vae-ft-mse) to the current name (`to_q`, `to_k`, `to_v`, `to_out.0`);
/// `None` for any other key. See `vae_legacy_key_map.tsv`.
pub fn legacy_key_rename(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let n = parts.len();
    if n < 4 || parts[n - 4] != "attentions" || !parts[..n - 4].contains(&"mid_block") {
        return None;
    }
    let new = match parts[n - 2] {
        "query" => "to_q",
        "key" => "to_k",
        "value" => "to_v",
        "proj_attn" => "to_out.0",
        _ => return None,
    };
    Some([&parts[..n - 2].join("."), new, parts[n - 1]].join("."))
}

/// Loads a VAE safetensors file into `vs` (built with [`AutoencoderKL::new`]
/// on its root), accepting both the current and the legacy attention key
/// names. Every variable must be filled; unused keys are reported.
pub fn load(vs: &mut VarStore, path: &FsPath) -> Result<LoadReport> {
    load_safetensors(vs, path, Some(&legacy_key_rename))
}
