//! Parity of `osa_model::unet2d` with diffusers 0.35.2 `UNet2DConditionModel`
//! at a tiny config (tests/reference/unet2d.py): the stock net with
//! cross-attention, EchoMimic's reference UNet (no attn2/norm2, no output
//! head) and its bank, and EchoMimic's reference "read" attention with and
//! without classifier-free guidance.

mod common;

use std::collections::HashMap;

use osa_model::{
    nn::{BankReader, RefAttention},
    unet2d::{UNet2DConditionModel, UNet2DConfig},
};
use tch::{Device, Kind, Tensor, nn::VarStore};

const TOL: f64 = 1e-4;
const FRAMES: i64 = 2;

fn load(
    cfg: &UNet2DConfig,
    name: &str,
    variant: &str,
) -> (VarStore, UNet2DConditionModel, HashMap<String, Tensor>) {
    let fx = common::fixture("unet2d.py", name, &["--variant", variant]);
    let mut vs = VarStore::new(Device::Cpu);
    let model = UNet2DConditionModel::new(vs.root(), cfg);
    vs.load(&fx.weights).unwrap();
    (vs, model, common::read(&fx.io))
}

fn stock() -> (VarStore, UNet2DConditionModel, HashMap<String, Tensor>) {
    load(&UNet2DConfig::tiny(), "unet2d", "stock")
}

fn scalar(t: f64) -> Tensor {
    Tensor::from(t as f32)
}

#[test]
fn stock_unet_matches_diffusers() {
    let (vs, model, io) = stock();
    assert_eq!(
        vs.variables().len(),
        common::read(&common::fixture("unet2d.py", "unet2d", &["--variant", "stock"]).weights)
            .len()
    );
    let out = model
        .forward(&io["sample"], &io["timestep"], Some(&io["context"]), &mut RefAttention::Off)
        .unwrap();
    common::assert_close("stock out", &out, &io["out"], TOL);

    // Batch equals single.
    let one = model
        .forward(
            &io["sample"].narrow(0, 1, 1),
            &io["timestep"].narrow(0, 1, 1),
            Some(&io["context"].narrow(0, 1, 1)),
            &mut RefAttention::Off,
        )
        .unwrap();
    common::assert_close("stock row 1 alone", &one, &io["out"].narrow(0, 1, 1), TOL);

    // Odd spatial size: the upsampler follows the skip's size.
    let odd = model
        .forward(&io["odd"], &scalar(250.0), Some(&io["odd_context"]), &mut RefAttention::Off)
        .unwrap();
    common::assert_close("stock odd-size out", &odd, &io["out_odd"], TOL);
}

#[test]
fn reference_unet_bank_and_output_match() {
    let cfg = UNet2DConfig::tiny_reference();
    let (vs, model, io) = load(&cfg, "unet2d_ref", "reference");
    assert!(
        vs.variables()
            .keys()
            .all(|k| !k.contains("attn2") && !k.contains(".norm2.") || k.contains("resnets"))
    );
    assert!(
        vs.variables()
            .keys()
            .all(|k| !k.starts_with("conv_out") && !k.starts_with("conv_norm_out"))
    );

    let mut bank = Vec::new();
    let t0 = Tensor::zeros([], (Kind::Float, Device::Cpu));
    let out =
        model.forward(&io["ref_latent"], &t0, None, &mut RefAttention::Write(&mut bank)).unwrap();
    common::assert_close("reference out (last up block)", &out, &io["ref_out"], TOL);
    assert_eq!(bank.len(), cfg.transformer_count());
    assert_eq!(bank.len(), 4);
    for (i, entry) in bank.iter().enumerate() {
        common::assert_close(&format!("bank {i}"), entry, &io[&format!("bank_{i}")], TOL);
    }

    // reference_bank() is the same write pass; one stream alone gives its row.
    let single = model.reference_bank(&io["ref_latent"].narrow(0, 1, 1), &t0).unwrap();
    for (i, entry) in single.iter().enumerate() {
        common::assert_close(
            &format!("bank {i} row 1 alone"),
            entry,
            &io[&format!("bank_{i}")].narrow(0, 1, 1),
            TOL,
        );
    }
    // The reference UNet takes no context.
    let ctx = Tensor::zeros([2, 5, 16], (Kind::Float, Device::Cpu));
    assert!(model.forward(&io["ref_latent"], &t0, Some(&ctx), &mut RefAttention::Off).is_err());
}

#[test]
fn reference_read_matches_echomimic() {
    let cfg = UNet2DConfig { cross_attention_scale: 3.0, ..UNet2DConfig::tiny() };
    let fx = common::fixture("unet2d.py", "unet2d", &["--variant", "stock"]);
    let mut vs = VarStore::new(Device::Cpu);
    let model = UNet2DConditionModel::new(vs.root(), &cfg);
    vs.load(&fx.weights).unwrap();
    let io = common::read(&fx.io);
    let bank: Vec<Tensor> = (0..4).map(|i| io[&format!("bank_{i}")].shallow_clone()).collect();
    let (x, ctx, t) = (&io["read_sample"], &io["read_context"], scalar(700.0));

    // One reference per stream: 2 streams x 2 frames.
    let mut ra = RefAttention::Read(BankReader::new(&bank, FRAMES));
    let multi = model.forward(x, &t, Some(ctx), &mut ra).unwrap();
    ra.finish().unwrap();
    common::assert_close("read, one reference per stream", &multi, &io["out_read_multi"], TOL);

    // CFG: stream 0 unconditional (plain self-attention), stream 1 reads
    // reference 0 (a one-row bank).
    let first: Vec<Tensor> = bank.iter().map(|b| b.narrow(0, 0, 1)).collect();
    let mut ra = RefAttention::Read(BankReader::new(&first, FRAMES).with_plain_samples(1));
    let cfg_out = model.forward(x, &t, Some(ctx), &mut ra).unwrap();
    ra.finish().unwrap();
    common::assert_close("read, CFG halves", &cfg_out, &io["out_read_cfg"], TOL);

    // The bank matters (so the comparisons above can fail) ...
    let plain = model.forward(x, &t, Some(ctx), &mut RefAttention::Off).unwrap();
    assert!(common::rel_l2(&plain, &io["out_read_multi"]) > 1e-2);
    // ... and a batch of one stream equals its rows of the batch.
    let rows = |t: &Tensor| t.narrow(0, FRAMES, FRAMES);
    let second: Vec<Tensor> = bank.iter().map(|b| b.narrow(0, 1, 1)).collect();
    let mut ra = RefAttention::Read(BankReader::new(&second, FRAMES));
    let alone = model.forward(&rows(x), &t, Some(&rows(ctx)), &mut ra).unwrap();
    common::assert_close("read, stream 1 alone", &alone, &rows(&io["out_read_multi"]), TOL);

    // Misuse is an error, not a panic.
    let mut short = RefAttention::Read(BankReader::new(&bank[..2], FRAMES));
    assert!(model.forward(x, &t, Some(ctx), &mut short).is_err());
    let mut ra = RefAttention::Read(BankReader::new(&bank, 3));
    assert!(model.forward(x, &t, Some(ctx), &mut ra).is_err());
    let extra: Vec<Tensor> =
        bank.iter().chain(bank.iter().take(1)).map(|b| b.shallow_clone()).collect();
    let mut ra = RefAttention::Read(BankReader::new(&extra, FRAMES));
    let _ = model.forward(x, &t, Some(ctx), &mut ra).unwrap();
    assert!(ra.finish().is_err());
}

#[test]
fn bad_inputs_are_errors() {
    let model = UNet2DConditionModel::new(VarStore::new(Device::Cpu).root(), &UNet2DConfig::tiny());
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::zeros([2, 4, 8, 8], opts);
    let ctx = Tensor::zeros([2, 3, 16], opts);
    let t = Tensor::zeros([], opts);
    assert!(
        model
            .forward(&Tensor::zeros([2, 3, 8, 8], opts), &t, Some(&ctx), &mut RefAttention::Off)
            .is_err()
    );
    assert!(
        model.forward(&x, &Tensor::zeros([3], opts), Some(&ctx), &mut RefAttention::Off).is_err()
    );
    assert!(
        model
            .forward(&x, &t, Some(&Tensor::zeros([2, 3, 8], opts)), &mut RefAttention::Off)
            .is_err()
    );
    assert!(model.forward(&x, &t, None, &mut RefAttention::Off).is_err());
    assert!(model.forward(&x, &t, Some(&ctx), &mut RefAttention::Off).is_ok());
}
