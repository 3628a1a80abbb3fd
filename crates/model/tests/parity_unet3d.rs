//! Parity of the denoising UNet and the face locator
//! (tests/reference/unet3d.py, which documents the key mapping):
//! (a) vs diffusers UNetMotionModel (no reference, no face, audio scale 1);
//! (b) the full EchoMimic forward (reference read, audio ×3, face features),
//!     with and without the classifier-free-guidance layout;
//! (c) a batch of two streams equals two single-stream runs.

mod common;

use std::collections::HashMap;

use osa_model::face_locator::{FaceLocator, FaceLocatorConfig};
use osa_model::nn::load_safetensors;
use osa_model::unet3d::{
    UNet3DConditionModel, UNet3DConfig, UNet3DInput, fold_frames, unfold_frames,
};
use tch::{Device, Kind, Tensor, nn::VarStore};

const TOL: f64 = 1e-4;
const FRAMES: i64 = 3;

fn build(weights: &std::path::Path, cfg: &UNet3DConfig) -> (VarStore, UNet3DConditionModel) {
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNet3DConditionModel::new(vs.root(), cfg);
    let report = load_safetensors(&mut vs, weights, None).unwrap();
    assert!(report.unexpected.is_empty(), "unexpected keys: {:?}", report.unexpected);
    (vs, unet)
}

fn input<'a>(io: &'a HashMap<String, Tensor>, t: &'a Tensor) -> UNet3DInput<'a> {
    UNet3DInput {
        sample: &io["sample"],
        frames: FRAMES,
        timestep: t,
        audio: Some(&io["audio"]),
        face: None,
        reference: None,
        plain_samples: 0,
    }
}

#[test]
fn face_locator_matches_echomimic() {
    let fx = common::fixture("unet3d.py", "face_locator", &["--part", "face_locator"]);
    let io = common::read(&fx.io);
    let mut vs = VarStore::new(Device::Cpu);
    let fl = FaceLocator::new(vs.root(), &FaceLocatorConfig::tiny());
    vs.load(&fx.weights).unwrap();
    let out = fl.forward(&io["mask"]).unwrap();
    common::assert_close("face locator", &out, &io["output"], TOL);
    let single = fl.forward(&io["mask"].narrow(0, 1, 1)).unwrap();
    common::assert_close(
        "face locator sample 1 alone",
        &single,
        &io["output"].narrow(0, 1, 1),
        TOL,
    );
    assert!(fl.forward(&Tensor::zeros([1, 2, 16, 16], (Kind::Float, Device::Cpu))).is_err());
    assert!(fl.forward(&Tensor::zeros([1, 1, 12, 16], (Kind::Float, Device::Cpu))).is_err());
}

#[test]
fn matches_diffusers_unet_motion_model() {
    let fx = common::fixture("unet3d.py", "motion_unet", &["--part", "motion_unet"]);
    let io = common::read(&fx.io);
    let cfg = UNet3DConfig { audio_scale: 1.0, ..UNet3DConfig::tiny() };
    let (_vs, unet) = build(&fx.weights, &cfg);
    let out = unet.forward(&input(&io, &io["timestep"])).unwrap();
    common::assert_close("unet3d vs UNetMotionModel", &out, &io["output"], TOL);
    // Can fail: another timestep gives another output.
    let t = Tensor::from(900.0f32);
    let other = unet.forward(&input(&io, &t)).unwrap();
    assert!(common::rel_l2(&other, &io["output"]) > 1e-3);
    // [B, C, F, h, w] helpers round-trip.
    let video = unfold_frames(&io["sample"], FRAMES).unwrap();
    assert_eq!(video.size(), [2, 4, FRAMES, 8, 8]);
    assert!(fold_frames(&video).unwrap().equal(&io["sample"]));
}

#[test]
fn matches_echomimic_forward_and_batch_equals_single() {
    let fx = common::fixture("unet3d.py", "echo", &["--part", "echo"]);
    let io = common::read(&fx.io);
    let (_vs, unet) = build(&fx.weights, &UNet3DConfig::tiny());
    let bank: Vec<Tensor> =
        (0..unet.bank_len()).map(|i| io[&format!("bank.{i}")].shallow_clone()).collect();
    assert!(!io.contains_key(&format!("bank.{}", bank.len())), "bank length matches the reference");

    let full = UNet3DInput {
        face: Some(&io["face"]),
        reference: Some(&bank),
        ..input(&io, &io["timestep"])
    };
    let out = unet.forward(&full).unwrap();
    common::assert_close("unet3d vs EchoMimic forward", &out, &io["output"], TOL);

    // (c) each stream alone, with its own bank row, audio, face and timestep.
    for b in 0..2 {
        let row = |t: &Tensor| t.narrow(0, b, 1);
        let bank_b: Vec<Tensor> = bank.iter().map(row).collect();
        let (sample, audio, face, t) = (
            io["sample"].narrow(0, b * FRAMES, FRAMES),
            row(&io["audio"]),
            row(&io["face"]),
            row(&io["timestep"]),
        );
        let single = UNet3DInput {
            sample: &sample,
            frames: FRAMES,
            timestep: &t,
            audio: Some(&audio),
            face: Some(&face),
            reference: Some(&bank_b),
            plain_samples: 0,
        };
        let out_b = unet.forward(&single).unwrap();
        common::assert_close(
            &format!("stream {b} alone vs batched"),
            &out_b,
            &out.narrow(0, b * FRAMES, FRAMES),
            TOL,
        );
    }

    // Classifier-free guidance layout: stream 0 unconditional (zero audio
    // and face, plain self-attention), stream 1 reads its bank.
    let zero_first =
        |t: &Tensor| Tensor::cat(&[t.narrow(0, 0, 1).zeros_like(), t.narrow(0, 1, 1)], 0);
    let (audio, face) = (zero_first(&io["audio"]), zero_first(&io["face"]));
    let cond_bank: Vec<Tensor> = bank.iter().map(|t| t.narrow(0, 1, 1)).collect();
    let t = Tensor::from(999.0f32);
    let cfg_input = UNet3DInput {
        sample: &io["sample"],
        frames: FRAMES,
        timestep: &t,
        audio: Some(&audio),
        face: Some(&face),
        reference: Some(&cond_bank),
        plain_samples: 1,
    };
    let out_cfg = unet.forward(&cfg_input).unwrap();
    common::assert_close("unet3d CFG layout vs EchoMimic", &out_cfg, &io["cfg_output"], TOL);

    // Without the reference the output differs: the bank is really read.
    let no_ref = UNet3DInput { reference: None, ..full };
    assert!(common::rel_l2(&unet.forward(&no_ref).unwrap(), &io["output"]) > 1e-3);
    // Shape errors, not panics.
    let short_bank = &bank[..3];
    assert!(
        unet.forward(&UNet3DInput { reference: Some(short_bank), ..input(&io, &io["timestep"]) })
            .is_err()
    );
    assert!(unet.forward(&UNet3DInput { frames: 4, ..input(&io, &io["timestep"]) }).is_err());
    let bad_face = Tensor::zeros([2, 32, 4, 4], (Kind::Float, Device::Cpu));
    assert!(
        unet.forward(&UNet3DInput { face: Some(&bad_face), ..input(&io, &io["timestep"]) })
            .is_err()
    );
}
