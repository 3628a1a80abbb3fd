//! Parity of `osa_model::taesd::TaesdDecoder` with the TAESD decoder as
//! madebyollin/taesd's taesd.py builds it (tests/reference/taesd.py), on
//! seeded random weights saved under the bare `taesd_decoder.pth` keys
//! (loaded through `bare_key_rename`, as the decoder service does).

mod common;

use osa_model::taesd::{TaesdConfig, TaesdDecoder, bare_key_rename};
use tch::{Device, nn::VarStore};

const TOL: f64 = 1e-4;

#[test]
fn taesd_decoder_matches_taesd_py() {
    let fx = common::fixture("taesd.py", "taesd", &[]);
    let io = common::read(&fx.io);
    let mut vs = VarStore::new(Device::Cpu);
    let dec = TaesdDecoder::new(vs.root() / "decoder", &TaesdConfig::default());
    let report = osa_model::nn::load_safetensors(&mut vs, &fx.weights, Some(&bare_key_rename))
        .expect("every decoder key present");
    assert_eq!(report.renamed.len(), vs.variables().len(), "every bare key renamed and used");
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(report.loaded, vs.variables().len());
    let raw = dec.forward(&io["latent"]).unwrap();
    assert_eq!(raw.size(), [2, 3, 64, 48]);
    common::assert_close("taesd raw", &raw, &io["raw"], TOL);
    common::assert_close("taesd decoded", &dec.decode(&io["latent"]).unwrap(), &io["decoded"], TOL);
    // The output is not degenerate: part of it is inside (0, 1).
    let inside = io["decoded"].gt(0.0).logical_and(&io["decoded"].lt(1.0)).sum(tch::Kind::Int64);
    assert!(i64::try_from(inside).unwrap() > 1000, "reference output saturated");
    // Batch equals single.
    let one = dec.forward(&io["latent"].narrow(0, 1, 1)).unwrap();
    common::assert_close("taesd row 1 alone", &one, &io["raw"].narrow(0, 1, 1), TOL);
}
