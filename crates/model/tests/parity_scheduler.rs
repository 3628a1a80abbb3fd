//! Parity of `osa_model::scheduler` with diffusers 0.35.2 DDIMScheduler and
//! LCMScheduler configured as EchoMimic's inference_v2.yaml
//! (tests/reference/scheduler.py).

mod common;

use osa_model::scheduler::{
    Ddim, Lcm, NoiseSchedule, SchedulerConfig, classifier_free_guidance, guide_batched,
};
use tch::{Kind, Tensor};

const TOL: f64 = 1e-6;

fn io() -> std::collections::HashMap<String, Tensor> {
    let fx = common::fixture("scheduler.py", "scheduler", &[]);
    common::read(&fx.io)
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_kind(Kind::Int64)).unwrap()
}

#[test]
fn schedule_constants_match_diffusers_and_config_md() {
    let io = io();
    let s = NoiseSchedule::new(&SchedulerConfig::default()).unwrap();
    let ac = Tensor::from_slice(s.alphas_cumprod());
    common::assert_close("alphas_cumprod", &ac, &io["alphas_cumprod"], TOL);
    common::assert_close("lcm alphas_cumprod", &ac, &io["lcm_alphas_cumprod"], TOL);
    common::assert_close("betas", &Tensor::from_slice(s.betas()), &io["betas"], TOL);
    // Bit-exact: same libtorch ops in the same order.
    assert_eq!(Vec::<f32>::try_from(&io["alphas_cumprod"]).unwrap(), s.alphas_cumprod());
    // The numbers config.md section 4 quotes.
    let a = s.alphas_cumprod();
    assert!((a[0] - 0.99915).abs() < 1e-5 && (a[500] - 0.141513).abs() < 1e-6);
    assert!((a[998] - 6.2774e-08).abs() < 1e-11 && a[999] == 0.0);
    assert_eq!(s.betas()[999], 1.0);
}

#[test]
fn timesteps_match() {
    let io = io();
    let cfg = SchedulerConfig::default();
    for steps in [30, 20, 4, 1] {
        let d = Ddim::new(&cfg, steps).unwrap();
        assert_eq!(d.timesteps(), ints(&io[&format!("ddim_timesteps_{steps}")]), "ddim {steps}");
    }
    let ddim30 = Ddim::new(&cfg, 30).unwrap();
    let from_config_md = [
        999, 966, 932, 899, 866, 832, 799, 766, 732, 699, 666, 632, 599, 566, 532, 499, 466, 432,
        399, 366, 332, 299, 266, 232, 199, 166, 132, 99, 66, 32,
    ];
    assert_eq!(ddim30.timesteps(), from_config_md);
    for steps in [1, 2, 4, 8] {
        let l = Lcm::new(&cfg, steps).unwrap();
        assert_eq!(l.timesteps(), ints(&io[&format!("lcm_timesteps_{steps}")]), "lcm {steps}");
    }
}

#[test]
fn ddim_step_and_guidance_match() {
    let io = io();
    let ddim = Ddim::new(&SchedulerConfig::default(), 30).unwrap();
    for t in [999, 499, 32] {
        let out = ddim.step(&io["model_output"], t, &io["sample"]).unwrap();
        common::assert_close(
            &format!("ddim t={t} prev"),
            &out.prev_sample,
            &io[&format!("ddim_step30_t{t}_prev")],
            TOL,
        );
        common::assert_close(
            &format!("ddim t={t} x0"),
            &out.pred_original_sample,
            &io[&format!("ddim_step30_t{t}_x0")],
            TOL,
        );
    }
    let guided = classifier_free_guidance(&io["uncond"], &io["cond"], 2.5).unwrap();
    common::assert_close("cfg", &guided, &io["cfg_guided"], TOL);
    let batched = guide_batched(&Tensor::cat(&[&io["uncond"], &io["cond"]], 0), 2.5).unwrap();
    common::assert_close("cfg batched", &batched, &io["cfg_guided"], TOL);
    let prev = ddim.step(&guided, 966, &io["sample"]).unwrap().prev_sample;
    common::assert_close("cfg ddim", &prev, &io["cfg_ddim_prev"], TOL);
    // The test can fail: a different timestep gives a different result.
    let wrong = ddim.step(&guided, 932, &io["sample"]).unwrap().prev_sample;
    assert!(common::rel_l2(&wrong, &io["cfg_ddim_prev"]) > 1e-3);
    for t in [999, 500, 0] {
        let s = ddim.schedule();
        let noisy = s.add_noise(&io["x0"], &io["noise"], t).unwrap();
        common::assert_close(
            &format!("add_noise t={t}"),
            &noisy,
            &io[&format!("add_noise_t{t}")],
            TOL,
        );
        let v = s.velocity(&io["x0"], &io["noise"], t).unwrap();
        common::assert_close(&format!("velocity t={t}"), &v, &io[&format!("velocity_t{t}")], TOL);
    }
}

#[test]
fn lcm_steps_match() {
    let io = io();
    for steps in [1usize, 2, 4] {
        let lcm = Lcm::new(&SchedulerConfig::default(), steps).unwrap();
        for i in 0..steps {
            let noise = &io[&format!("lcm_{steps}_{i}_noise")];
            let out = lcm.step_with_noise(i, &io["model_output"], &io["sample"], noise).unwrap();
            let key = format!("lcm_{steps}_{i}");
            common::assert_close(
                &format!("{key} denoised"),
                &out.denoised,
                &io[&format!("{key}_denoised")],
                TOL,
            );
            common::assert_close(
                &format!("{key} prev"),
                &out.prev_sample,
                &io[&format!("{key}_prev")],
                TOL,
            );
        }
        assert!(
            lcm.step_with_noise(steps, &io["model_output"], &io["sample"], &io["noise"]).is_err()
        );
    }
}
