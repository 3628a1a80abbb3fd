//! EchoMimic's `FaceLocator` (`src/models/face_locator.py`): a small conv
//! net that turns the face-box mask into features added to the denoising
//! UNet's `conv_in` output (config.md section 1.4).
//!
//! All layers are 3x3 convolutions with bias and padding 1, SiLU after
//! `conv_in` and after each of `blocks.*`, none after `conv_out` (which the
//! training code zero-initialises so that the locator starts as a no-op).
//! Upstream wraps them in `InflatedConv3d`, i.e. the same 2D conv per frame;
//! here the frames are folded into the batch by the caller.

use tch::{Tensor, nn::Module, nn::Path};

use crate::nn::{Result, check_shape, conv2d};

/// `FaceLocator` constructor arguments; `Default` is EchoMimic's
/// (`conditioning_embedding_channels=320, conditioning_channels=1,
/// block_out_channels=(16, 32, 96, 256)`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaceLocatorConfig {
    pub conditioning_embedding_channels: i64,
    pub conditioning_channels: i64,
    pub block_out_channels: Vec<i64>,
}

impl Default for FaceLocatorConfig {
    fn default() -> Self {
        Self {
            conditioning_embedding_channels: 320,
            conditioning_channels: 1,
            block_out_channels: vec![16, 32, 96, 256],
        }
    }
}

impl FaceLocatorConfig {
    /// A few-thousand-parameter variant for tests (same /8 downsampling).
    pub fn tiny() -> Self {
        Self {
            conditioning_embedding_channels: 32,
            conditioning_channels: 1,
            block_out_channels: vec![4, 8, 8, 16],
        }
    }

    /// Spatial downsampling factor: one stride-2 conv per channel change.
    pub fn downsample_factor(&self) -> i64 {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

/// The face-mask encoder: keys `conv_in`, `blocks.{0..}`, `conv_out`.
#[derive(Debug)]
pub struct FaceLocator {
    conv_in: tch::nn::Conv2D,
    blocks: Vec<tch::nn::Conv2D>,
    conv_out: tch::nn::Conv2D,
    cfg: FaceLocatorConfig,
}

impl FaceLocator {
    pub fn new(vs: Path<'_>, cfg: &FaceLocatorConfig) -> Self {
        let ch = &cfg.block_out_channels;
        let conv_in = conv2d(&vs / "conv_in", cfg.conditioning_channels, ch[0], 3, 1, 1);
        let blocks_vs = &vs / "blocks";
        let mut blocks = Vec::with_capacity(2 * ch.len().saturating_sub(1));
        for (i, pair) in ch.windows(2).enumerate() {
            // A same-width conv, then a stride-2 conv to the next width.
            blocks.push(conv2d(&blocks_vs / (2 * i), pair[0], pair[0], 3, 1, 1));
            blocks.push(conv2d(&blocks_vs / (2 * i + 1), pair[0], pair[1], 3, 2, 1));
        }
        let last = *ch.last().unwrap_or(&ch[0]);
        let conv_out = conv2d(&vs / "conv_out", last, cfg.conditioning_embedding_channels, 3, 1, 1);
        Self { conv_in, blocks, conv_out, cfg: cfg.clone() }
    }

    /// `mask` [N, conditioning_channels, H, W] (N = batch x frames, folded;
    /// EchoMimic passes one frame per clip, mask/255 in [0, 1]) ->
    /// [N, conditioning_embedding_channels, H/8, W/8].
    pub fn forward(&self, mask: &Tensor) -> Result<Tensor> {
        let f = self.cfg.downsample_factor();
        check_shape("face mask", mask, &[None, Some(self.cfg.conditioning_channels), None, None])?;
        let s = mask.size();
        if s[2] % f != 0 || s[3] % f != 0 {
            return Err(crate::nn::shape_error(
                "face mask",
                format!("H and W multiples of {f}"),
                mask,
            ));
        }
        let _guard = tch::no_grad_guard();
        let mut x = self.conv_in.forward(mask).silu();
        for block in &self.blocks {
            x = block.forward(&x).silu();
        }
        Ok(self.conv_out.forward(&x))
    }
}
