//! EFT rolling sampling: state round-trips through bytes, the number of
//! denoiser calls per clip equals the step count, clips are deterministic
//! per seed, and bad bytes are rejected.

use osa_model::rolling::{RollingConfig, RollingSampler, RollingState, STATE_VERSION};
use tch::{Device, Kind, Tensor};

fn sampler() -> RollingSampler {
    RollingSampler::new(&RollingConfig {
        frames: 3,
        height: 4,
        width: 5,
        ..RollingConfig::default()
    })
    .unwrap()
}

/// A stand-in for the UNet: a smooth function of the latents and timestep.
fn fake_unet(
    calls: &mut Vec<i64>,
) -> impl FnMut(&Tensor, i64) -> Result<Tensor, std::convert::Infallible> + '_ {
    move |x, t| {
        calls.push(t);
        Ok(x.tanh() * 0.5 + x.roll([1], [0]) * 0.25 + (t as f64 / 1000.0))
    }
}

fn run(
    s: &RollingSampler,
    state: &RollingState,
    reference: Option<&Tensor>,
) -> (Tensor, RollingState, Vec<i64>) {
    let mut calls = Vec::new();
    let clip = s.next_clip(state, reference, fake_unet(&mut calls)).unwrap();
    (clip.latents, clip.next, calls)
}

#[test]
fn serialised_state_continues_identically() {
    let s = sampler();
    let (_, after0, _) = run(&s, &RollingState::new(42, 1), None);
    assert_eq!(after0.clip_index, 1);
    let bytes = after0.to_bytes().unwrap();
    assert_eq!(bytes.len(), 26 + 1 + 16 + 2 * 3 * 4 * 4 * 5);
    assert_eq!(bytes[4], STATE_VERSION);
    let restored = RollingState::from_bytes(&bytes, Device::Cpu).unwrap();
    assert_eq!(restored, after0);
    let (a, next_a, _) = run(&s, &after0, None);
    let (b, next_b, _) = run(&s, &restored, None);
    assert!(a.equal(&b), "clip from the serialised state differs");
    assert_eq!(next_a, next_b);
    // A fresh state round-trips too.
    let fresh = RollingState::new(7, 4);
    assert_eq!(RollingState::from_bytes(&fresh.to_bytes().unwrap(), Device::Cpu).unwrap(), fresh);
}

#[test]
fn denoiser_is_called_once_per_step() {
    let s = sampler();
    for steps in [1u32, 2, 4] {
        let (_, after0, calls0) = run(&s, &RollingState::new(1, steps), None);
        assert_eq!(calls0.len(), steps as usize, "clip 0, {steps} steps");
        assert_eq!(calls0[0], 999, "clip 0 starts from pure noise at the top timestep");
        let (_, after1, calls1) = run(&s, &after0, None);
        assert_eq!(calls1.len(), steps as usize, "clip 1, {steps} steps");
        assert_eq!(calls1[0], 759, "rolling clips start at the rolling timestep");
        let (_, _, calls2) = run(&s, &after1, None);
        assert_eq!(calls2.len(), steps as usize, "clip 2, {steps} steps");
    }
    // Clip 0 from the noised reference latent also uses the rolling start.
    let reference = Tensor::ones([4, 4, 5], (Kind::Float, Device::Cpu));
    let (_, _, calls) = run(&s, &RollingState::new(1, 2), Some(&reference));
    assert_eq!(calls, [759, 379]);
}

#[test]
fn deterministic_per_seed_and_carries_the_previous_clip() {
    let s = sampler();
    let (a, after_a, _) = run(&s, &RollingState::new(5, 2), None);
    let (b, _, _) = run(&s, &RollingState::new(5, 2), None);
    let (c, _, _) = run(&s, &RollingState::new(6, 2), None);
    assert!(a.equal(&b));
    assert!(!a.equal(&c));
    // Clip 1 depends on clip 0's latents, not only on the seed.
    let mut other = after_a.clone();
    other.latents = Some(other.latents.as_ref().unwrap().zeros_like());
    let (n1, _, _) = run(&s, &after_a, None);
    let (n2, _, _) = run(&s, &other, None);
    assert!(!n1.equal(&n2));
}

#[test]
fn bad_input_is_an_error() {
    let s = sampler();
    let (_, state, _) = run(&s, &RollingState::new(3, 1), None);
    let bytes = state.to_bytes().unwrap();
    let dev = Device::Cpu;
    assert!(RollingState::from_bytes(&bytes[..bytes.len() - 1], dev).is_err(), "truncated");
    assert!(RollingState::from_bytes(&[bytes.as_slice(), &[0]].concat(), dev).is_err(), "trailing");
    let mut wrong = bytes.clone();
    wrong[0] = b'X';
    assert!(RollingState::from_bytes(&wrong, dev).is_err(), "magic");
    let mut wrong = bytes.clone();
    wrong[4] = STATE_VERSION + 1;
    assert!(RollingState::from_bytes(&wrong, dev).is_err(), "version");
    let mut wrong = bytes.clone();
    wrong[5] = 2;
    assert!(RollingState::from_bytes(&wrong, dev).is_err(), "flags");
    assert!(RollingState::from_bytes(&[], dev).is_err(), "empty");
    // Latents of another size, a zero step count, a misshapen denoiser output.
    let mut other = state.clone();
    other.latents = Some(Tensor::zeros([2, 4, 4, 5], (Kind::Half, dev)));
    assert!(s.next_clip(&other, None, fake_unet(&mut Vec::new())).is_err());
    assert!(s.next_clip(&RollingState::new(1, 0), None, fake_unet(&mut Vec::new())).is_err());
    let bad = |_: &Tensor, _: i64| {
        Ok::<_, std::convert::Infallible>(Tensor::zeros([1], (Kind::Float, dev)))
    };
    assert!(s.next_clip(&RollingState::new(1, 1), None, bad).is_err());
}

#[test]
fn drives_the_denoising_unet_one_call_per_clip() {
    use osa_model::unet3d::{UNet3DConditionModel, UNet3DConfig, UNet3DInput};
    // Tiny UNet with seeded random weights as the denoiser, each clip under
    // its own audio; 8x8 latents, 3 frames.
    tch::manual_seed(11);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let cfg = UNet3DConfig::tiny();
    let unet = UNet3DConditionModel::new(vs.root(), &cfg);
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let r = v.randn_like() * 0.05;
            v.copy_(&r);
        }
    });
    let s = RollingSampler::new(&RollingConfig {
        frames: 3,
        height: 8,
        width: 8,
        ..RollingConfig::default()
    })
    .unwrap();
    let mut state = RollingState::new(9, 1);
    let mut calls = 0;
    for clip in 0..3 {
        let audio = Tensor::randn([1, 3, 5, cfg.cross_attention_dim], (Kind::Float, Device::Cpu));
        let out = s
            .next_clip(&state, None, |x, t| {
                calls += 1;
                let t = Tensor::from(t as f32);
                let input = UNet3DInput {
                    sample: x,
                    frames: 3,
                    timestep: &t,
                    audio: Some(&audio),
                    face: None,
                    reference: None,
                    plain_samples: 0,
                };
                unet.forward(&input)
            })
            .unwrap();
        assert_eq!(out.latents.size(), [3, 4, 8, 8]);
        assert_eq!(calls, clip + 1);
        state = out.next;
    }
    assert_eq!(state.clip_index, 3);
}
