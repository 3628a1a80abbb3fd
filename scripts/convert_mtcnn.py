#!/usr/bin/env python
"""Converts the pretrained MTCNN weights shipped in the PyPI package
facenet-pytorch (facenet_pytorch/data/{pnet,rnet,onet}.pt, plain state dicts)
into one safetensors file with keys `pnet.*`, `rnet.*`, `onet.*`, the layout
that osa-model's `face::mtcnn::Mtcnn::load` reads with `VarStore::load`.

The package is installed at setup time and never committed; this script runs
at setup or test time:

    python scripts/convert_mtcnn.py --out target/weights/mtcnn.safetensors
"""
import argparse
import os

import torch
from safetensors.torch import save_file

NETS = ("pnet", "rnet", "onet")


def package_data_dir() -> str:
    """The `data/` folder of the installed facenet_pytorch package."""
    import facenet_pytorch

    return os.path.join(os.path.dirname(facenet_pytorch.__file__), "data")


def merged_state_dict(data_dir: str | None = None) -> dict:
    """All three nets' tensors under `<net>.<state dict key>`, float32."""
    data_dir = data_dir or package_data_dir()
    out = {}
    for net in NETS:
        state = torch.load(os.path.join(data_dir, f"{net}.pt"), map_location="cpu", weights_only=True)
        for key, value in state.items():
            out[f"{net}.{key}"] = value.detach().float().contiguous().clone()
    return out


def convert(out_path: str, data_dir: str | None = None) -> None:
    """Writes the merged file atomically (parallel test runs may race)."""
    tensors = merged_state_dict(data_dir)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={"source": "facenet-pytorch data/{pnet,rnet,onet}.pt"})
    os.replace(tmp, out_path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--data-dir", default=None, help="folder holding pnet.pt, rnet.pt, onet.pt (default: the installed package's)")
    args = p.parse_args()
    convert(args.out, args.data_dir)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
