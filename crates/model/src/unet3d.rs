//! EchoMimic's denoising UNet, `EchoUNet3DConditionModel`
//! (`src/models/unet_3d_echo.py`, `unet_3d_blocks.py`, `transformer_3d.py`,
//! `mutual_self_attention.py`), at inference: the SD1.5 UNet inflated to
//! video with AnimateDiff motion modules (config.md sections 1.2 and 3).
//!
//! Data flow: `conv_in` → + face-locator features (one per sample,
//! broadcast over its frames) → down levels (resnet → spatial transformer →
//! motion module, per layer) → mid (resnet, transformer, motion module,
//! resnet) → up levels with skips → `conv_norm_out`, SiLU, `conv_out`.
//! In each spatial transformer `attn1` reads the reference bank (EchoMimic
//! "read") and `attn2` attends to the frame's audio tokens, its output ×3.
//!
//! Layout: frames are folded into the batch, sample-major (`(b f) c h w`),
//! for every layer; GroupNorm over a folded tensor is EchoMimic's inflated
//! (per-frame) GroupNorm. Motion modules unfold time internally. The forward
//! has no host round-trips: every shape decision comes from tensor sizes.

use tch::{Kind, Tensor, nn::Module, nn::Path};

use crate::motion::{MotionModuleConfig, VanillaTemporalModule};
use crate::nn::{
    BankReader, DownBlock2D, Error, MidBlock2DCrossAttn, RefAttention, Result, TimestepEmbedding,
    Timesteps, UNetBlockConfig, UpBlock2D, check_shape, conv2d, group_norm, shape_error,
};

/// Effective config of EchoMimic's denoising UNet; `Default` is config.md
/// section 1.2 (SD1.5 base, cross-attention 384 for audio, motion modules
/// everywhere).
#[derive(Debug, Clone, PartialEq)]
pub struct UNet3DConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    /// Per down level: `CrossAttnDownBlock3D` (true) or `DownBlock3D`; up
    /// levels mirror it.
    pub down_attention: Vec<bool>,
    pub layers_per_block: i64,
    /// Heads of every spatial transformer (`attention_head_dim` = 8).
    pub attention_heads: i64,
    /// Width of the audio tokens attn2 attends to.
    pub cross_attention_dim: i64,
    /// attn2's output multiplier (`audio_feature_ratio`, 3.0 in EchoMimic).
    pub audio_scale: f64,
    pub norm_num_groups: i64,
    pub norm_eps: f64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: i64,
    pub mid_block_scale_factor: f64,
    /// Motion modules: `None` = the stage-1 model without them (its keys
    /// match; note that upstream then normalises over all frames together,
    /// while this model always normalises per frame, as the full model does).
    pub motion: Option<MotionConfig>,
}

/// Which levels carry motion modules, and their settings.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionConfig {
    /// A down level `i` has motion modules when `2^i` is listed; up level `i`
    /// when `2^(levels-1-i)` is (EchoMimic: [1, 2, 4, 8] = all).
    pub resolutions: Vec<i64>,
    pub mid_block: bool,
    pub num_attention_heads: i64,
    pub num_transformer_block: usize,
    pub max_len: i64,
}

impl Default for MotionConfig {
    fn default() -> Self {
        Self {
            resolutions: vec![1, 2, 4, 8],
            mid_block: true,
            num_attention_heads: 8,
            num_transformer_block: 1,
            max_len: 32,
        }
    }
}

impl MotionConfig {
    fn module(&self, channels: i64) -> MotionModuleConfig {
        MotionModuleConfig {
            num_attention_heads: self.num_attention_heads,
            num_transformer_block: self.num_transformer_block,
            temporal_position_encoding_max_len: Some(self.max_len),
            ..MotionModuleConfig::echomimic(channels)
        }
    }
}

impl Default for UNet3DConfig {
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280, 1280],
            down_attention: vec![true, true, true, false],
            layers_per_block: 2,
            attention_heads: 8,
            cross_attention_dim: 384,
            audio_scale: 3.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            motion: Some(MotionConfig::default()),
        }
    }
}

impl UNet3DConfig {
    /// Test size: three levels of 32/32/64 channels, the same block types
    /// and layer counts as the real model, audio width 16.
    pub fn tiny() -> Self {
        Self {
            block_out_channels: vec![32, 32, 64],
            down_attention: vec![true, true, false],
            cross_attention_dim: 16,
            motion: Some(MotionConfig { resolutions: vec![1, 2, 4], ..MotionConfig::default() }),
            ..Self::default()
        }
    }

    fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    fn blocks(&self) -> UNetBlockConfig {
        UNetBlockConfig {
            temb_channels: self.block_out_channels[0] * 4,
            groups: self.norm_num_groups,
            eps: self.norm_eps,
            heads: self.attention_heads,
            cross_attention_dim: Some(self.cross_attention_dim),
            cross_attention_scale: self.audio_scale,
            transformer_layers: 1,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
        }
    }

    fn motion_at(&self, resolution: i64) -> bool {
        self.motion.as_ref().is_some_and(|m| m.resolutions.contains(&resolution))
    }
}

/// One forward call's inputs. Frames are folded into the batch,
/// sample-major: row `b * frames + f` is frame `f` of stream `b`.
#[derive(Debug)]
pub struct UNet3DInput<'a> {
    /// Noisy latents [B*F, in_channels, h, w] (see [`fold_frames`] for the
    /// upstream `[B, C, F, h, w]` layout).
    pub sample: &'a Tensor,
    pub frames: i64,
    /// Diffusion timestep: a 0-dim tensor (shared) or one per stream [B].
    pub timestep: &'a Tensor,
    /// Audio tokens per frame: [B, F, S, D] or folded [B*F, S, D]
    /// (EchoMimic: S = 50, D = 384). `None` = zeros (no audio).
    pub audio: Option<&'a Tensor>,
    /// Face-locator features [B, C0, h, w], one per stream, added after
    /// `conv_in` to every frame. `None` = no face conditioning.
    pub face: Option<&'a Tensor>,
    /// Reference bank, one entry per spatial transformer in forward order
    /// (down, mid, up), each [B_ref, HW, C] with B_ref = B (one reference
    /// per stream), B − `plain_samples`, or 1 (shared). `None` = plain
    /// self-attention.
    pub reference: Option<&'a [Tensor]>,
    /// The first `plain_samples` streams ignore the bank (EchoMimic's
    /// classifier-free-guidance unconditional half).
    pub plain_samples: i64,
}

/// `[B, C, F, h, w]` → `[B*F, C, h, w]` (upstream `b c f h w -> (b f) c h w`).
pub fn fold_frames(x: &Tensor) -> Result<Tensor> {
    check_shape("video tensor", x, &[None, None, None, None, None])?;
    let s = x.size();
    Ok(x.permute([0, 2, 1, 3, 4]).reshape([s[0] * s[2], s[1], s[3], s[4]]))
}

/// `[B*F, C, h, w]` → `[B, C, F, h, w]`.
pub fn unfold_frames(x: &Tensor, frames: i64) -> Result<Tensor> {
    check_shape("folded video tensor", x, &[None, None, None, None])?;
    let s = x.size();
    if frames <= 0 || s[0] % frames != 0 {
        return Err(shape_error(
            "folded video tensor",
            format!("batch a multiple of {frames} frames"),
            x,
        ));
    }
    Ok(x.view([s[0] / frames, frames, s[1], s[2], s[3]]).permute([0, 2, 1, 3, 4]))
}

/// A down or up level: the 2D layers plus one motion module per layer.
#[derive(Debug)]
struct Level<B> {
    inner: B,
    motion_modules: Vec<VanillaTemporalModule>,
}

fn motion_modules(
    vs: &Path<'_>,
    n: i64,
    channels: i64,
    on: bool,
    cfg: &UNet3DConfig,
) -> Vec<VanillaTemporalModule> {
    match (&cfg.motion, on) {
        (Some(m), true) => (0..n)
            .map(|i| VanillaTemporalModule::new(vs / "motion_modules" / i, &m.module(channels)))
            .collect(),
        _ => Vec::new(),
    }
}

/// The denoising UNet. Key names are EchoMimic's (`denoising_unet.tsv`).
#[derive(Debug)]
pub struct UNet3DConditionModel {
    conv_in: tch::nn::Conv2D,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<Level<DownBlock2D>>,
    mid_block: Level<MidBlock2DCrossAttn>,
    up_blocks: Vec<Level<UpBlock2D>>,
    conv_norm_out: tch::nn::GroupNorm,
    conv_out: tch::nn::Conv2D,
    cfg: UNet3DConfig,
}

impl UNet3DConditionModel {
    pub fn new(vs: Path<'_>, cfg: &UNet3DConfig) -> Self {
        let ch = &cfg.block_out_channels;
        let levels = cfg.levels();
        let bc = cfg.blocks();
        let lpb = cfg.layers_per_block;
        let down_vs = &vs / "down_blocks";
        let down_blocks = (0..levels)
            .map(|i| {
                let p = &down_vs / i;
                let c_in = if i == 0 { ch[0] } else { ch[i - 1] };
                let last = i + 1 == levels;
                Level {
                    inner: DownBlock2D::new(
                        &p,
                        c_in,
                        ch[i],
                        lpb,
                        cfg.down_attention[i],
                        !last,
                        &bc,
                    ),
                    motion_modules: motion_modules(&p, lpb, ch[i], cfg.motion_at(1 << i), cfg),
                }
            })
            .collect();
        let c_mid = ch[levels - 1];
        let mid_vs = &vs / "mid_block";
        let mid_block = Level {
            inner: MidBlock2DCrossAttn::new(&mid_vs, c_mid, &bc),
            motion_modules: motion_modules(
                &mid_vs,
                1,
                c_mid,
                cfg.motion.as_ref().is_some_and(|m| m.mid_block),
                cfg,
            ),
        };
        let up_vs = &vs / "up_blocks";
        let up_blocks = (0..levels)
            .map(|i| {
                let p = &up_vs / i;
                let rev = levels - 1 - i;
                let c_out = ch[rev];
                let c_prev = if i == 0 { ch[levels - 1] } else { ch[rev + 1] };
                let c_in = ch[rev.saturating_sub(1)];
                let attention = cfg.down_attention[rev];
                let last = i + 1 == levels;
                Level {
                    inner: UpBlock2D::new(&p, c_in, c_prev, c_out, lpb + 1, attention, !last, &bc),
                    motion_modules: motion_modules(
                        &p,
                        lpb + 1,
                        c_out,
                        cfg.motion_at(1 << rev),
                        cfg,
                    ),
                }
            })
            .collect();
        Self {
            conv_in: conv2d(&vs / "conv_in", cfg.in_channels, ch[0], 3, 1, 1),
            time_proj: Timesteps {
                dim: ch[0],
                flip_sin_to_cos: cfg.flip_sin_to_cos,
                freq_shift: cfg.freq_shift,
            },
            time_embedding: TimestepEmbedding::new(&vs / "time_embedding", ch[0], ch[0] * 4),
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: group_norm(
                &vs / "conv_norm_out",
                cfg.norm_num_groups,
                ch[0],
                cfg.norm_eps,
            ),
            conv_out: conv2d(&vs / "conv_out", ch[0], cfg.out_channels, 3, 1, 1),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &UNet3DConfig {
        &self.cfg
    }

    /// Number of spatial transformers, i.e. of reference-bank entries.
    pub fn bank_len(&self) -> usize {
        let down: usize = self.down_blocks.iter().map(|l| l.inner.attentions.len()).sum();
        let up: usize = self.up_blocks.iter().map(|l| l.inner.attentions.len()).sum();
        down + self.mid_block.inner.attentions.len() + up
    }

    /// The model output (v-prediction) [B*F, out_channels, h, w].
    pub fn forward(&self, input: &UNet3DInput<'_>) -> Result<Tensor> {
        let (b, frames) = self.check(input)?;
        let _guard = tch::no_grad_guard();
        let sample = input.sample;
        let s = sample.size();
        let (n, h, w) = (s[0], s[2], s[3]);
        let dtype = sample.kind();

        // Time embedding, one row per stream; resnets repeat it over frames.
        let t = if input.timestep.dim() == 0 {
            input.timestep.expand([b], false)
        } else {
            input.timestep.shallow_clone()
        };
        let temb = self.time_embedding.forward(&self.time_proj.forward(&t).to_kind(dtype));

        // Conditioning inputs follow the latents' kind (no-op when equal).
        let audio = match input.audio {
            Some(a) if a.dim() == 4 => Some(a.flatten(0, 1).to_kind(dtype)),
            Some(a) => Some(a.to_kind(dtype)),
            None => None,
        };
        let audio = match audio {
            Some(a) => a,
            // attn2 always runs upstream; with no audio it sees zero tokens.
            None => Tensor::zeros([n, 1, self.cfg.cross_attention_dim], (dtype, sample.device())),
        };
        let ctx = Some(&audio);

        let mut refattn = match input.reference {
            Some(bank) => RefAttention::Read(
                BankReader::new(bank, frames).with_plain_samples(input.plain_samples),
            ),
            None => RefAttention::Off,
        };

        let mut x = self.conv_in.forward(sample);
        if let Some(face) = input.face {
            let c0 = x.size()[1];
            let face = face.to_kind(dtype).unsqueeze(1);
            x = (x.view([b, frames, c0, h, w]) + face).view([n, c0, h, w]);
        }

        let mut skips = vec![x.shallow_clone()];
        for level in &self.down_blocks {
            let blk = &level.inner;
            for (i, resnet) in blk.resnets.iter().enumerate() {
                x = resnet.forward(&x, Some(&temb));
                if let Some(attn) = blk.attentions.get(i) {
                    x = attn.forward(&x, ctx, &mut refattn)?;
                }
                if let Some(mm) = level.motion_modules.get(i) {
                    x = mm.forward(&x, frames)?;
                }
                skips.push(x.shallow_clone());
            }
            if let Some(down) = &blk.downsampler {
                x = down.forward(&x);
                skips.push(x.shallow_clone());
            }
        }

        let mid = &self.mid_block.inner;
        x = mid.resnets[0].forward(&x, Some(&temb));
        for (i, (attn, resnet)) in mid.attentions.iter().zip(&mid.resnets[1..]).enumerate() {
            x = attn.forward(&x, ctx, &mut refattn)?;
            if let Some(mm) = self.mid_block.motion_modules.get(i) {
                x = mm.forward(&x, frames)?;
            }
            x = resnet.forward(&x, Some(&temb));
        }

        for level in &self.up_blocks {
            let blk = &level.inner;
            for (i, resnet) in blk.resnets.iter().enumerate() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| Error::Layout("UNet skip connections exhausted".into()))?;
                x = resnet.forward(&Tensor::cat(&[&x, &skip], 1), Some(&temb));
                if let Some(attn) = blk.attentions.get(i) {
                    x = attn.forward(&x, ctx, &mut refattn)?;
                }
                if let Some(mm) = level.motion_modules.get(i) {
                    x = mm.forward(&x, frames)?;
                }
            }
            if let Some(up) = &blk.upsampler {
                // Upsample to the next skip's size (odd latent sizes).
                let size = skips.last().map(|t| {
                    let s = t.size();
                    [s[2], s[3]]
                });
                x = up.forward(&x, size);
            }
        }
        refattn.finish()?;

        let x = self.conv_norm_out.forward(&x).silu();
        Ok(self.conv_out.forward(&x))
    }

    /// Entry-point shape checks; returns (streams B, frames F).
    fn check(&self, input: &UNet3DInput<'_>) -> Result<(i64, i64)> {
        let c = &self.cfg;
        check_shape("sample", input.sample, &[None, Some(c.in_channels), None, None])?;
        let s = input.sample.size();
        let (n, h, w) = (s[0], s[2], s[3]);
        let frames = input.frames;
        if frames <= 0 || n % frames != 0 || n == 0 {
            return Err(shape_error("sample", format!("[B*{frames}, C, h, w]"), input.sample));
        }
        let b = n / frames;
        let factor = 1i64 << (c.levels() - 1);
        if h % factor != 0 || w % factor != 0 {
            return Err(shape_error(
                "sample",
                format!("h and w multiples of {factor}"),
                input.sample,
            ));
        }
        match input.timestep.dim() {
            0 => {}
            1 if input.timestep.size()[0] == b => {}
            _ => return Err(shape_error("timestep", format!("[] or [{b}]"), input.timestep)),
        }
        if let Some(a) = input.audio {
            let d = Some(c.cross_attention_dim);
            if a.dim() == 4 {
                check_shape("audio", a, &[Some(b), Some(frames), None, d])?;
            } else {
                check_shape("audio", a, &[Some(n), None, d])?;
            }
        }
        if let Some(f) = input.face {
            check_shape(
                "face features",
                f,
                &[Some(b), Some(c.block_out_channels[0]), Some(h), Some(w)],
            )?;
        }
        if let Some(bank) = input.reference
            && bank.len() != self.bank_len()
        {
            return Err(Error::Bank(format!(
                "{} entries given, the UNet has {} transformers",
                bank.len(),
                self.bank_len()
            )));
        }
        if input.plain_samples < 0 || input.plain_samples > b {
            return Err(Error::Bank(format!(
                "plain_samples {} outside 0..={b}",
                input.plain_samples
            )));
        }
        if input.sample.kind() != Kind::Float
            && input.sample.kind() != Kind::Half
            && input.sample.kind() != Kind::BFloat16
        {
            return Err(shape_error("sample", "a floating-point tensor", input.sample));
        }
        Ok((b, frames))
    }
}
