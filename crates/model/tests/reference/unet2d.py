"""Reference for tests/parity_unet2d.rs: diffusers UNet2DConditionModel at a
tiny config (levels 32/64: CrossAttnDownBlock2D + DownBlock2D, UpBlock2D +
CrossAttnUpBlock2D, one layer, 2 heads, context width 16, 8 groups).

--variant stock: the stock net with seeded random weights; its output for a
batch, for an odd-sized sample (upsample_size path), and in EchoMimic's
reference "read" mode (written here after mutual_self_attention.py's
hacked_basic_transformer_inner_forward, audio_feature_ratio 3.0), with and
without classifier-free guidance. The bank it reads comes from the
reference variant below (same seed), and is stored as an input.

--variant reference: EchoMimic's reference UNet: the same net with attn2 and
norm2 removed from every BasicTransformerBlock and no conv_norm_out/conv_out,
so it returns the last up block's output. Forward hooks on each norm1 record
the bank in execution order."""
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

import common

FRAMES = 2
RATIO = 3.0


def build(reference: bool, seed: int):
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=16,
        norm_num_groups=8,
    ).eval()
    if reference:
        for m in unet.modules():
            if isinstance(m, BasicTransformerBlock):
                m.attn2 = None
                m.norm2 = None
        unet.conv_norm_out = None
        unet.conv_out = torch.nn.Identity()
    common.randomize_(unet, seed=seed, std=0.1)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))
    return unet


def blocks(unet):
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


def reference_run(ref_latent):
    """Returns (bank by block name, bank names in execution order, output)."""
    unet = build(reference=True, seed=11)
    order, bank = [], {}
    for name, m in blocks(unet):
        def hook(_mod, _inp, out, name=name):
            order.append(name)
            bank[name] = out.detach().clone()
        m.norm1.register_forward_hook(hook)
    with torch.no_grad():
        out = unet(ref_latent, torch.zeros(()), encoder_hidden_states=None).sample
    return unet, bank, order, out


def read_forward(cfg: bool):
    """EchoMimic's read-mode BasicTransformerBlock forward (layer_norm path)."""
    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, **_kw):
        norm = self.norm1(hidden_states)
        feas = [d.unsqueeze(1).repeat(1, FRAMES, 1, 1).flatten(0, 1) for d in self.bank]
        kv = torch.cat([norm] + feas, dim=1)
        h = self.attn1(norm, encoder_hidden_states=kv) + hidden_states
        if cfg:
            uc = torch.tensor([True] * (h.shape[0] // 2) + [False] * (h.shape[0] // 2))
            hc = h.clone()
            hc[uc] = self.attn1(norm[uc], encoder_hidden_states=norm[uc]) + hidden_states[uc]
            h = hc
        if self.attn2 is not None:
            n2 = self.norm2(h)
            h = self.attn2(n2, encoder_hidden_states=encoder_hidden_states) * RATIO + h
        return self.ff(self.norm3(h)) + h
    return forward


def main():
    args = common.parse_args(lambda p: p.add_argument("--variant", choices=["stock", "reference"], required=True))
    common.seed_all(0)
    g = torch.Generator().manual_seed(5)
    ref_latent = torch.randn(2, 4, 16, 14, generator=g)
    ref, bank, order, ref_out = reference_run(ref_latent)
    io = dict(ref_latent=ref_latent)
    for i, name in enumerate(order):
        io[f"bank_{i}"] = bank[name]
    if args.variant == "reference":
        io["ref_out"] = ref_out
        common.save(args, ref.state_dict(), io)
        return

    unet = build(reference=False, seed=3)
    sample = torch.randn(2, 4, 16, 14, generator=g)
    timestep = torch.tensor([10.0, 500.0])
    context = torch.randn(2, 5, 16, generator=g)
    odd = torch.randn(1, 4, 10, 13, generator=g)
    odd_context = torch.randn(1, 5, 16, generator=g)
    read_sample = torch.randn(2 * FRAMES, 4, 16, 14, generator=g)
    read_context = torch.randn(2 * FRAMES, 5, 16, generator=g)
    with torch.no_grad():
        out = unet(sample, timestep, encoder_hidden_states=context).sample
        out_odd = unet(odd, torch.tensor(250.0), encoder_hidden_states=odd_context).sample
        weights = {k: v.clone() for k, v in unet.state_dict().items()}
        for cfg in (True, False):
            for name, m in blocks(unet):
                # CFG: one reference (row 0) duplicated for both halves, as
                # ReferenceAttentionControl.update does; else one per stream.
                m.bank = [torch.cat([bank[name][:1]] * 2)] if cfg else [bank[name]]
                m.forward = read_forward(cfg).__get__(m, BasicTransformerBlock)
            key = "out_read_cfg" if cfg else "out_read_multi"
            io[key] = unet(read_sample, torch.tensor(700.0), encoder_hidden_states=read_context).sample
    io.update(sample=sample, timestep=timestep, context=context, out=out, odd=odd, odd_context=odd_context,
              out_odd=out_odd, read_sample=read_sample, read_context=read_context)
    common.save(args, weights, io)


if __name__ == "__main__":
    main()
