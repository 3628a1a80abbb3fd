//! EFT rolling sampling against a PyTorch reference (tests/reference/
//! rolling.py, on diffusers' LCMScheduler): clip 0 from the noised reference
//! latent, clips 1 and 2 from the previous clip's fp16 state, for 1, 2 and 4
//! steps, with a toy denoiser both sides implement.

mod common;

use osa_model::rolling::{RollingConfig, RollingSampler, RollingState};
use tch::{Device, Kind, Tensor};

fn toy_denoiser(x: &Tensor, t: i64) -> Tensor {
    ((x * 0.7 + (t as f64 / 1000.0) - 0.3).tanh()) * 0.9
}

#[test]
fn rolling_clips_match_the_reference() {
    let f = common::fixture("rolling.py", "rolling", &[]);
    let io = common::read(&f.io);
    let sampler = RollingSampler::new(&RollingConfig {
        frames: 12,
        latent_channels: 4,
        height: 4,
        width: 4,
        rolling_timestep: 759,
        device: Device::Cpu,
        kind: Kind::Float,
        ..RollingConfig::default()
    })
    .unwrap();
    let reference = &io["reference"];
    for steps in [1u32, 2, 4] {
        let mut state = RollingState::new(1000 + u64::from(steps), steps);
        for clip in 0..3 {
            let mut calls = 0;
            let out = sampler
                .next_clip(&state, Some(reference), |x, t| {
                    calls += 1;
                    Ok::<_, std::convert::Infallible>(toy_denoiser(x, t))
                })
                .unwrap();
            assert_eq!(calls, steps as usize);
            // The seeded generator draws the same numbers in Python.
            let noise = osa_model::scheduler::NoiseGenerator::for_stream(state.seed, clip).randn(
                &[12, 4, 4, 4],
                Kind::Float,
                Device::Cpu,
            );
            assert!(noise.equal(&io[&format!("s{steps}.c{clip}.noise")]), "noise of clip {clip}");
            let want = &io[&format!("s{steps}.c{clip}.latents")];
            common::assert_close(&format!("{steps} steps, clip {clip}"), &out.latents, want, 1e-5);
            state = out.next;
        }
    }
}
