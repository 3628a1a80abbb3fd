#!/usr/bin/env python
"""Converts EchoMimic v1's public checkpoints into an osa weights directory.

    python scripts/convert_echomimic.py \
        --denoising-unet denoising_unet.pth --motion-module motion_module.pth \
        --reference-unet reference_unet.pth --face-locator face_locator.pth \
        --vae sd-vae-ft-mse/ --whisper audio_processor/whisper_tiny.pt \
        [--mtcnn-data-dir .../facenet_pytorch/data] --preset echomimic --out DIR

Writes DIR/config.json and one safetensors file per component (layout:
crates/model/src/weights.rs). What each input becomes:

- denoising_unet.safetensors: denoising_unet.pth merged with
  motion_module.pth; motion entries override, as EchoMimic's
  `from_pretrained_2d` plus its non-strict `load_state_dict` do.
- reference_unet.safetensors, face_locator.safetensors: the .pth as is.
- vae.safetensors: sd-vae-ft-mse (a folder holding
  diffusion_pytorch_model.safetensors or .bin, or one of those files); the
  legacy mid-block attention names (query/key/value/proj_attn) are written
  under their diffusers names (to_q/to_k/to_v/to_out.0), see
  crates/model/keys/echomimic/vae_legacy_key_map.tsv.
- audio_encoder.safetensors: the `encoder.*` entries of whisper's
  `model_state_dict` (the decoder is not used).
- face_detector.safetensors (optional): facenet-pytorch's pnet/rnet/onet.pt
  under `pnet.*`, `rnet.*`, `onet.*` (the layout of scripts/convert_mtcnn.py).

Pickles are read with `torch.load(weights_only=True)`, which refuses
arbitrary code; `--unsafe-pickle` falls back to a full unpickle for a file
that needs it (only for files you trust). config.json's `source` says which
loader read each file.

Nothing is dropped silently: every tensor found is written (except whisper's
decoder, by design, and counted); checking the keys against the model is
osa's job (`osa_model::convert::validate`). This script is self-contained so
the osa binary can run it from an embedded copy.
"""
import argparse
import json
import os
import pickle
import sys
from collections import OrderedDict

import torch
from safetensors.torch import load_file, save_file

FORMAT = "osa-weights/1"
PRESETS = ("echomimic", "tiny")
LEGACY_VAE = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
MTCNN_NETS = ("pnet", "rnet", "onet")

# How each input was read, for config.json's `source`.
LOADERS = {}


def load_pickle(path, unsafe):
    """torch.load on CPU, weights-only unless the file needs more and
    `unsafe` allows a full unpickle."""
    name = os.path.basename(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        LOADERS[name] = "torch.load weights_only=True"
        return obj
    except pickle.UnpicklingError as e:
        if not unsafe:
            sys.exit(
                f"error: {path}: a weights-only load was refused ({e}).\n"
                "Rerun with --unsafe-pickle only if you trust this file."
            )
    print(f"warning: {name}: full unpickle (--unsafe-pickle)", file=sys.stderr)
    LOADERS[name] = "torch.load weights_only=False (--unsafe-pickle)"
    return torch.load(path, map_location="cpu", weights_only=False)


def tensors_of(obj, what):
    """The name -> tensor dict of a loaded state dict; a value that is not a
    tensor is an error, never skipped."""
    if not isinstance(obj, dict):
        sys.exit(f"error: {what}: expected a state dict, got {type(obj).__name__}")
    out = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            sys.exit(f"error: {what}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out


def read_vae(path, unsafe):
    """sd-vae-ft-mse state dict from a folder or a file, diffusers names."""
    if os.path.isdir(path):
        for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            sys.exit(f"error: {path}: no diffusion_pytorch_model.safetensors or .bin in the VAE folder")
    if path.endswith(".safetensors"):
        state = load_file(path)
        LOADERS[os.path.basename(path)] = "safetensors"
    else:
        state = tensors_of(load_pickle(path, unsafe), path)
    out = OrderedDict()
    renamed = 0
    for key, value in state.items():
        new = legacy_vae_name(key)
        if new is not None:
            renamed += 1
            # Old conversions stored these linear weights as 1x1 convs.
            if value.dim() == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]
            key = new
        if key in out:
            sys.exit(f"error: {path}: {key} is stored under both its legacy and its diffusers name")
        out[key] = value
    return path, out, renamed


def legacy_vae_name(key):
    """The diffusers name of a legacy mid-block attention key, else None."""
    parts = key.split(".")
    n = len(parts)
    if n < 4 or parts[n - 4] != "attentions" or "mid_block" not in parts[: n - 4]:
        return None
    new = LEGACY_VAE.get(parts[n - 2])
    if new is None:
        return None
    return ".".join(parts[: n - 2] + [new, parts[n - 1]])


def read_whisper(path, unsafe):
    """The encoder.* tensors of an openai-whisper checkpoint."""
    obj = load_pickle(path, unsafe)
    if not isinstance(obj, dict) or "model_state_dict" not in obj:
        sys.exit(f"error: {path}: not a whisper checkpoint (no model_state_dict)")
    state = tensors_of(obj["model_state_dict"], f"{path} model_state_dict")
    encoder = OrderedDict((k, v) for k, v in state.items() if k.startswith("encoder."))
    others = [k for k in state if not k.startswith("encoder.")]
    not_decoder = [k for k in others if not k.startswith("decoder.")]
    if not_decoder:
        sys.exit(f"error: {path}: entries neither encoder.* nor decoder.*: {not_decoder[:8]}")
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in encoder.values()})
    extra = sorted(str(k) for k in obj if k not in ("dims", "model_state_dict"))
    if extra:
        print(f"audio_encoder: top-level entries of {os.path.basename(path)} not used: {extra}")
    return encoder, len(others), obj.get("dims"), dtypes


def read_mtcnn(data_dir):
    out = OrderedDict()
    for net in MTCNN_NETS:
        path = os.path.join(data_dir, f"{net}.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)
        LOADERS[f"{net}.pt"] = "torch.load weights_only=True"
        for key, value in tensors_of(state, path).items():
            out[f"{net}.{key}"] = value
    return out


def cast(state, dtype):
    """Tensors in the output dtype (`keep`: the stored one; integer buffers
    as they are), each contiguous and owning its storage as safetensors
    requires. Copies only where needed: the UNets are gigabytes."""
    out = OrderedDict()
    seen = set()
    for key, value in state.items():
        value = value.detach()
        if value.is_floating_point():
            if dtype == "fp32":
                value = value.float()
            elif dtype == "fp16":
                value = value.half()
        value = value.contiguous()
        storage = value.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() != value.numel() * value.element_size():
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    return out


def describe(path):
    """File name and size, never the absolute path."""
    if os.path.isdir(path):
        return f"{os.path.basename(os.path.normpath(path))}/"
    return f"{os.path.basename(path)} ({os.path.getsize(path)} bytes)"


def write(out_dir, file, state, dtype, source):
    state = cast(state, dtype)
    dst = os.path.join(out_dir, file)
    tmp = f"{dst}.tmp{os.getpid()}"
    save_file(state, tmp, metadata={"source": source})
    os.replace(tmp, dst)
    print(f"{file}: {len(state)} tensors")


def main():
    p = argparse.ArgumentParser(prog="convert_echomimic.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--denoising-unet", required=True, help="denoising_unet.pth")
    p.add_argument("--motion-module", required=True, help="motion_module.pth")
    p.add_argument("--reference-unet", required=True, help="reference_unet.pth")
    p.add_argument("--face-locator", required=True, help="face_locator.pth")
    p.add_argument("--vae", required=True, help="sd-vae-ft-mse folder, or its .safetensors/.bin file")
    p.add_argument("--whisper", required=True, help="whisper tiny.pt (dims + model_state_dict)")
    p.add_argument("--mtcnn-data-dir", default=None, help="facenet_pytorch/data (pnet.pt, rnet.pt, onet.pt)")
    p.add_argument("--preset", required=True, choices=PRESETS)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "keep"),
                   help="floating-point dtype written (default fp32; keep: as stored)")
    p.add_argument("--unsafe-pickle", action="store_true",
                   help="allow a full unpickle where a weights-only load is refused")
    p.add_argument("--out", required=True, help="output weights directory")
    a = p.parse_args()

    os.makedirs(a.out, exist_ok=True)
    # A half-converted directory must not look complete: config.json is
    # written last.
    manifest_path = os.path.join(a.out, "config.json")
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    sources = []

    # Small inputs first, so a refused pickle or a wrong file stops the
    # conversion before the multi-GB UNets are read.
    encoder, dropped, dims, dtypes = read_whisper(a.whisper, a.unsafe_pickle)
    write(a.out, "audio_encoder.safetensors", encoder, a.dtype, describe(a.whisper))
    print(f"audio_encoder: {dropped} decoder entries left out; stored {'/'.join(dtypes)}")
    sources.append(f"audio_encoder: {describe(a.whisper)} encoder.* ({'/'.join(dtypes)} stored, "
                   f"{dropped} decoder entries left out; dims {json.dumps(dims, sort_keys=True, default=str)})")
    del encoder

    vae_file, vae, renamed = read_vae(a.vae, a.unsafe_pickle)
    src = describe(vae_file) if os.path.isfile(a.vae) else f"{describe(a.vae)}{describe(vae_file)}"
    write(a.out, "vae.safetensors", vae, a.dtype, src)
    sources.append(f"vae: {src}" + (f" ({renamed} legacy attention names renamed)" if renamed else ""))
    del vae

    detector = os.path.join(a.out, "face_detector.safetensors")
    if a.mtcnn_data_dir:
        write(a.out, "face_detector.safetensors", read_mtcnn(a.mtcnn_data_dir), "fp32",
              "facenet-pytorch data/{pnet,rnet,onet}.pt")
        sources.append("face_detector: facenet-pytorch pnet.pt, rnet.pt, onet.pt")
    elif os.path.exists(detector):
        print("note: face_detector.safetensors already in the output folder: kept as it is")

    for name, path in (("face_locator", a.face_locator), ("reference_unet", a.reference_unet)):
        state = tensors_of(load_pickle(path, a.unsafe_pickle), path)
        write(a.out, f"{name}.safetensors", state, a.dtype, describe(path))
        sources.append(f"{name}: {describe(path)}")
        del state

    denoising = tensors_of(load_pickle(a.denoising_unet, a.unsafe_pickle), a.denoising_unet)
    motion = tensors_of(load_pickle(a.motion_module, a.unsafe_pickle), a.motion_module)
    overridden = [k for k in motion if k in denoising]
    merged = OrderedDict(denoising)
    merged.update(motion)
    del denoising
    src = f"{describe(a.denoising_unet)} + {describe(a.motion_module)}"
    write(a.out, "denoising_unet.safetensors", merged, a.dtype, src)
    if overridden:
        print(f"denoising_unet: {len(overridden)} entries of {os.path.basename(a.denoising_unet)} "
              f"overridden by {os.path.basename(a.motion_module)}, e.g. {overridden[0]}")
    sources.append(f"denoising_unet: {src} ({len(motion)} motion entries, {len(overridden)} overriding)")
    del motion, merged

    loaders = sorted({v for v in LOADERS.values()})
    manifest = {
        "format": FORMAT,
        "preset": a.preset,
        "random": False,
        "source": "EchoMimic v1 checkpoints converted by osa (dtype " + a.dtype + "): "
        + "; ".join(sources) + "; read with " + ", ".join(loaders),
    }
    with open(manifest_path, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"wrote {a.out}/config.json")


if __name__ == "__main__":
    main()
