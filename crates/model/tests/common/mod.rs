//! Helpers shared by the parity tests.
//!
//! Each parity test has a Python reference script in `tests/reference/`
//! that builds the upstream module (diffusers, openai-whisper,
//! facenet-pytorch, plain PyTorch) with seeded random weights and writes two
//! safetensors files into the fixture directory (`$OSA_PARITY_DIR`, default
//! `<workspace>/target/parity`):
//! - `<name>.weights.safetensors`: the state dict under checkpoint key names,
//! - `<name>.io.safetensors`: inputs and reference outputs.
//!
//! [`fixture`] (re)generates them with the workspace venv's python whenever
//! they are missing or older than the script, so `cargo test` alone works.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use tch::Tensor;

static GENERATE: Mutex<()> = Mutex::new(());

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn python() -> PathBuf {
    let venv = std::env::var_os("OSA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} missing: run scripts/setup.sh first", py.display());
    py
}

pub fn parity_dir() -> PathBuf {
    let dir = std::env::var_os("OSA_PARITY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/parity"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Paths of the fixture `name` made by `tests/reference/<script>.py`, run with
/// `args` (the script writes `<out_dir>/<name>.weights.safetensors` and
/// `<out_dir>/<name>.io.safetensors`; it gets `--out-dir DIR --name NAME`).
pub struct Fixture {
    pub weights: PathBuf,
    pub io: PathBuf,
}

pub fn fixture(script: &str, name: &str, args: &[&str]) -> Fixture {
    let _guard = GENERATE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = parity_dir();
    let script_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(script);
    let weights = dir.join(format!("{name}.weights.safetensors"));
    let io = dir.join(format!("{name}.io.safetensors"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let common = script_path.with_file_name("common.py");
    let newest_input = [mtime(&script_path), mtime(&common)].into_iter().flatten().max();
    let stale = match (mtime(&weights), mtime(&io)) {
        (Some(w), Some(i)) => newest_input.is_some_and(|s| s > w.min(i)),
        _ => true,
    };
    if stale {
        let out = Command::new(python())
            .arg(&script_path)
            .arg("--out-dir")
            .arg(&dir)
            .arg("--name")
            .arg(name)
            .args(args)
            .env("PYTHONHASHSEED", "0")
            .env("CUDA_VISIBLE_DEVICES", "")
            .output()
            .expect("run the reference script");
        assert!(
            out.status.success(),
            "{} failed:\n{}\n{}",
            script_path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Fixture { weights, io }
}

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// Relative L2 error ||a - b|| / ||b|| in f64.
pub fn rel_l2(actual: &Tensor, expected: &Tensor) -> f64 {
    assert_eq!(actual.size(), expected.size(), "shape mismatch");
    let a = actual.to_kind(tch::Kind::Double);
    let b = expected.to_kind(tch::Kind::Double);
    let num = (&a - &b).norm().double_value(&[]);
    let den = b.norm().double_value(&[]).max(1e-30);
    num / den
}

/// Asserts `rel_l2(actual, expected) <= tol`, naming `what`.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    let err = rel_l2(actual, expected);
    assert!(err <= tol, "{what}: relative L2 error {err:.3e} > {tol:.1e}");
    eprintln!("{what}: relative L2 error {err:.3e} (tolerance {tol:.1e})");
}

/// Text of one of EchoMimic's key lists (`crates/model/keys/echomimic/NAME`:
/// every tensor name and shape its checkpoints hold).
pub fn echomimic_keys(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/echomimic").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
