//! The full-size VAE and reference UNet have exactly the tensor names and
//! shapes of EchoMimic's checkpoints (crates/model/keys/echomimic/vae.tsv
//! and reference_unet.tsv), and the stock SD1.5 UNet has the counts
//! config.md gives. Parameters are zero-filled (cheap) and built in fp16 to
//! halve the memory; each store is dropped before the next is built.

mod common;

use std::collections::BTreeMap;

use osa_model::{
    unet2d::{UNet2DConditionModel, UNet2DConfig},
    vae::{AutoencoderKL, VaeConfig},
};
use tch::{Device, Kind, nn::VarStore};

type Shapes = BTreeMap<String, Vec<i64>>;

fn read_tsv(name: &str) -> Shapes {
    common::echomimic_keys(name)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut cols = line.split('\t');
            let key = cols.next().unwrap().to_string();
            let dims = cols.next().unwrap().trim_matches(['[', ']']);
            (key, dims.split(',').filter(|d| !d.is_empty()).map(|d| d.parse().unwrap()).collect())
        })
        .collect()
}

fn half_store() -> VarStore {
    let mut vs = VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Half);
    vs
}

fn shapes(vs: &VarStore) -> Shapes {
    vs.variables().into_iter().map(|(k, v)| (k, v.size())).collect()
}

fn assert_same(what: &str, actual: &Shapes, expected: &Shapes) {
    let missing: Vec<_> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
    let extra: Vec<_> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(k, s)| {
            actual.get(k).filter(|a| *a != s).map(|a| format!("{k}: ours {a:?}, checkpoint {s:?}"))
        })
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && wrong.is_empty(),
        "{what}: missing {missing:?}\nextra {extra:?}\nwrong shapes {wrong:?}"
    );
}

fn numel(s: &Shapes) -> i64 {
    s.values().map(|d| d.iter().product::<i64>()).sum()
}

#[test]
fn vae_keys_match_vae_tsv() {
    let expected = read_tsv("vae.tsv");
    assert_eq!(expected.len(), 248);
    let vs = half_store();
    let _vae = AutoencoderKL::new(vs.root(), &VaeConfig::default());
    let actual = shapes(&vs);
    assert_same("vae", &actual, &expected);
    assert_eq!(numel(&actual), 83_653_863);
    assert!(vs.variables().values().all(|v| v.kind() == Kind::Half));
}

#[test]
fn reference_unet_keys_match_reference_unet_tsv() {
    let expected = read_tsv("reference_unet.tsv");
    assert_eq!(expected.len(), 570);
    let reference = {
        let vs = half_store();
        let _unet = UNet2DConditionModel::new(vs.root(), &UNet2DConfig::default());
        shapes(&vs)
    };
    assert_same("reference unet", &reference, &expected);
    assert_eq!(numel(&reference), 815_521_280);
    assert_eq!(UNet2DConfig::default().transformer_count(), 16);

    // Stock SD1.5 (config.md 1.3): 686 tensors, 859,520,964 parameters; the
    // reference UNet is it minus 16 x 7 attn2/norm2 tensors and the 4 head
    // tensors, with no extra key.
    let stock = {
        let vs = half_store();
        let _unet = UNet2DConditionModel::new(vs.root(), &UNet2DConfig::sd15());
        shapes(&vs)
    };
    assert_eq!(stock.len(), 686);
    assert_eq!(numel(&stock), 859_520_964);
    let dropped: Vec<&String> = stock.keys().filter(|k| !reference.contains_key(*k)).collect();
    assert_eq!(dropped.len(), 116);
    assert!(dropped.iter().all(|k| {
        k.contains(".attn2.")
            || k.contains(".norm2.") && k.contains("transformer_blocks")
            || k.starts_with("conv_")
    }));
    assert!(reference.iter().all(|(k, s)| stock.get(k) == Some(s)));
}
