//! `ResnetBlock2D`, `Downsample2D` and `Upsample2D` as in diffusers
//! `models/resnet.py`, `downsampling.py`, `upsampling.py` (default
//! `time_embedding_norm`, SiLU, no dropout at inference).

use std::borrow::Borrow;

use tch::{Tensor, nn::Module, nn::Path};

use super::{conv2d, group_norm};

/// Configuration of a [`ResnetBlock2D`].
#[derive(Debug, Clone, PartialEq)]
pub struct ResnetConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    /// Width of the time embedding; `None` = no `time_emb_proj` (VAE).
    pub temb_channels: Option<i64>,
    pub groups: i64,
    pub eps: f64,
    /// The output is `(shortcut + h) / output_scale_factor`.
    pub output_scale_factor: f64,
}

impl ResnetConfig {
    /// SD UNet defaults: groups 32, eps 1e-5, time embedding 1280.
    pub fn new(in_channels: i64, out_channels: i64) -> Self {
        Self {
            in_channels,
            out_channels,
            temb_channels: Some(1280),
            groups: 32,
            eps: 1e-5,
            output_scale_factor: 1.0,
        }
    }
}

/// diffusers `ResnetBlock2D`: `norm1, silu, conv1, (+ time_emb_proj(silu(t))),
/// norm2, silu, conv2`, plus a 1x1 `conv_shortcut` when the width changes.
#[derive(Debug)]
pub struct ResnetBlock2D {
    pub norm1: tch::nn::GroupNorm,
    pub conv1: tch::nn::Conv2D,
    pub time_emb_proj: Option<tch::nn::Linear>,
    pub norm2: tch::nn::GroupNorm,
    pub conv2: tch::nn::Conv2D,
    pub conv_shortcut: Option<tch::nn::Conv2D>,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &ResnetConfig) -> Self {
        let vs = vs.borrow();
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        Self {
            norm1: group_norm(vs / "norm1", cfg.groups, cin, cfg.eps),
            conv1: conv2d(vs / "conv1", cin, cout, 3, 1, 1),
            time_emb_proj: cfg
                .temb_channels
                .map(|t| super::linear(vs / "time_emb_proj", t, cout, true)),
            norm2: group_norm(vs / "norm2", cfg.groups, cout, cfg.eps),
            conv2: conv2d(vs / "conv2", cout, cout, 3, 1, 1),
            conv_shortcut: (cin != cout).then(|| conv2d(vs / "conv_shortcut", cin, cout, 1, 1, 0)),
            output_scale_factor: cfg.output_scale_factor,
        }
    }

    /// `x` `[N, C_in, H, W]`; `temb` `[B, T]` with `N % B == 0` (rows are
    /// sample-major, so a per-sample embedding is repeated over the frames
    /// folded into the batch), ignored when the block has no
    /// `time_emb_proj`.
    pub fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            let t = proj.forward(&t.silu());
            let n = x.size()[0];
            let b = t.size()[0];
            let t = if b != n && b > 0 && n % b == 0 {
                t.repeat_interleave_self_int(n / b, 0, None)
            } else {
                t
            };
            h += t.unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x.shallow_clone(),
        };
        let out = shortcut + h;
        if self.output_scale_factor == 1.0 { out } else { out / self.output_scale_factor }
    }
}

/// diffusers `Downsample2D` with `use_conv=True`: a 3x3 stride-2 `conv`.
/// With `padding == 0` (the VAE encoder) the input is first padded by one
/// zero row/column on the bottom/right only, as diffusers does.
#[derive(Debug)]
pub struct Downsample2D {
    pub conv: tch::nn::Conv2D,
    pub padding: i64,
}

impl Downsample2D {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, c_in: i64, c_out: i64, padding: i64) -> Self {
        let vs = vs.borrow();
        Self { conv: conv2d(vs / "conv", c_in, c_out, 3, 2, padding), padding }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        if self.padding == 0 {
            self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
        } else {
            self.conv.forward(x)
        }
    }
}

/// diffusers `Upsample2D` with `use_conv=True`: nearest-neighbour resize then
/// a 3x3 `conv`.
#[derive(Debug)]
pub struct Upsample2D {
    pub conv: tch::nn::Conv2D,
}

impl Upsample2D {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, c_in: i64, c_out: i64) -> Self {
        let vs = vs.borrow();
        Self { conv: conv2d(vs / "conv", c_in, c_out, 3, 1, 1) }
    }

    /// Doubles H and W, or resizes to `size` = `[H', W']` (the UNet passes the
    /// skip connection's size so odd sizes line up, like diffusers'
    /// `upsample_size`).
    pub fn forward(&self, x: &Tensor, size: Option<[i64; 2]>) -> Tensor {
        let s = x.size();
        let size = size.unwrap_or([s[2] * 2, s[3] * 2]);
        self.conv.forward(&x.upsample_nearest2d(size, None, None))
    }
}
