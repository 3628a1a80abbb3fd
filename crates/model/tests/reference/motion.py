"""Reference for tests/parity_motion.rs: EchoMimic's AnimateDiff "Vanilla"
motion module (src/models/motion_module.py), rewritten in plain PyTorch on
top of diffusers' Attention and FeedForward (the classes EchoMimic uses) so
that it runs without einops. Structure and key names follow upstream:
temporal_transformer.{norm, proj_in, transformer_blocks.N.{attention_blocks.M
(to_q/k/v, to_out.0, pos_encoder.pe), norms.M, ff, ff_norm}, proj_out}."""
import math

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

import common


class PositionalEncoding(nn.Module):
    def __init__(self, d_model, max_len):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(1, max_len, d_model)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x):
        return x + self.pe[:, : x.size(1)]


class TemporalSelfAttention(Attention):
    """VersatileAttention with attention_mode "Temporal", no cross-attention."""

    def __init__(self, dim, heads, max_len):
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False)
        self.pos_encoder = PositionalEncoding(dim, max_len) if max_len else None

    def forward(self, hidden_states, video_length):
        bf, d, c = hidden_states.shape
        b = bf // video_length
        # (b f) d c -> (b d) f c
        x = hidden_states.reshape(b, video_length, d, c).permute(0, 2, 1, 3).reshape(b * d, video_length, c)
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        x = self.processor(self, x)
        # (b d) f c -> (b f) d c
        return x.reshape(b, d, video_length, c).permute(0, 2, 1, 3).reshape(bf, d, c)


class TemporalTransformerBlock(nn.Module):
    def __init__(self, dim, heads, n_attn, max_len):
        super().__init__()
        self.attention_blocks = nn.ModuleList([TemporalSelfAttention(dim, heads, max_len) for _ in range(n_attn)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(n_attn)])
        self.ff = FeedForward(dim, dropout=0.0, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x, video_length):
        for attn, norm in zip(self.attention_blocks, self.norms):
            x = attn(norm(x), video_length=video_length) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    def __init__(self, channels, heads, layers, n_attn, max_len, groups=32):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(channels, heads, n_attn, max_len) for _ in range(layers)]
        )
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x):
        # x: [b, c, f, h, w] as upstream; GroupNorm per frame on (b f) c h w.
        b, c, f, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        residual = x
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b * f, h * w, c)
        t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, video_length=f)
        t = self.proj_out(t).reshape(b * f, h, w, c).permute(0, 3, 1, 2)
        out = t + residual
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


class VanillaTemporalModule(nn.Module):
    def __init__(self, in_channels, num_attention_heads=8, num_transformer_block=1, n_attn=2, max_len=32):
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(
            in_channels, num_attention_heads, num_transformer_block, n_attn, max_len
        )

    def forward(self, x):
        return self.temporal_transformer(x)


def main():
    args = common.parse_args(lambda p: (p.add_argument("--channels", type=int, default=32),
                                        p.add_argument("--frames", type=int, default=5)))
    common.seed_all(0)
    m = VanillaTemporalModule(args.channels).eval()
    common.randomize_(m, seed=1, std=0.2)
    b, f, h, w = 2, args.frames, 4, 3
    x = torch.randn(b, args.channels, f, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = m(x)
    fold = lambda t: t.permute(0, 2, 1, 3, 4).reshape(b * f, args.channels, h, w)
    # state_dict includes the pos_encoder.pe buffers, as motion_module.pth does.
    common.save(args, m.state_dict(), {"input": fold(x), "output": fold(y)})


if __name__ == "__main__":
    main()
