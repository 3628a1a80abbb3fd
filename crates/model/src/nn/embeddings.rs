//! Sinusoidal timestep features and the timestep MLP, as diffusers
//! `models/embeddings.py` (`get_timestep_embedding`, `Timesteps`,
//! `TimestepEmbedding` with SiLU).

use std::borrow::Borrow;

use tch::{Device, Kind, Tensor, nn::Module, nn::Path};

use super::linear;

/// diffusers `get_timestep_embedding` with `scale = 1`, `max_period = 10000`:
/// `t` `[N]` -> `[N, dim]` in f32. Frequencies are
/// `exp(-ln(10000) * i / (dim/2 - freq_shift))`; the output is
/// `[sin, cos]`, or `[cos, sin]` with `flip_sin_to_cos`.
pub fn timestep_embedding(t: &Tensor, dim: i64, flip_sin_to_cos: bool, freq_shift: f64) -> Tensor {
    let half = dim / 2;
    let device: Device = t.device();
    let exponent = Tensor::arange(half, (Kind::Float, device))
        * (-(10000f64.ln()) / (half as f64 - freq_shift));
    let args = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    let (sin, cos) = (args.sin(), args.cos());
    let emb =
        if flip_sin_to_cos { Tensor::cat(&[cos, sin], -1) } else { Tensor::cat(&[sin, cos], -1) };
    if dim % 2 == 1 { emb.constant_pad_nd([0, 1]) } else { emb }
}

/// diffusers `Timesteps` (no parameters).
#[derive(Debug, Clone, PartialEq)]
pub struct Timesteps {
    pub dim: i64,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
}

impl Timesteps {
    pub fn forward(&self, t: &Tensor) -> Tensor {
        timestep_embedding(t, self.dim, self.flip_sin_to_cos, self.freq_shift)
    }
}

/// diffusers `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
#[derive(Debug)]
pub struct TimestepEmbedding {
    pub linear_1: tch::nn::Linear,
    pub linear_2: tch::nn::Linear,
}

impl TimestepEmbedding {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, c_in: i64, c_out: i64) -> Self {
        let vs = vs.borrow();
        Self {
            linear_1: linear(vs / "linear_1", c_in, c_out, true),
            linear_2: linear(vs / "linear_2", c_out, c_out, true),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.linear_2.forward(&self.linear_1.forward(x).silu())
    }
}
