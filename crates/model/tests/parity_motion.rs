//! Parity of `osa_model::motion::VanillaTemporalModule` with EchoMimic's
//! AnimateDiff motion module (tests/reference/motion.py). The face locator's
//! parity lives in parity_unet3d.rs (it shares that reference script).

mod common;

use osa_model::motion::{MotionModuleConfig, VanillaTemporalModule, sinusoidal_position_encoding};
use tch::{Device, Kind, Tensor, nn::VarStore};

const TOL: f64 = 1e-4;

#[test]
fn motion_module_matches_echomimic() {
    let _guard = tch::no_grad_guard();
    let fx = common::fixture("motion.py", "motion", &["--channels", "32", "--frames", "5"]);
    let io = common::read(&fx.io);
    let weights = common::read(&fx.weights);
    let mut vs = VarStore::new(Device::Cpu);
    let m = VanillaTemporalModule::new(vs.root(), &MotionModuleConfig::tiny());
    // The buffer is filled from the formula at construction; it must equal
    // the one upstream stores in motion_module.pth.
    let pe_key = "temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe";
    let ours_pe = vs.variables()[pe_key].shallow_clone();
    common::assert_close("pos_encoder.pe formula", &ours_pe, &weights[pe_key], 1e-6);
    assert_eq!(ours_pe.size(), sinusoidal_position_encoding(32, 32).size());
    vs.load(&fx.weights).unwrap();
    assert_eq!(vs.variables().len(), weights.len(), "every checkpoint key is a variable");

    let x = &io["input"];
    let frames = 5;
    let y = m.forward(x, frames).unwrap();
    common::assert_close("motion module", &y, &io["output"], TOL);
    // The module is not a no-op on these weights.
    assert!(common::rel_l2(x, &io["output"]) > 1e-2);

    // Batch of two samples equals each sample alone.
    for b in 0..2 {
        let single = m.forward(&x.narrow(0, b * frames, frames), frames).unwrap();
        common::assert_close(
            &format!("motion module sample {b} alone"),
            &single,
            &io["output"].narrow(0, b * frames, frames),
            TOL,
        );
    }
    // The test can fail: grouping rows into the wrong clips changes the result.
    let wrong = m.forward(&x.narrow(0, 0, 10), 2).unwrap();
    assert!(common::rel_l2(&wrong, &io["output"]) > 1e-3);
    // Shape errors, not panics.
    assert!(m.forward(x, 3).is_err());
    assert!(m.forward(&Tensor::zeros([33, 32, 2, 2], (Kind::Float, Device::Cpu)), 33).is_err());
    assert!(m.forward(&Tensor::zeros([5, 16, 2, 2], (Kind::Float, Device::Cpu)), 5).is_err());
}
