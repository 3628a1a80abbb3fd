"""Shared helpers for the parity reference scripts (see tests/common/mod.rs)."""
import argparse
import os

import torch
from safetensors.torch import save_file


def parse_args(extra=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out-dir", required=True)
    p.add_argument("--name", required=True)
    if extra:
        extra(p)
    return p.parse_args()


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)


def randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """Overwrites every parameter (zero-initialised ones included) with seeded
    noise so that no block is a no-op in the comparison. Norm scales stay
    near one."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")) or ".norm" in name and name.endswith(".weight") and p.dim() == 1:
                p.copy_(1.0 + noise)
            else:
                p.copy_(noise)


def save(args, weights: dict, io: dict) -> None:
    """Writes <name>.weights.safetensors and <name>.io.safetensors atomically."""
    os.makedirs(args.out_dir, exist_ok=True)
    for suffix, tensors in (("weights", weights), ("io", io)):
        path = os.path.join(args.out_dir, f"{args.name}.{suffix}.safetensors")
        tmp = path + f".tmp{os.getpid()}"
        save_file({k: v.detach().contiguous().clone().float() if v.is_floating_point() else v.detach().contiguous().clone() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
