"""Reference for tests/parity_audio.rs: openai-whisper's log-mel front end and
AudioEncoder, and EchoMimic's piece logic and per-frame windows
(antgroup/echomimic src/models/whisper/audio2feature.py and the bundled
whisper/transcribe.py), written here from their description.

One fixture (one python start) holds every case, under prefixes:
  mel_80     whisper's packaged mel filterbank
  speech_*   a spoken sentence (espeak-ng, decoded to 16 kHz by whisper's
             ffmpeg loader) and whisper.log_mel_spectrogram of it
  enc_*      AudioEncoder at a tiny config with random weights (saved as
             encoder.*): the 5 hidden states EchoMimic keeps (hooks) and the
             ln_post output
  win_*      feature2chunks on random features at 24, 25, 30 and 60 fps,
             and its window counts for 1 .. 3000 positions
  pipe_*     the whole EchoMimic path on the speech (mel -> 30 s-style
             pieces -> kept positions -> windows at 25 fps), same encoder
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import whisper
from whisper.audio import log_mel_spectrogram, load_audio, pad_or_trim
from whisper.model import AudioEncoder

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

# Must equal WhisperEncoderConfig::tiny() in src/audio/whisper.rs.
TINY = dict(n_mels=80, n_ctx=20, n_state=32, n_head=4, n_layer=4)
WIN_FPS = (24, 25, 30, 60)
SENTENCE = "Hello! This portrait was animated in one step, streaming clip by clip."


def speech_16k() -> torch.Tensor:
    """A real spoken sentence as EchoMimic would read it: espeak-ng's wav,
    decoded, down-mixed and resampled to 16 kHz by whisper's ffmpeg loader."""
    with tempfile.TemporaryDirectory() as d:
        wav = os.path.join(d, "speech.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", wav, SENTENCE], check=True)
        return torch.from_numpy(load_audio(wav).copy())


def tiny_encoder(seed: int) -> AudioEncoder:
    enc = AudioEncoder(**TINY).eval()
    common.randomize_(enc, seed, std=0.25)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # LayerNorm scales near one (randomize_ only knows diffusers names).
        for name, p in enc.named_parameters():
            if "_ln" in name and name.endswith(".weight") or name.startswith("ln_post.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
    return enc


def hidden_states(enc: AudioEncoder, mel: torch.Tensor):
    """Runs the encoder with hooks: the input of block 0 and each block's
    output (EchoMimic's include_embeddings stack, no ln_post), stacked to
    [B, T, n_layer + 1, C], plus the normal output."""
    states = []
    hooks = [enc.blocks[0].register_forward_pre_hook(lambda m, a: states.append(a[0].clone()))]
    for b in enc.blocks:
        hooks.append(b.register_forward_hook(lambda m, a, out: states.append(out.clone())))
    with torch.no_grad():
        out = enc(mel)
    for h in hooks:
        h.remove()
    return torch.stack(states, dim=2), out


def audio2feat(enc: AudioEncoder, mel: torch.Tensor) -> torch.Tensor:
    """EchoMimic's transcribe loop + audio2feat: pieces of 2 * n_ctx frames,
    padded with pad_or_trim, keep int((end - start) / 2) positions each."""
    piece = 2 * TINY["n_ctx"]
    n = mel.shape[-1]
    kept = []
    seek = 0
    while seek < n:
        end = min(seek + piece, n)
        seg = pad_or_trim(mel[:, seek:seek + piece], piece).unsqueeze(0)
        states, _ = hidden_states(enc, seg)
        kept.append(states[0, : int((end - seek) / 2)])
        seek += piece
    return torch.cat(kept, 0)


def feature2chunks(features: np.ndarray, fps: int) -> np.ndarray:
    """EchoMimic's feature2chunks with get_sliced_feature (audio_feat_length
    [2, 2]): window c-4 .. c+5 around c = int(i * 50 / fps), clamped."""
    chunks = []
    multiplier = 50.0 / fps
    length = len(features)
    i = 0
    while True:
        start_idx = int(i * multiplier)
        center = int(i * 50 / fps)
        window = [features[min(length - 1, max(0, p))] for p in range(center - 4, center + 6)]
        chunks.append(np.concatenate(window, axis=0).reshape(-1, features.shape[-1]))
        i += 1
        if start_idx > length:
            break
    return np.array(chunks)


def chunk_count(length: int, fps: int) -> int:
    """How many windows feature2chunks yields for `length` positions."""
    multiplier = 50.0 / fps
    i = 0
    while True:
        start_idx = int(i * multiplier)
        i += 1
        if start_idx > length:
            return i


def main():
    args = common.parse_args()
    common.seed_all(0)
    io = {}
    path = os.path.join(os.path.dirname(whisper.__file__), "assets", "mel_filters.npz")
    with np.load(path) as f:
        io["mel_80"] = torch.from_numpy(f["mel_80"])

    samples = speech_16k()
    mel = log_mel_spectrogram(samples)
    io.update(speech_samples=samples, speech_mel=mel)

    enc = tiny_encoder(1)
    weights = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    enc_mel = torch.randn(2, TINY["n_mels"], 2 * TINY["n_ctx"]) * 0.6
    hidden, out = hidden_states(enc, enc_mel)
    io.update(enc_mel=enc_mel, enc_hidden=hidden, enc_out=out)

    g = torch.Generator().manual_seed(2)
    features = torch.randn(37, 5, 8, generator=g)
    io["win_hidden"] = features
    for fps in WIN_FPS:
        io[f"win_chunks_{fps}"] = torch.from_numpy(feature2chunks(features.numpy(), fps))
    # Window counts for T = 1 .. 3000 positions (one minute) at each fps.
    io["win_counts"] = torch.tensor([[chunk_count(t, fps) for t in range(1, 3001)] for fps in WIN_FPS])

    features = audio2feat(enc, mel)
    io.update(pipe_features=features, pipe_chunks=torch.from_numpy(feature2chunks(features.numpy(), 25)))
    common.save(args, weights, io)


if __name__ == "__main__":
    main()
