"""Reference for tests/parity_scheduler.rs: diffusers DDIMScheduler and
LCMScheduler configured as EchoMimic's inference_v2.yaml (v-prediction,
zero-terminal-SNR rescaled linear betas, trailing spacing, set_alpha_to_one)
and one step of each on seeded random tensors."""
import torch
from diffusers import DDIMScheduler, LCMScheduler

import common

CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    rescale_betas_zero_snr=True,
    prediction_type="v_prediction",
    timestep_spacing="trailing",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=True,
)


def main():
    args = common.parse_args()
    common.seed_all(0)
    g = torch.Generator().manual_seed(1234)
    shape = (2, 4, 3, 8, 8)
    sample = torch.randn(shape, generator=g)
    model_output = torch.randn(shape, generator=g)
    uncond = torch.randn(shape, generator=g)
    cond = torch.randn(shape, generator=g)
    x0 = torch.randn(shape, generator=g)
    noise = torch.randn(shape, generator=g)
    io = dict(sample=sample, model_output=model_output, uncond=uncond, cond=cond, x0=x0, noise=noise)

    ddim = DDIMScheduler(**CONFIG)
    io["betas"] = ddim.betas
    io["alphas_cumprod"] = ddim.alphas_cumprod
    for steps in (30, 20, 4, 1):
        ddim.set_timesteps(steps)
        io[f"ddim_timesteps_{steps}"] = ddim.timesteps.clone()
    # One DDIM step per interesting timestep of the 30-step schedule: the
    # first (alpha_t = 0 under zero SNR), a middle one, and the last (prev < 0,
    # final_alpha_cumprod = 1).
    ddim.set_timesteps(30)
    for t in (999, 499, 32):
        out = ddim.step(model_output, t, sample, eta=0.0)
        io[f"ddim_step30_t{t}_prev"] = out.prev_sample
        io[f"ddim_step30_t{t}_x0"] = out.pred_original_sample
    # Classifier-free guidance as in EchoMimic's pipeline, then a DDIM step.
    guided = uncond + 2.5 * (cond - uncond)
    io["cfg_guided"] = guided
    io["cfg_ddim_prev"] = ddim.step(guided, 966, sample, eta=0.0).prev_sample
    for t in (999, 500, 0):
        io[f"add_noise_t{t}"] = ddim.add_noise(x0, noise, torch.tensor([t]))
        io[f"velocity_t{t}"] = ddim.get_velocity(x0, noise, torch.tensor([t]))

    lcm = LCMScheduler(**CONFIG)
    io["lcm_alphas_cumprod"] = lcm.alphas_cumprod
    for steps in (1, 2, 4, 8):
        lcm.set_timesteps(steps)
        io[f"lcm_timesteps_{steps}"] = lcm.timesteps.clone()
    # Each step of the 1, 2 and 4-step schedules on the same inputs. The
    # re-noising draws from a generator; the same draw is saved so the Rust
    # side can be fed identical noise.
    for steps in (1, 2, 4):
        lcm.set_timesteps(steps)
        for i, t in enumerate(lcm.timesteps):
            gen = torch.Generator().manual_seed(99 + i)
            io[f"lcm_{steps}_{i}_noise"] = torch.randn(shape, generator=torch.Generator().manual_seed(99 + i))
            prev, denoised = lcm.step(model_output, t, sample, generator=gen, return_dict=False)
            io[f"lcm_{steps}_{i}_prev"] = prev
            io[f"lcm_{steps}_{i}_denoised"] = denoised
    common.save(args, {}, io)


if __name__ == "__main__":
    main()
