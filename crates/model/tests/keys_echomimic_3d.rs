//! The full-size denoising UNet and face locator, built with EchoMimic's
//! configs, have exactly the checkpoint keys and shapes of
//! `denoising_unet.tsv` (and its 686 non-motion rows for the stage-1 model
//! without motion modules) and `face_locator.tsv`
//! (crates/model/keys/echomimic).
//!
//! Parameters are created as fp16 zeros (`VarStore::set_kind(Half)`
//! before building): only names and shapes are compared, and the 1.3 B
//! parameter UNet then needs 2.6 GB instead of 5.2 GB. Each model is dropped
//! before the next is built.

mod common;

use std::collections::BTreeMap;

use osa_model::face_locator::{FaceLocator, FaceLocatorConfig};
use osa_model::unet3d::{UNet3DConditionModel, UNet3DConfig};
use tch::{Device, Kind, nn::VarStore};

fn read_tsv(name: &str, keep: impl Fn(&str) -> bool) -> BTreeMap<String, Vec<i64>> {
    let text = common::echomimic_keys(name);
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let mut cols = line.split('\t');
        let (key, shape) = (cols.next().unwrap(), cols.next().unwrap());
        if !keep(key) {
            continue;
        }
        let dims = shape
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.trim().parse::<i64>().unwrap())
            .collect();
        out.insert(key.to_string(), dims);
    }
    out
}

fn built(vs: &VarStore) -> BTreeMap<String, Vec<i64>> {
    vs.variables().into_iter().map(|(k, t)| (k, t.size())).collect()
}

fn assert_same(what: &str, ours: &BTreeMap<String, Vec<i64>>, want: &BTreeMap<String, Vec<i64>>) {
    let missing: Vec<_> = want.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !want.contains_key(*k)).collect();
    let shapes: Vec<_> = want
        .iter()
        .filter_map(|(k, s)| {
            ours.get(k).filter(|o| *o != s).map(|o| format!("{k}: ours {o:?}, checkpoint {s:?}"))
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && shapes.is_empty(),
        "{what}: {} missing {:?}\n{} extra {:?}\nshape mismatches {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(10).collect::<Vec<_>>(),
        shapes
    );
    eprintln!("{what}: {} keys, all shapes equal", ours.len());
}

fn cheap_store() -> VarStore {
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Half);
    vs
}

#[test]
fn denoising_unet_and_face_locator_keys_match_echomimic() {
    let want_full = read_tsv("denoising_unet.tsv", |_| true);
    assert_eq!(want_full.len(), 1274);
    {
        let vs = cheap_store();
        let _unet = UNet3DConditionModel::new(vs.root(), &UNet3DConfig::default());
        let ours = built(&vs);
        assert_same("denoising UNet", &ours, &want_full);
        let motion = ours.keys().filter(|k| k.contains("motion_modules.")).count();
        assert_eq!(motion, 588);
    }
    {
        // Stage-1 model (denoising_unet.pth alone): no motion modules.
        let want = read_tsv("denoising_unet.tsv", |k| !k.contains("motion_modules."));
        assert_eq!(want.len(), 686);
        let vs = cheap_store();
        let _unet = UNet3DConditionModel::new(
            vs.root(),
            &UNet3DConfig { motion: None, ..UNet3DConfig::default() },
        );
        assert_same("stage-1 denoising UNet", &built(&vs), &want);
    }
    {
        let want = read_tsv("face_locator.tsv", |_| true);
        let vs = cheap_store();
        let _fl = FaceLocator::new(vs.root(), &FaceLocatorConfig::default());
        assert_same("face locator", &built(&vs), &want);
    }
}
