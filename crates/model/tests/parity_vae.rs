//! Parity of `osa_model::vae::AutoencoderKL` with diffusers 0.35.2
//! `AutoencoderKL` at a tiny config (tests/reference/vae.py), through the
//! real loading path, including checkpoints with the legacy attention names.

mod common;

use osa_model::vae::{self, AutoencoderKL, VaeConfig};
use tch::{Device, Tensor, nn::VarStore};

const TOL: f64 = 1e-4;

fn build() -> (VarStore, AutoencoderKL) {
    let vs = VarStore::new(Device::Cpu);
    let model = AutoencoderKL::new(vs.root(), &VaeConfig::tiny());
    (vs, model)
}

fn check_outputs(model: &AutoencoderKL, io: &std::collections::HashMap<String, Tensor>, tag: &str) {
    let dist = model.encode_dist(&io["image"]).unwrap();
    common::assert_close(&format!("{tag} mean"), &dist.mean, &io["mean"], TOL);
    common::assert_close(&format!("{tag} logvar"), &dist.logvar, &io["logvar"], TOL);
    common::assert_close(
        &format!("{tag} sample"),
        &dist.sample(&io["noise"]).unwrap(),
        &io["sample"],
        TOL,
    );
    common::assert_close(
        &format!("{tag} encode"),
        &model.encode(&io["image"]).unwrap(),
        &io["mean"],
        TOL,
    );
    common::assert_close(
        &format!("{tag} decode"),
        &model.decode(&io["latent"]).unwrap(),
        &io["decoded"],
        TOL,
    );
}

#[test]
fn tiny_vae_matches_diffusers() {
    let fx = common::fixture("vae.py", "vae", &[]);
    let io = common::read(&fx.io);
    let (mut vs, model) = build();
    vs.load(&fx.weights).unwrap();
    check_outputs(&model, &io, "vae");

    // Batch equals single: row 1 alone gives row 1 of the batch.
    let one = io["image"].narrow(0, 1, 1);
    let mean_one = model.encode(&one).unwrap();
    common::assert_close("encode row 1 alone", &mean_one, &io["mean"].narrow(0, 1, 1), TOL);
    let dec_one = model.decode(&io["latent"].narrow(0, 1, 1)).unwrap();
    common::assert_close("decode row 1 alone", &dec_one, &io["decoded"].narrow(0, 1, 1), TOL);

    // Scaled helpers are the plain ones times / divided by 0.18215.
    let sf = model.cfg.scaling_factor;
    assert_eq!(sf, 0.18215);
    let scaled = model.encode_latents(&io["image"]).unwrap();
    common::assert_close("encode_latents", &scaled, &(&io["mean"] * sf), TOL);
    let dec = model.decode_latents(&(&io["latent"] * sf)).unwrap();
    common::assert_close("decode_latents", &dec, &io["decoded"], TOL);
}

#[test]
fn legacy_attention_keys_load() {
    let fx = common::fixture("vae.py", "vae_legacy", &["--legacy"]);
    let io = common::read(&fx.io);
    let (mut vs, model) = build();
    // The plain loader cannot fill the renamed variables ...
    assert!(vs.load(&fx.weights).is_err(), "legacy names must not load without renaming");
    // ... the VAE loader renames them.
    let report = vae::load(&mut vs, &fx.weights).unwrap();
    assert_eq!(report.renamed.len(), 16, "{:?}", report.renamed);
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(report.loaded, vs.variables().len());
    check_outputs(&model, &io, "legacy");

    // Attention projections stored as 1x1 convolutions ([o, i, 1, 1]) load too.
    let conv_shaped: Vec<(String, Tensor)> = common::read(&fx.weights)
        .into_iter()
        .map(|(k, v)| {
            let v = if k.contains(".attentions.") && v.dim() == 2 {
                v.unsqueeze(-1).unsqueeze(-1)
            } else {
                v
            };
            (k, v)
        })
        .collect();
    let path = common::parity_dir().join("vae_legacy_conv_shaped.safetensors");
    Tensor::write_safetensors(&conv_shaped, &path).unwrap();
    let (mut vs, model) = build();
    vae::load(&mut vs, &path).unwrap();
    check_outputs(&model, &io, "legacy conv-shaped");
    // A real shape mismatch is an error.
    let wrong: Vec<(String, Tensor)> = conv_shaped
        .into_iter()
        .map(|(k, v)| if k.ends_with("conv_in.bias") { (k, v.narrow(0, 0, 1)) } else { (k, v) })
        .collect();
    Tensor::write_safetensors(&wrong, &path).unwrap();
    let (mut vs, _) = build();
    assert!(vae::load(&mut vs, &path).is_err());
}

#[test]
fn legacy_rename_covers_the_key_map() {
    // The 16 rows of vae_legacy_key_map.tsv (diffusers name <- legacy name).
    for side in ["encoder", "decoder"] {
        for (new, old) in
            [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")]
        {
            for p in ["weight", "bias"] {
                let legacy = format!("{side}.mid_block.attentions.0.{old}.{p}");
                let current = format!("{side}.mid_block.attentions.0.{new}.{p}");
                assert_eq!(vae::legacy_key_rename(&legacy), Some(current.clone()));
                assert_eq!(vae::legacy_key_rename(&current), None);
            }
        }
    }
    for other in [
        "encoder.down_blocks.0.resnets.0.conv1.weight",
        "decoder.mid_block.attentions.0.group_norm.weight",
        "key.weight",
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
    ] {
        assert_eq!(vae::legacy_key_rename(other), None, "{other}");
    }
}

#[test]
fn bad_shapes_are_errors() {
    let (_vs, model) = build();
    let odd = Tensor::zeros([1, 3, 31, 24], (tch::Kind::Float, Device::Cpu));
    assert!(model.encode(&odd).is_err());
    let gray = Tensor::zeros([1, 1, 32, 32], (tch::Kind::Float, Device::Cpu));
    assert!(model.encode(&gray).is_err());
    let latent = Tensor::zeros([1, 3, 8, 8], (tch::Kind::Float, Device::Cpu));
    assert!(model.decode(&latent).is_err());
}
