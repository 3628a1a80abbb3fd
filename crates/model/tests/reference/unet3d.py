"""Reference for tests/parity_unet3d.rs.

--part face_locator: EchoMimic's FaceLocator (src/models/face_locator.py) in
  plain PyTorch (InflatedConv3d = the same Conv2d per frame), tiny widths.
--part motion_unet: diffusers 0.35.2 UNetMotionModel (AnimateDiff layout) at a
  tiny config with no reference bank and no face features; audio tokens are
  its per-frame encoder_hidden_states [(B*F), S, D].
--part echo: the same UNetMotionModel turned into EchoMimic's denoiser with
  hooks: every spatial BasicTransformerBlock runs EchoMimic's "read" forward
  (mutual_self_attention.py: attn1 over concat(norm1 x, bank), attn2 on the
  audio ×3.0, the CFG unconditional half as plain self-attention), and the
  face-locator features are added to conv_in's output, broadcast over frames.

Differences from diffusers that the scripts patch, and the key mapping:
- diffusers' AnimateDiffTransformer3D applies its GroupNorm to [B, C, F, H, W]
  (statistics over all frames); EchoMimic's motion module normalises each
  frame ((b f) c h w). The reference swaps in a per-frame GroupNorm with the
  same parameters.
- Motion-module keys: diffusers `motion_modules.N.{norm, proj_in, proj_out,
  transformer_blocks.K.{norm1, attn1, norm2, attn2, norm3, ff, pos_embed.pe}}`
  are EchoMimic's `motion_modules.N.temporal_transformer.{norm, proj_in,
  proj_out, transformer_blocks.K.{norms.0, attention_blocks.0, norms.1,
  attention_blocks.1, ff_norm, ff, attention_blocks.{0,1}.pos_encoder.pe}}`
  (the same sinusoid table, stored once per attention block upstream).
  Every other key is identical.
"""
import re
import types

import torch
import torch.nn.functional as F
from diffusers import UNetMotionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D
from torch import nn

import common

FRAMES = 3
BATCH = 2
AUDIO_DIM = 16
AUDIO_TOKENS = 5


class FaceLocator(nn.Module):
    def __init__(self, emb=32, cond=1, chans=(4, 8, 8, 16)):
        super().__init__()
        self.conv_in = nn.Conv2d(cond, chans[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for a, b in zip(chans[:-1], chans[1:]):
            self.blocks.append(nn.Conv2d(a, a, 3, padding=1))
            self.blocks.append(nn.Conv2d(a, b, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(chans[-1], emb, 3, padding=1)

    def forward(self, x):
        x = F.silu(self.conv_in(x))
        for blk in self.blocks:
            x = F.silu(blk(x))
        return self.conv_out(x)


class PerFrameGroupNorm(nn.GroupNorm):
    """EchoMimic's motion-module norm: GroupNorm on each frame of [B, C, F, H, W]."""

    def forward(self, x):
        b, c, f, h, w = x.shape
        y = super().forward(x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))
        return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def tiny_unet():
    unet = UNetMotionModel(
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        down_block_types=("CrossAttnDownBlockMotion", "CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"),
        layers_per_block=2,
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=AUDIO_DIM,
        num_attention_heads=8,
        motion_num_attention_heads=8,
        motion_max_seq_length=32,
        use_motion_mid_block=True,
    )
    for m in unet.modules():
        if isinstance(m, AnimateDiffTransformer3D):
            old = m.norm
            new = PerFrameGroupNorm(old.num_groups, old.num_channels, eps=old.eps, affine=True)
            new.load_state_dict(old.state_dict())
            m.norm = new
    return unet.eval()


MOTION_RENAMES = [("norm1", "norms.0"), ("attn1", "attention_blocks.0"), ("norm2", "norms.1"),
                  ("attn2", "attention_blocks.1"), ("norm3", "ff_norm")]


def echomimic_keys(state):
    out = {}
    for k, v in state.items():
        m = re.match(r"(.*\.motion_modules\.\d+)\.(.*)", k)
        if not m:
            out[k] = v
            continue
        prefix, rest = m.group(1) + ".temporal_transformer", m.group(2)
        pe = re.match(r"(transformer_blocks\.\d+)\.pos_embed\.pe", rest)
        if pe:
            for i in (0, 1):
                out[f"{prefix}.{pe.group(1)}.attention_blocks.{i}.pos_encoder.pe"] = v
            continue
        for a, b in MOTION_RENAMES:
            rest = re.sub(rf"^(transformer_blocks\.\d+)\.{a}\.", rf"\1.{b}.", rest)
        out[f"{prefix}.{rest}"] = v
    return out


def echo_read_forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **_):
    """EchoMimic's hacked_basic_transformer_inner_forward, MODE == "read"."""
    ctl = self._echo
    ctl["order"].append(self._echo_name)
    norm = self.norm1(hidden_states)
    n, hw, c = norm.shape
    bank = ctl["banks"].get(self._echo_name)
    if bank is None:
        bank = torch.randn(ctl["bank_rows"], hw, c, generator=ctl["gen"])
        ctl["banks"][self._echo_name] = bank
    if ctl["cfg"]:
        # Upstream doubles the conditional bank: cat([v, v]).
        bank = torch.cat([bank, bank])
    f = ctl["frames"]
    bank_feas = bank.unsqueeze(1).repeat(1, f, 1, 1).reshape(-1, bank.shape[1], c)
    modify = torch.cat([norm, bank_feas], dim=1)
    h = self.attn1(norm, encoder_hidden_states=modify) + hidden_states
    if ctl["cfg"]:
        uc = torch.tensor([1] * (n // 2) + [0] * (n // 2)).bool()
        hc = h.clone()
        hc[uc] = self.attn1(norm[uc], encoder_hidden_states=norm[uc]) + hidden_states[uc]
        h = hc
    h = self.attn2(self.norm2(h), encoder_hidden_states=encoder_hidden_states) * 3.0 + h
    return self.ff(self.norm3(h)) + h


def make_echo(unet, face):
    ctl = {"order": [], "banks": {}, "gen": torch.Generator().manual_seed(7), "frames": FRAMES, "cfg": False,
           "bank_rows": BATCH, "face": face}
    for name, m in unet.named_modules():
        if isinstance(m, BasicTransformerBlock) and ".attentions." in name:
            m._echo = ctl
            m._echo_name = name
            m.forward = types.MethodType(echo_read_forward, m)

    def add_face(_mod, _inp, out):
        return out + ctl["face"].repeat_interleave(FRAMES, dim=0)

    unet.conv_in.register_forward_hook(add_face)
    return ctl


def inputs(gen, h=8, w=8):
    sample = torch.randn(BATCH, 4, FRAMES, h, w, generator=gen)
    audio = torch.randn(BATCH, FRAMES, AUDIO_TOKENS, AUDIO_DIM, generator=gen)
    return sample, audio


def fold(x):
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def main():
    args = common.parse_args(lambda p: p.add_argument("--part", required=True))
    common.seed_all(0)
    gen = torch.Generator().manual_seed(3)
    if args.part == "face_locator":
        fl = FaceLocator().eval()
        common.randomize_(fl, seed=1, std=0.2)
        mask = (torch.rand(BATCH, 1, 16, 16, generator=gen) > 0.5).float()
        with torch.no_grad():
            out = fl(mask)
        common.save(args, fl.state_dict(), {"mask": mask, "output": out})
        return

    unet = tiny_unet()
    common.randomize_(unet, seed=1, std=0.05)
    weights = echomimic_keys(unet.state_dict())
    sample, audio = inputs(gen)
    audio_folded = audio.reshape(BATCH * FRAMES, AUDIO_TOKENS, AUDIO_DIM)
    if args.part == "motion_unet":
        t = torch.tensor(500)
        with torch.no_grad():
            out = unet(sample, t, encoder_hidden_states=audio_folded).sample
        common.save(args, weights, {"sample": fold(sample), "audio": audio_folded, "timestep": t.float(),
                                    "output": fold(out)})
        return

    assert args.part == "echo"
    face = torch.randn(BATCH, 32, 8, 8, generator=gen) * 0.5
    ctl = make_echo(unet, face)
    t = torch.tensor([999.0, 421.0])
    with torch.no_grad():
        out = unet(sample, t, encoder_hidden_states=audio_folded).sample
    order = list(ctl["order"])
    io = {"sample": fold(sample), "audio": audio, "timestep": t, "face": face, "output": fold(out)}
    for i, name in enumerate(order):
        io[f"bank.{i}"] = ctl["banks"][name]
    # Classifier-free guidance as EchoMimic's pipeline runs it: stream 0 is
    # the unconditional half (zero audio, zero face, plain self-attention),
    # stream 1 the conditional one reading stream 1's bank.
    ctl["order"].clear()
    ctl["cfg"] = True
    ctl["banks"] = {k: v[1:2] for k, v in ctl["banks"].items()}
    ctl["face"] = torch.cat([torch.zeros_like(face[:1]), face[1:]])
    cfg_audio = torch.cat([torch.zeros_like(audio[:1]), audio[1:]])
    with torch.no_grad():
        out_cfg = unet(sample, torch.tensor(999.0),
                       encoder_hidden_states=cfg_audio.reshape(BATCH * FRAMES, AUDIO_TOKENS, AUDIO_DIM)).sample
    io["cfg_output"] = fold(out_cfg)
    common.save(args, weights, io)


if __name__ == "__main__":
    main()
