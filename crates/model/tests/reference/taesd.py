"""Reference for tests/parity_taesd.rs: the TAESD decoder exactly as
madebyollin/taesd's taesd.py builds it (`Decoder`: an nn.Sequential of Clamp,
conv, ReLU, Blocks, Upsample x2, bias-free convs), at the public size
(4 latent channels, 64 wide), with seeded random weights scaled so the
activations keep their size through the ReLUs. Weights are saved under the
bare `taesd_decoder.pth` key names (`1.weight`, `3.conv.0.weight`, ...).
Inputs are large enough that the tanh clamp matters."""
import math

import torch
import torch.nn as nn

import common


def conv(n_in, n_out, **kwargs):
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def Decoder(latent_channels=4):
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    )


def main():
    args = common.parse_args()
    common.seed_all(0)
    dec = Decoder().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in dec.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                fan_in = p[0].numel()
                # He-style scale, halved inside residual blocks so the skip
                # sums do not blow up over ten blocks.
                scale = math.sqrt(2.0 / fan_in) * (0.5 if ".conv." in name else 1.0)
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    latent = torch.randn(2, 4, 8, 6, generator=g) * 3
    with torch.no_grad():
        raw = dec(latent)
    io = dict(latent=latent, raw=raw, decoded=raw.clamp(0, 1))
    common.save(args, dec.state_dict(), io)


if __name__ == "__main__":
    main()
