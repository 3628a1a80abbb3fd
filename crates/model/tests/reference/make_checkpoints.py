"""Fixture for tests/convert.rs: fake "public" EchoMimic v1 checkpoints.

Reads a weights directory of seeded random weights written by
`osa_model::weights::init_random` (--seeded DIR, diffusers key names) and
re-saves it the way EchoMimic's release ships it (--out DIR, laid out as its
`pretrained_weights/` folder):

- denoising_unet.pth: the denoising UNet WITHOUT motion-module entries, an
  OrderedDict carrying `_metadata` like `model.state_dict()`;
- motion_module.pth: only the motion-module entries, a plain dict;
- reference_unet.pth, face_locator.pth: state dicts;
- sd-vae-ft-mse/diffusion_pytorch_model.bin: the VAE with the LEGACY
  mid-block attention names (query/key/value/proj_attn);
- audio_processor/whisper_tiny.pt: openai-whisper's layout {"dims": ..., "model_state_dict": ...} in
  fp16 with the encoder plus a few decoder entries.

And a broken set under OUT/broken/:
- denoising_unet.pth with one entry removed (printed as `removed=KEY`), one
  extra entry `extra.weight`, and one motion entry holding 7.0 everywhere
  (motion_module.pth must override it: `overridden=KEY`);
- face_locator.pth with one tensor of the wrong shape (`reshaped=KEY`);
- tiny_unsafe.pt: whisper_tiny.pt plus a `datetime.date`, which a weights-only
  load refuses.
It also prints `facenet_data=DIR`, facenet-pytorch's pnet/rnet/onet folder.
"""
import argparse
import datetime
import os
from collections import OrderedDict

import torch
from safetensors.torch import load_file

LEGACY = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def state_dict_like(tensors):
    """An OrderedDict with the `_metadata` attribute nn.Module.state_dict
    attaches (EchoMimic saved `model.state_dict()`)."""
    out = OrderedDict(tensors)
    out._metadata = OrderedDict({"": {"version": 1}})
    return out


def legacy_vae(tensors):
    out = OrderedDict()
    for key, value in tensors.items():
        if ".mid_block.attentions." in key:
            for new, old in LEGACY.items():
                marker = f".{new}."
                if marker in key:
                    key = key.replace(marker, f".{old}.")
                    break
        out[key] = value
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeded", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    seeded = {n: load_file(os.path.join(a.seeded, f"{n}.safetensors"))
              for n in ("vae", "reference_unet", "denoising_unet", "face_locator", "audio_encoder")}
    os.makedirs(os.path.join(a.out, "sd-vae-ft-mse"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "broken"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "audio_processor"), exist_ok=True)

    den = seeded["denoising_unet"]
    is_motion = lambda k: ".motion_modules." in k  # noqa: E731
    plain = OrderedDict((k, v) for k, v in sorted(den.items()) if not is_motion(k))
    motion = {k: v for k, v in sorted(den.items()) if is_motion(k)}
    assert plain and motion
    torch.save(state_dict_like(plain), os.path.join(a.out, "denoising_unet.pth"))
    torch.save(motion, os.path.join(a.out, "motion_module.pth"))
    torch.save(state_dict_like(sorted(seeded["reference_unet"].items())),
               os.path.join(a.out, "reference_unet.pth"))
    torch.save(state_dict_like(sorted(seeded["face_locator"].items())),
               os.path.join(a.out, "face_locator.pth"))
    vae = legacy_vae(dict(sorted(seeded["vae"].items())))
    assert any(".query." in k for k in vae)
    torch.save(vae, os.path.join(a.out, "sd-vae-ft-mse", "diffusion_pytorch_model.bin"))

    enc = seeded["audio_encoder"]
    n_state = enc["encoder.conv1.weight"].shape[0]
    n_layer = len({k.split(".")[2] for k in enc if k.startswith("encoder.blocks.")})
    dims = {"n_mels": enc["encoder.conv1.weight"].shape[1], "n_audio_ctx": enc["encoder.positional_embedding"].shape[0],
            "n_audio_state": n_state, "n_audio_head": 2, "n_audio_layer": n_layer, "n_vocab": 51865,
            "n_text_ctx": 448, "n_text_state": n_state, "n_text_head": 2, "n_text_layer": 1}
    state = OrderedDict((k, v.half()) for k, v in sorted(enc.items()))
    torch.manual_seed(0)
    state["decoder.token_embedding.weight"] = torch.randn(16, n_state).half()
    state["decoder.ln.weight"] = torch.ones(n_state).half()
    torch.save({"dims": dims, "model_state_dict": state}, os.path.join(a.out, "audio_processor", "whisper_tiny.pt"))
    # A value torch.load(weights_only=True) refuses: needs --unsafe-pickle.
    unsafe = {"dims": dims, "model_state_dict": state, "saved": datetime.date(2024, 1, 1)}
    torch.save(unsafe, os.path.join(a.out, "broken", "tiny_unsafe.pt"))

    # The broken set.
    removed = sorted(plain)[len(plain) // 2]
    overridden = sorted(motion)[0]
    broken = OrderedDict((k, v) for k, v in plain.items() if k != removed)
    broken["extra.weight"] = torch.zeros(3)
    broken[overridden] = torch.full_like(motion[overridden], 7.0)
    torch.save(state_dict_like(broken), os.path.join(a.out, "broken", "denoising_unet.pth"))
    fl = OrderedDict(sorted(seeded["face_locator"].items()))
    reshaped = next(k for k, v in fl.items() if v.dim() == 4)
    v = fl[reshaped]
    fl[reshaped] = torch.zeros(v.shape[0] + 1, *v.shape[1:])
    torch.save(state_dict_like(fl), os.path.join(a.out, "broken", "face_locator.pth"))
    print(f"removed={removed}")
    print(f"overridden={overridden}")
    print(f"reshaped={reshaped}")
    import facenet_pytorch

    print(f"facenet_data={os.path.join(os.path.dirname(facenet_pytorch.__file__), 'data')}")


if __name__ == "__main__":
    main()
