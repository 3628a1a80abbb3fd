//! Tiny AutoEncoder for Stable Diffusion (TAESD) decoder: a low-latency
//! stand-in for the SD VAE decoder on the same latent space.
//!
//! Layout and key names follow madebyollin/taesd `taesd.py` (`Decoder`):
//! an `nn.Sequential` whose indices are the checkpoint keys
//! (`taesd_decoder.pth` holds `1.weight`, `3.conv.0.weight`, ...; the
//! `TAESD` module's state dict prefixes them with `decoder.`):
//!
//! ```text
//! 0 Clamp (tanh(x/3)*3)   1 conv(4, 64)   2 ReLU
//! 3-5 Block x3   6 Upsample x2   7 conv(64, 64, bias=False)
//! 8-10 Block x3  11 Upsample x2  12 conv(64, 64, bias=False)
//! 13-15 Block x3 16 Upsample x2  17 conv(64, 64, bias=False)
//! 18 Block       19 conv(64, 3)
//! Block: conv.{0,2,4} (3x3, ReLU between), skip = identity, fuse = ReLU
//! ```
//!
//! The input is the UNet-space latent (SD VAE posterior times 0.18215, what
//! the denoiser produces): TAESD was trained on it directly (diffusers'
//! `AutoencoderTiny` has `scaling_factor = 1.0`). The output is RGB in
//! [0, 1] (`decode` clamps; `forward` is the raw network).

use std::borrow::Borrow;

use tch::{Tensor, nn};

use crate::nn::{Result, check_shape};

/// TAESD decoder sizes. `Default` is the public checkpoint's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaesdConfig {
    pub latent_channels: i64,
    /// Width of every hidden layer (64 upstream).
    pub channels: i64,
}

impl Default for TaesdConfig {
    fn default() -> Self {
        Self { latent_channels: 4, channels: 64 }
    }
}

fn conv3<'p>(vs: impl Borrow<nn::Path<'p>>, c_in: i64, c_out: i64, bias: bool) -> nn::Conv2D {
    let cfg = nn::ConvConfig {
        padding: 1,
        bias,
        ws_init: nn::Init::Const(0.),
        bs_init: nn::Init::Const(0.),
        ..Default::default()
    };
    nn::conv2d(vs, c_in, c_out, 3, cfg)
}

/// `Block(n, n)`: `relu(conv(x) + x)`, `conv` = conv-ReLU-conv-ReLU-conv.
#[derive(Debug)]
struct Block {
    convs: [nn::Conv2D; 3],
}

impl Block {
    fn new(vs: &nn::Path<'_>, c: i64) -> Self {
        let p = vs / "conv";
        Self { convs: [0, 2, 4].map(|i| conv3(&p / i, c, c, true)) }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x.apply(&self.convs[0]).relu().apply(&self.convs[1]).relu().apply(&self.convs[2]);
        (h + x).relu()
    }
}

#[derive(Debug)]
enum Layer {
    Clamp,
    Conv(nn::Conv2D),
    Relu,
    Block(Box<Block>),
    Upsample,
}

/// The TAESD decoder. Build it at `vs` = the `decoder` path of a `TAESD`
/// state dict (or the root of a bare `taesd_decoder` one).
#[derive(Debug)]
pub struct TaesdDecoder {
    layers: Vec<Layer>,
    cfg: TaesdConfig,
}

impl TaesdDecoder {
    pub fn new<'p>(vs: impl Borrow<nn::Path<'p>>, cfg: &TaesdConfig) -> Self {
        let vs = vs.borrow();
        let c = cfg.channels;
        let mut layers = vec![
            Layer::Clamp,
            Layer::Conv(conv3(vs / 1, cfg.latent_channels, c, true)),
            Layer::Relu,
        ];
        for _stage in 0..3 {
            for _ in 0..3 {
                let i = layers.len();
                layers.push(Layer::Block(Box::new(Block::new(&(vs / i), c))));
            }
            layers.push(Layer::Upsample);
            let i = layers.len();
            layers.push(Layer::Conv(conv3(vs / i, c, c, false)));
        }
        let i = layers.len();
        layers.push(Layer::Block(Box::new(Block::new(&(vs / i), c))));
        let i = layers.len();
        layers.push(Layer::Conv(conv3(vs / i, c, 3, true)));
        debug_assert_eq!(layers.len(), 20);
        Self { layers, cfg: cfg.clone() }
    }

    pub fn config(&self) -> &TaesdConfig {
        &self.cfg
    }

    /// The raw network: UNet-space latents [N, C, h, w] -> [N, 3, 8h, 8w]
    /// (nominally [0, 1], not clamped).
    pub fn forward(&self, latents: &Tensor) -> Result<Tensor> {
        check_shape("TAESD latent", latents, &[None, Some(self.cfg.latent_channels), None, None])?;
        let _guard = tch::no_grad_guard();
        let mut x = latents.shallow_clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Clamp => (&x / 3.0).tanh() * 3.0,
                Layer::Conv(c) => x.apply(c),
                Layer::Relu => x.relu(),
                Layer::Block(b) => b.forward(&x),
                Layer::Upsample => {
                    let s = x.size();
                    x.upsample_nearest2d([s[2] * 2, s[3] * 2], Some(2.0), Some(2.0))
                }
            };
        }
        Ok(x)
    }

    /// RGB in [0, 1]: `forward` clamped (as taesd's examples do).
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        Ok(self.forward(latents)?.clamp(0.0, 1.0))
    }
}

/// Maps a bare `taesd_decoder` checkpoint key (`3.conv.0.weight`) to the
/// `decoder.`-prefixed name; `None` for keys that already have it.
pub fn bare_key_rename(key: &str) -> Option<String> {
    key.starts_with(|c: char| c.is_ascii_digit()).then(|| format!("decoder.{key}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, nn::VarStore};

    #[test]
    fn key_names_follow_taesd_py() {
        let vs = VarStore::new(Device::Cpu);
        let _d = TaesdDecoder::new(vs.root() / "decoder", &TaesdConfig::default());
        let mut keys: Vec<String> = vs.variables().into_keys().collect();
        keys.sort();
        assert!(keys.contains(&"decoder.1.weight".to_owned()));
        assert!(keys.contains(&"decoder.3.conv.4.bias".to_owned()));
        assert!(keys.contains(&"decoder.7.weight".to_owned()));
        assert!(!keys.contains(&"decoder.7.bias".to_owned()));
        assert!(keys.contains(&"decoder.19.bias".to_owned()));
        // 1 + 10 blocks x 3 convs x 2 + 3 bias-free + 2 = 68 tensors.
        assert_eq!(keys.len(), 2 + 10 * 6 + 3 + 2, "{keys:?}");
        assert_eq!(bare_key_rename("3.conv.0.weight").as_deref(), Some("decoder.3.conv.0.weight"));
        assert_eq!(bare_key_rename("decoder.1.weight"), None);
    }

    #[test]
    fn output_is_eight_times_larger() {
        let vs = VarStore::new(Device::Cpu);
        let d = TaesdDecoder::new(
            vs.root() / "decoder",
            &TaesdConfig { latent_channels: 4, channels: 8 },
        );
        let y = d.decode(&Tensor::zeros([2, 4, 3, 5], (Kind::Float, Device::Cpu))).unwrap();
        assert_eq!(y.size(), [2, 3, 24, 40]);
        assert!(d.decode(&Tensor::zeros([2, 3, 3, 5], (Kind::Float, Device::Cpu))).is_err());
    }
}
