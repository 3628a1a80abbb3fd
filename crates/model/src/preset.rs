//! Size presets: one config per block, consistent with each other.
//!
//! - `echomimic`: EchoMimic v1's full layout (512x512, 12-frame clips,
//!   SD1.5-sized UNets, sd-vae-ft-mse, whisper-tiny), the one public
//!   checkpoints load into.
//! - `tiny`: the same block types at a few channels, 64x64 pixels and
//!   12-frame clips, so a clip runs on CPU in well under a second: tests and
//!   the embedded default.

use crate::{
    audio::whisper::WhisperEncoderConfig, face_locator::FaceLocatorConfig, unet2d::UNet2DConfig,
    unet3d::UNet3DConfig, vae::VaeConfig,
};

/// Every block's config for one model size.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    /// Output frame width and height in pixels.
    pub width: u32,
    pub height: u32,
    /// Frames per generated clip.
    pub frames: i64,
    pub vae: VaeConfig,
    pub reference_unet: UNet2DConfig,
    pub denoising_unet: UNet3DConfig,
    pub face_locator: FaceLocatorConfig,
    pub audio_encoder: WhisperEncoderConfig,
}

/// Names accepted by [`Preset::by_name`].
pub const PRESET_NAMES: &[&str] = &["tiny", "echomimic", "echomimic-512x896", "echomimic-896x512"];

impl Preset {
    /// EchoMimic v1 at 512x512 (config.md of the design notes).
    pub fn echomimic() -> Self {
        Self::echomimic_sized(512, 512)
    }

    /// EchoMimic v1 at another supported size (512x896 or 896x512 too).
    pub fn echomimic_sized(width: u32, height: u32) -> Self {
        Self {
            name: "echomimic",
            width,
            height,
            frames: 12,
            vae: VaeConfig::default(),
            reference_unet: UNet2DConfig::default(),
            denoising_unet: UNet3DConfig::default(),
            face_locator: FaceLocatorConfig::default(),
            audio_encoder: WhisperEncoderConfig::default(),
        }
    }

    /// The test and embedded-default size.
    pub fn tiny() -> Self {
        let denoising_unet = UNet3DConfig::tiny();
        let ch = denoising_unet.block_out_channels.clone();
        // The reference UNet must write one bank entry per spatial
        // transformer of the denoiser, at the same widths: mirror its
        // levels, attention placement and layer count.
        let up_attention: Vec<bool> = denoising_unet.down_attention.iter().rev().copied().collect();
        let reference_unet = UNet2DConfig {
            block_out_channels: ch.clone(),
            down_block_attention: denoising_unet.down_attention.clone(),
            up_block_attention: up_attention,
            layers_per_block: denoising_unet.layers_per_block,
            attention_heads: denoising_unet.attention_heads,
            norm_num_groups: denoising_unet.norm_num_groups,
            cross_attention_dim: None,
            output_head: false,
            ..UNet2DConfig::default()
        };
        Self {
            name: "tiny",
            width: 64,
            height: 64,
            frames: 12,
            // Four levels (like sd-vae-ft-mse) so latents are 1/8 of the
            // image, as the face locator's three stride-2 convs expect.
            vae: VaeConfig {
                block_out_channels: vec![16, 16, 32, 32],
                layers_per_block: 1,
                norm_num_groups: 8,
                ..VaeConfig::default()
            },
            reference_unet,
            face_locator: FaceLocatorConfig {
                conditioning_embedding_channels: ch[0],
                ..FaceLocatorConfig::tiny()
            },
            audio_encoder: WhisperEncoderConfig {
                n_state: denoising_unet.cross_attention_dim,
                n_head: 2,
                ..WhisperEncoderConfig::default()
            },
            denoising_unet,
        }
    }

    /// One of [`PRESET_NAMES`]. The sized EchoMimic variants share the
    /// weights of `echomimic` (the networks are fully convolutional).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "echomimic" => Some(Self::echomimic()),
            "echomimic-512x896" => Some(Self::echomimic_sized(512, 896)),
            "echomimic-896x512" => Some(Self::echomimic_sized(896, 512)),
            _ => None,
        }
    }

    /// The same networks at another frame size (multiples of 64 keep every
    /// UNet level's size even).
    pub fn sized(self, width: u32, height: u32) -> Self {
        Self { width, height, ..self }
    }

    /// Latent height and width (image size / 8).
    pub fn latent_size(&self) -> (i64, i64) {
        let f = self.vae.downscale();
        (i64::from(self.height) / f, i64::from(self.width) / f)
    }
}
