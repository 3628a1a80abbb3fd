//! The whisper audio encoder (openai-whisper `whisper/model.py`,
//! `AudioEncoder`; EchoMimic bundles the same code in
//! `src/models/whisper/whisper/model.py`), returning the hidden states that
//! EchoMimic uses as audio features.
//!
//! Layout and key names (under the path given to [`WhisperEncoder::new`],
//! `encoder` in the checkpoint): `conv1`, `conv2` (kernel 3, the second with
//! stride 2), `positional_embedding` (a sinusoid buffer `[n_ctx, n_state]`),
//! `blocks.N.{attn_ln, attn.{query, key (no bias), value, out}, mlp_ln,
//! mlp.0, mlp.2}`, `ln_post`.
//!
//! EchoMimic calls the encoder with `include_embeddings=True` and keeps the
//! stack of the input to block 0 (after the convs and the positional
//! embedding) and every block's output; `ln_post` is *not* applied to them.

use tch::{Kind, Tensor, nn, nn::Module};

use super::{AudioError, mel::N_MELS, shape_error};

/// Encoder dimensions (whisper's `ModelDimensions`, audio half).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperEncoderConfig {
    /// Mel bins of the input.
    pub n_mels: i64,
    /// Positions after the stride-2 conv (the input has `2 * n_ctx` frames).
    pub n_ctx: i64,
    /// Hidden width.
    pub n_state: i64,
    /// Attention heads.
    pub n_head: i64,
    /// Residual attention blocks.
    pub n_layer: i64,
}

impl Default for WhisperEncoderConfig {
    /// whisper-tiny, the encoder EchoMimic v1 ships (`whisper_tiny.pt`).
    fn default() -> Self {
        Self { n_mels: N_MELS as i64, n_ctx: 1500, n_state: 384, n_head: 6, n_layer: 4 }
    }
}

impl WhisperEncoderConfig {
    /// A small config for tests: 80 mels (so the real front end feeds it),
    /// 0.4 s pieces, 5 hidden states like whisper-tiny.
    pub fn tiny() -> Self {
        Self { n_mels: N_MELS as i64, n_ctx: 20, n_state: 32, n_head: 4, n_layer: 4 }
    }

    /// Mel frames in one encoder input (3000 = 30 s for whisper-tiny).
    pub fn n_frames(&self) -> i64 {
        2 * self.n_ctx
    }

    /// Hidden states returned per position: the block-0 input plus one per
    /// block.
    pub fn n_hidden(&self) -> i64 {
        self.n_layer + 1
    }
}

/// LayerNorm computed in f32 whatever the weights' kind, like whisper's
/// `LayerNorm` subclass (fp16 statistics over 384 channels lose precision).
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(vs: nn::Path<'_>, dim: i64) -> Self {
        Self {
            weight: vs.var("weight", &[dim], nn::Init::Const(1.0)),
            bias: vs.var("bias", &[dim], nn::Init::Const(0.0)),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let w = self.weight.to_kind(Kind::Float);
        let b = self.bias.to_kind(Kind::Float);
        let dim = *self.weight.size().last().unwrap_or(&1);
        x.to_kind(Kind::Float).layer_norm([dim], Some(&w), Some(&b), 1e-5, true).to_kind(x.kind())
    }
}

/// Whisper's `MultiHeadAttention` used as self-attention (the encoder has
/// no mask and no cross-attention).
#[derive(Debug)]
struct SelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    out: nn::Linear,
    n_head: i64,
}

impl SelfAttention {
    fn new(vs: nn::Path<'_>, n_state: i64, n_head: i64) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            query: nn::linear(&vs / "query", n_state, n_state, Default::default()),
            key: nn::linear(&vs / "key", n_state, n_state, no_bias),
            value: nn::linear(&vs / "value", n_state, n_state, Default::default()),
            out: nn::linear(&vs / "out", n_state, n_state, Default::default()),
            n_head,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, c) = x.size3().expect("[B, T, C] checked by the caller");
        let heads = |y: Tensor| y.view([b, t, self.n_head, c / self.n_head]).transpose(1, 2);
        let q = heads(self.query.forward(x));
        let k = heads(self.key.forward(x));
        let v = heads(self.value.forward(x));
        // Whisper scales q and k by d^-1/4 each: SDPA's default 1/sqrt(d).
        let a = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        self.out.forward(&a.transpose(1, 2).reshape([b, t, c]))
    }
}

/// Whisper's `ResidualAttentionBlock` without cross-attention.
#[derive(Debug)]
struct Block {
    attn: SelfAttention,
    attn_ln: LayerNorm,
    mlp_0: nn::Linear,
    mlp_2: nn::Linear,
    mlp_ln: LayerNorm,
}

impl Block {
    fn new(vs: nn::Path<'_>, n_state: i64, n_head: i64) -> Self {
        let mlp = &vs / "mlp";
        Self {
            attn: SelfAttention::new(&vs / "attn", n_state, n_head),
            attn_ln: LayerNorm::new(&vs / "attn_ln", n_state),
            mlp_0: nn::linear(&mlp / 0, n_state, 4 * n_state, Default::default()),
            mlp_2: nn::linear(&mlp / 2, 4 * n_state, n_state, Default::default()),
            mlp_ln: LayerNorm::new(&vs / "mlp_ln", n_state),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.attn_ln.forward(x));
        let h = self.mlp_0.forward(&self.mlp_ln.forward(&x)).gelu("none");
        &x + self.mlp_2.forward(&h)
    }
}

/// Whisper's sinusoidal position table `[length, channels]` (`sinusoids`
/// in model.py), with the same f32 operations so that a freshly built
/// encoder matches one whose buffer was loaded from a checkpoint.
fn sinusoids(length: i64, channels: i64, device: tch::Device) -> Tensor {
    let half = channels / 2;
    let increment = 10000f64.ln() / (half - 1) as f64;
    let inv = (Tensor::arange(half, (Kind::Int64, device)) * -increment).exp();
    let time = Tensor::arange(length, (Kind::Int64, device)).unsqueeze(1) * inv.unsqueeze(0);
    Tensor::cat(&[time.sin(), time.cos()], 1)
}

/// The whisper audio encoder.
#[derive(Debug)]
pub struct WhisperEncoder {
    conv1: nn::Conv1D,
    conv2: nn::Conv1D,
    positional_embedding: Tensor,
    blocks: Vec<Block>,
    ln_post: LayerNorm,
    cfg: WhisperEncoderConfig,
}

impl WhisperEncoder {
    /// Builds the encoder under `vs`; pass `vs.root() / "encoder"` to get the
    /// checkpoint's `encoder.*` keys.
    pub fn new(vs: nn::Path<'_>, cfg: &WhisperEncoderConfig) -> Self {
        let conv = |stride| nn::ConvConfig { stride, padding: 1, ..Default::default() };
        let conv1 = nn::conv1d(&vs / "conv1", cfg.n_mels, cfg.n_state, 3, conv(1));
        let conv2 = nn::conv1d(&vs / "conv2", cfg.n_state, cfg.n_state, 3, conv(2));
        // A buffer in PyTorch: stored in the checkpoint, never trained.
        let mut positional_embedding =
            vs.zeros_no_train("positional_embedding", &[cfg.n_ctx, cfg.n_state]);
        tch::no_grad(|| {
            positional_embedding.copy_(&sinusoids(cfg.n_ctx, cfg.n_state, vs.device()))
        });
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(&vs / "blocks" / i, cfg.n_state, cfg.n_head))
            .collect();
        let ln_post = LayerNorm::new(&vs / "ln_post", cfg.n_state);
        Self { conv1, conv2, positional_embedding, blocks, ln_post, cfg: cfg.clone() }
    }

    /// The config this encoder was built with.
    pub fn config(&self) -> &WhisperEncoderConfig {
        &self.cfg
    }

    /// The device of the weights.
    pub fn device(&self) -> tch::Device {
        self.positional_embedding.device()
    }

    /// Checks `mel` is `[B, n_mels, 2 * n_ctx]` and casts it to the weights'
    /// device and kind.
    fn input(&self, mel: &Tensor) -> Result<Tensor, AudioError> {
        let c = &self.cfg;
        let expected = format!("[B, {}, {}]", c.n_mels, c.n_frames());
        match mel.size().as_slice() {
            &[b, m, f] if b > 0 && m == c.n_mels && f == c.n_frames() => {}
            _ => return Err(shape_error("whisper encoder mel", expected, mel)),
        }
        Ok(mel.to_device(self.device()).to_kind(self.conv1.ws.kind()))
    }

    /// Conv stem plus positions: the input to block 0, `[B, n_ctx, n_state]`.
    fn stem(&self, mel: &Tensor) -> Tensor {
        let x = self.conv1.forward(mel).gelu("none");
        let x = self.conv2.forward(&x).gelu("none");
        x.permute([0, 2, 1]) + &self.positional_embedding
    }

    /// EchoMimic's encoder features of log-mel pieces `mel`
    /// `[B, n_mels, 2 * n_ctx]`: `[B, n_ctx, n_layer + 1, n_state]`, the
    /// block-0 input followed by each block's output, without `ln_post`.
    pub fn hidden_states(&self, mel: &Tensor) -> Result<Tensor, AudioError> {
        let mel = self.input(mel)?;
        let _guard = tch::no_grad_guard();
        let mut x = self.stem(&mel);
        let mut states = Vec::with_capacity(self.blocks.len() + 1);
        for block in &self.blocks {
            let next = block.forward(&x);
            states.push(x);
            x = next;
        }
        states.push(x);
        Ok(Tensor::stack(&states, 2))
    }

    /// Whisper's own encoder output (`AudioEncoder.forward`: the last
    /// block's output after `ln_post`), `[B, n_ctx, n_state]`. Not used by
    /// EchoMimic; kept so that the whole checkpoint is exercised.
    pub fn forward(&self, mel: &Tensor) -> Result<Tensor, AudioError> {
        let mel = self.input(mel)?;
        let _guard = tch::no_grad_guard();
        let x = self.blocks.iter().fold(self.stem(&mel), |x, b| b.forward(&x));
        Ok(self.ln_post.forward(&x))
    }
}
