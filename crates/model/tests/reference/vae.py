"""Reference for tests/parity_vae.rs: diffusers AutoencoderKL at a tiny
config (2 levels of 32/64 channels, 1 layer per block, 8 groups) with seeded
random weights: posterior mean/logvar of an image, a posterior sample with
given noise, and the decoder output of a random latent.
With --legacy the weights are written under the pre-0.14 attention names
(query/key/value/proj_attn) as in vae_legacy_key_map.tsv."""
import torch
from diffusers import AutoencoderKL

import common

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def legacy_name(key):
    if ".mid_block.attentions." not in key:
        return key
    for new, old in LEGACY.items():
        if f".{new}." in key:
            return key.replace(f".{new}.", f".{old}.")
    return key


def norm_scales_near_one_(module):
    """randomize_ leaves group_norm/conv_norm_out scales near zero; put every
    norm scale near one so attention and output heads see real signal."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and m.weight is not None:
                m.weight.copy_(1.0 + 0.1 * torch.randn(m.weight.shape, generator=g))


def main():
    args = common.parse_args(lambda p: p.add_argument("--legacy", action="store_true"))
    common.seed_all(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()
    common.randomize_(vae, seed=1, std=0.1)
    norm_scales_near_one_(vae)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(2, 3, 32, 24, generator=g) * 2 - 1
    latent = torch.randn(2, 4, 16, 12, generator=g)
    noise = torch.randn(2, 4, 16, 12, generator=g)
    with torch.no_grad():
        dist = vae.encode(image).latent_dist
        decoded = vae.decode(latent).sample
    io = dict(image=image, latent=latent, noise=noise, mean=dist.mean, logvar=dist.logvar,
              sample=dist.mean + dist.std * noise, decoded=decoded)
    sd = vae.state_dict()
    if args.legacy:
        sd = {legacy_name(k): v for k, v in sd.items()}
    common.save(args, sd, io)


if __name__ == "__main__":
    main()
