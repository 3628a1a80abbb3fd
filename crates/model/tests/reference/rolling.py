"""Reference for tests/parity_rolling.rs: OSA-LCM's EFT rolling sampling,
written from the paper's description on top of diffusers' LCMScheduler.

Clip 0 starts from the reference latent repeated over the frames and noised
to the rolling timestep; clip n+1 starts from clip n's x0 (rounded to fp16,
as the stored state is) noised to the same timestep; each clip is then
denoised with the LCM consistency function in `steps` steps (diffusers'
`strength` cuts the schedule at the rolling timestep). The denoiser is a
fixed toy function both sides implement, so only the sampling is compared.

Noise comes from osa's seeded generator (xoshiro256** seeded by splitmix64,
Box-Muller in f64), re-implemented here so both sides draw the same numbers;
the noise itself is also saved, so a mismatch in the generator shows as
such.
"""
import math

import torch
from diffusers import LCMScheduler

import common

MASK = (1 << 64) - 1
CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing",
    steps_offset=1, clip_sample=False, set_alpha_to_one=True, original_inference_steps=50,
    timestep_scaling=10.0,
)
ROLLING_T = 759
SHAPE = (12, 4, 4, 4)


def rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & MASK


class Noise:
    def __init__(self, seed):
        x = seed & MASK
        s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & MASK
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
            s.append(z ^ (z >> 31))
        self.s = s
        self.spare = None

    @classmethod
    def for_stream(cls, seed, stream):
        return cls(seed ^ rotl((stream * 0xD1B54A32D192ED03) & MASK, 17))

    def next_u64(self):
        s = self.s
        result = (rotl((s[1] * 5) & MASK, 7) * 9) & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return result

    def uniform(self):
        return ((self.next_u64() >> 11) + 1.0) * (1.0 / (1 << 53))

    def normal(self):
        if self.spare is not None:
            z, self.spare = self.spare, None
            return z
        r = math.sqrt(-2.0 * math.log(self.uniform()))
        theta = 2.0 * math.pi * self.uniform()
        self.spare = r * math.sin(theta)
        return r * math.cos(theta)

    def randn(self, shape):
        n = math.prod(shape)
        return torch.tensor([self.normal() for _ in range(n)], dtype=torch.float32).view(shape)


def toy_denoiser(x, t):
    """v-prediction stand-in: smooth, input- and timestep-dependent."""
    return torch.tanh(0.7 * x + (t / 1000.0) - 0.3) * 0.9


def rolling_clip(x0_prev, seed, clip_index, steps, io, tag):
    sched = LCMScheduler(**CONFIG)
    sched.set_timesteps(steps, strength=(ROLLING_T + 1) / 1000.0)
    timesteps = [int(t) for t in sched.timesteps]
    assert timesteps[0] == ROLLING_T, timesteps
    rng = Noise.for_stream(seed, clip_index)
    noise = rng.randn(SHAPE)
    io[f"{tag}.noise"] = noise
    x = sched.add_noise(x0_prev, noise, torch.tensor([ROLLING_T]))
    denoised = None
    for i, t in enumerate(timesteps):
        v = toy_denoiser(x, t)
        # diffusers draws its re-noising noise from torch; draw ours instead
        # and hand it over through the generator-free code path.
        step_noise = rng.randn(SHAPE) if i + 1 < len(timesteps) else None
        sched._step_index = i
        out = sched.step(v, t, x, return_dict=True, generator=None)
        denoised = out.denoised
        if step_noise is not None:
            t_next = timesteps[i + 1]
            x = sched.add_noise(denoised, step_noise, torch.tensor([t_next]))
        else:
            x = denoised
    return denoised


def main():
    args = common.parse_args()
    common.seed_all(0)
    g = torch.Generator().manual_seed(7)
    reference = torch.randn((1,) + SHAPE[1:], generator=g)
    io = {"reference": reference}
    for steps in (1, 2, 4):
        seed = 1000 + steps
        prev = reference.expand(SHAPE).clone()
        for clip in range(3):
            x0 = rolling_clip(prev, seed, clip, steps, io, f"s{steps}.c{clip}")
            io[f"s{steps}.c{clip}.latents"] = x0
            prev = x0.half().float()
    common.save(args, {}, io)


if __name__ == "__main__":
    main()
