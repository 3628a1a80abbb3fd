//! diffusers `Attention` (with `AttnProcessor2_0`, i.e. fused scaled dot
//! product attention), the GEGLU `FeedForward`, and `BasicTransformerBlock`
//! with EchoMimic's reference attention and scaled audio cross-attention
//! (`src/models/mutual_self_attention.py`, `hacked_basic_transformer_inner_forward`).

use std::borrow::Borrow;

use tch::{Tensor, nn::Module, nn::Path};

use super::{BankReader, Error, RefAttention, Result, group_norm, layer_norm, linear};

/// Configuration of an [`Attention`] layer.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionConfig {
    pub query_dim: i64,
    /// Width of the key/value input; `None` = `query_dim` (self-attention).
    pub cross_attention_dim: Option<i64>,
    pub heads: i64,
    pub dim_head: i64,
    /// Bias on `to_q`, `to_k`, `to_v` (false in the UNets, true in the VAE).
    pub bias: bool,
    /// `group_norm` on the input (the VAE mid-block attention): (groups, eps).
    pub group_norm: Option<(i64, f64)>,
    /// Spatial form only: add the input back after `to_out`.
    pub residual_connection: bool,
    /// The output is divided by this factor (after the residual add).
    pub rescale_output_factor: f64,
}

impl AttentionConfig {
    /// UNet attention: `heads` heads over `query_dim` channels, no q/k/v bias.
    pub fn unet(query_dim: i64, cross_attention_dim: Option<i64>, heads: i64) -> Self {
        Self {
            query_dim,
            cross_attention_dim,
            heads,
            dim_head: query_dim / heads,
            bias: false,
            group_norm: None,
            residual_connection: false,
            rescale_output_factor: 1.0,
        }
    }

    /// VAE mid-block attention: one head over all channels, biases,
    /// GroupNorm on the input, residual connection.
    pub fn vae(channels: i64, groups: i64, eps: f64) -> Self {
        Self {
            query_dim: channels,
            cross_attention_dim: None,
            heads: 1,
            dim_head: channels,
            bias: true,
            group_norm: Some((groups, eps)),
            residual_connection: true,
            rescale_output_factor: 1.0,
        }
    }
}

/// diffusers `Attention`: `to_q`, `to_k`, `to_v`, `to_out.0`, optional
/// `group_norm`.
#[derive(Debug)]
pub struct Attention {
    pub group_norm: Option<tch::nn::GroupNorm>,
    pub to_q: tch::nn::Linear,
    pub to_k: tch::nn::Linear,
    pub to_v: tch::nn::Linear,
    pub to_out: tch::nn::Linear,
    pub heads: i64,
    pub residual_connection: bool,
    pub rescale_output_factor: f64,
}

impl Attention {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &AttentionConfig) -> Self {
        let vs = vs.borrow();
        let inner = cfg.heads * cfg.dim_head;
        let kv_dim = cfg.cross_attention_dim.unwrap_or(cfg.query_dim);
        Self {
            group_norm: cfg
                .group_norm
                .map(|(g, eps)| group_norm(vs / "group_norm", g, cfg.query_dim, eps)),
            to_q: linear(vs / "to_q", cfg.query_dim, inner, cfg.bias),
            to_k: linear(vs / "to_k", kv_dim, inner, cfg.bias),
            to_v: linear(vs / "to_v", kv_dim, inner, cfg.bias),
            to_out: linear(vs / "to_out" / 0, inner, cfg.query_dim, true),
            heads: cfg.heads,
            residual_connection: cfg.residual_connection,
            rescale_output_factor: cfg.rescale_output_factor,
        }
    }

    /// Width expected for the key/value input.
    pub fn kv_dim(&self) -> i64 {
        self.to_k.ws.size()[1]
    }

    /// Token form: `x` `[N, L, C]`; keys/values from `context` `[N, S, D]`
    /// (cross-attention) or from `x` (self-attention). Returns `[N, L, C]`.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(x);
        self.attend(&self.to_q.forward(x), &self.to_k.forward(ctx), &self.to_v.forward(ctx))
    }

    /// Multi-head SDPA on projected `q` `[N, L, inner]`, `k`, `v` `[N, S, inner]`,
    /// then `to_out.0`. Exposed so callers can build keys/values themselves
    /// (reference attention projects the bank once per sample).
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let split = |t: &Tensor| {
            let s = t.size();
            t.view([s[0], s[1], self.heads, s[2] / self.heads]).transpose(1, 2)
        };
        let out = Tensor::scaled_dot_product_attention(
            &split(q),
            &split(k),
            &split(v),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let s = q.size();
        self.to_out.forward(&out.transpose(1, 2).reshape([s[0], s[1], s[2]]))
    }

    /// Spatial form (the VAE mid block): `x` `[N, C, H, W]` attends over its
    /// H*W positions; `group_norm`, residual and rescale as configured.
    pub fn forward_spatial(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let normed = match &self.group_norm {
            Some(g) => g.forward(x),
            None => x.shallow_clone(),
        };
        let tokens = normed.view([n, c, h * w]).transpose(1, 2);
        let out = self.forward(&tokens, None).transpose(1, 2).reshape([n, c, h, w]);
        let out = if self.residual_connection { out + x } else { out };
        if self.rescale_output_factor == 1.0 { out } else { out / self.rescale_output_factor }
    }
}

/// diffusers `FeedForward` with GEGLU: `net.0.proj` (dim -> 2*inner), gate
/// with exact GELU, `net.2` (inner -> dim).
#[derive(Debug)]
pub struct FeedForward {
    pub proj: tch::nn::Linear,
    pub out: tch::nn::Linear,
}

impl FeedForward {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, dim: i64, mult: i64) -> Self {
        let vs = vs.borrow();
        let inner = dim * mult;
        Self {
            proj: linear(vs / "net" / 0 / "proj", dim, inner * 2, true),
            out: linear(vs / "net" / 2, inner, dim, true),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let p = self.proj.forward(x).chunk(2, -1);
        self.out.forward(&(&p[0] * p[1].gelu("none")))
    }
}

/// Configuration of a [`BasicTransformerBlock`].
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerBlockConfig {
    pub dim: i64,
    pub heads: i64,
    /// `Some(d)`: `norm2` + `attn2` with keys/values of width `d`. `None`:
    /// no cross-attention (EchoMimic's reference UNet).
    pub cross_attention_dim: Option<i64>,
    /// `attn2`'s output is multiplied by this before the residual add
    /// (EchoMimic denoiser: 3.0, stock diffusers: 1.0).
    pub cross_attention_scale: f64,
    pub norm_eps: f64,
}

impl TransformerBlockConfig {
    /// Stock diffusers block: LayerNorm eps 1e-5, cross-attention scale 1.
    pub fn new(dim: i64, heads: i64, cross_attention_dim: Option<i64>) -> Self {
        Self { dim, heads, cross_attention_dim, cross_attention_scale: 1.0, norm_eps: 1e-5 }
    }
}

/// diffusers `BasicTransformerBlock` (layer norms, GEGLU):
/// `x + attn1(norm1 x)`, then `+ scale * attn2(norm2 x, context)` when the
/// block has cross-attention, then `+ ff(norm3 x)`. `attn1` takes part in
/// reference attention as described in the [`super`] module docs.
#[derive(Debug)]
pub struct BasicTransformerBlock {
    pub norm1: tch::nn::LayerNorm,
    pub attn1: Attention,
    pub norm2: Option<tch::nn::LayerNorm>,
    pub attn2: Option<Attention>,
    pub norm3: tch::nn::LayerNorm,
    pub ff: FeedForward,
    pub cross_attention_scale: f64,
}

impl BasicTransformerBlock {
    pub fn new<'p>(vs: impl Borrow<Path<'p>>, cfg: &TransformerBlockConfig) -> Self {
        let vs = vs.borrow();
        let d = cfg.dim;
        let cross = cfg.cross_attention_dim;
        Self {
            norm1: layer_norm(vs / "norm1", d, cfg.norm_eps),
            attn1: Attention::new(vs / "attn1", &AttentionConfig::unet(d, None, cfg.heads)),
            norm2: cross.map(|_| layer_norm(vs / "norm2", d, cfg.norm_eps)),
            attn2: cross.map(|c| {
                Attention::new(vs / "attn2", &AttentionConfig::unet(d, Some(c), cfg.heads))
            }),
            norm3: layer_norm(vs / "norm3", d, cfg.norm_eps),
            ff: FeedForward::new(vs / "ff", d, 4),
            cross_attention_scale: cfg.cross_attention_scale,
        }
    }

    /// `x` `[N, L, C]`; `context` `[N, S, D]` for `attn2` (`None` makes `attn2`
    /// attend to `norm2(x)` itself, as diffusers does; that needs D = C).
    pub fn forward(
        &self,
        x: &Tensor,
        context: Option<&Tensor>,
        refattn: &mut RefAttention<'_>,
    ) -> Result<Tensor> {
        let normed = self.norm1.forward(x);
        let attn = match refattn {
            RefAttention::Off => self.attn1.forward(&normed, None),
            RefAttention::Write(bank) => {
                bank.push(normed.shallow_clone());
                self.attn1.forward(&normed, None)
            }
            RefAttention::Read(reader) => self.reference_attention(&normed, reader)?,
        };
        let mut h = x + attn;
        if let (Some(norm2), Some(attn2)) = (&self.norm2, &self.attn2) {
            let n2 = norm2.forward(&h);
            let ctx = context.unwrap_or(&n2);
            let width = ctx.size().last().copied().unwrap_or(0);
            if ctx.dim() != 3 || ctx.size()[0] != n2.size()[0] || width != attn2.kv_dim() {
                return Err(super::shape_error(
                    "cross-attention context",
                    format!("[{}, S, {}]", n2.size()[0], attn2.kv_dim()),
                    ctx,
                ));
            }
            let a = attn2.forward(&n2, Some(ctx));
            h = if self.cross_attention_scale == 1.0 {
                h + a
            } else {
                h + a * self.cross_attention_scale
            };
        }
        Ok(&h + self.ff.forward(&self.norm3.forward(&h)))
    }

    /// `attn1` with the next bank entry appended to the keys/values of every
    /// referenced row. The entry is projected once per sample and then
    /// repeated over frames (same result as projecting the repeated bank).
    fn reference_attention(&self, normed: &Tensor, reader: &mut BankReader<'_>) -> Result<Tensor> {
        let entry = reader.next_entry()?;
        let s = normed.size();
        let (n, c) = (s[0], s[2]);
        let frames = reader.frames();
        if frames <= 0 || n % frames != 0 {
            return Err(Error::Bank(format!(
                "{n} rows are not a whole number of {frames}-frame samples"
            )));
        }
        let plain = reader.plain_samples() * frames;
        let referenced = (n - plain) / frames;
        let es = entry.size();
        if plain < 0
            || plain > n
            || es.len() != 3
            || es[2] != c
            || !(es[0] == 1 || es[0] == referenced)
        {
            return Err(Error::Bank(format!(
                "entry {es:?} does not fit {n} rows of width {c} ({referenced} referenced samples x {frames} frames)"
            )));
        }
        let a = &self.attn1;
        let (q, k, v) = (a.to_q.forward(normed), a.to_k.forward(normed), a.to_v.forward(normed));
        let mut parts = Vec::with_capacity(2);
        if plain > 0 {
            let r = |t: &Tensor| t.narrow(0, 0, plain);
            parts.push(a.attend(&r(&q), &r(&k), &r(&v)));
        }
        if referenced > 0 {
            let nr = n - plain;
            let rep = |t: Tensor| {
                if es[0] == 1 {
                    t.expand([nr, es[1], t.size()[2]], false)
                } else {
                    t.repeat_interleave_self_int(frames, 0, None)
                }
            };
            let r = |t: &Tensor| t.narrow(0, plain, nr);
            // A bank written in another precision or on another device is
            // cast like EchoMimic's `update(..., dtype)` does (no-op if same).
            let entry = entry.to_device(normed.device()).to_kind(normed.kind());
            let kb = rep(a.to_k.forward(&entry));
            let vb = rep(a.to_v.forward(&entry));
            let k = Tensor::cat(&[r(&k), kb], 1);
            let v = Tensor::cat(&[r(&v), vb], 1);
            parts.push(a.attend(&r(&q), &k, &v));
        }
        Ok(if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 0) })
    }
}
