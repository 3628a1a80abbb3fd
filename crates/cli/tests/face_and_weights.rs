//! `osa face` on a real photo with the real MTCNN, and `osa weights init`.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn osa() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osa"));
    cmd.current_dir(root()).env_remove("OSA_FACE_DETECTOR");
    cmd
}

fn detector() -> PathBuf {
    let p = root().join("target/weights/face_detector.safetensors");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

#[test]
fn face_prints_the_astronaut_and_the_crop_as_json() {
    let out = osa()
        .args(["face", "--image", "target/samples/portrait.png", "--face-detector"])
        .arg(detector())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    let b: Vec<f64> =
        faces[0]["box"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    // The astronaut's face sits in the upper middle of the 512x512 photo.
    assert!(b[0] > 150.0 && b[2] < 300.0 && b[1] > 30.0 && b[3] < 200.0, "{b:?}");
    assert!(faces[0]["probability"].as_f64().unwrap() > 0.99);
    assert_eq!(faces[0]["landmarks"].as_array().unwrap().len(), 5);
    assert_eq!(v["selected"], 0);
    assert_eq!(v["face_found"], true);
    let c: Vec<i64> =
        v["crop_box"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect();
    assert_eq!(c[2] - c[0], c[3] - c[1], "square crop: {c:?}");
    assert!(c[0] as f64 <= b[0] && c[2] as f64 >= b[2], "crop holds the face: {c:?} {b:?}");
}

#[test]
fn face_names_bad_inputs() {
    let out = osa()
        .args(["face", "--image", "Cargo.toml", "--face-detector"])
        .arg(detector())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image Cargo.toml"));
    let out = osa()
        .args([
            "face",
            "--image",
            "target/samples/portrait.png",
            "--face-detector",
            "/nonexistent.safetensors",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.safetensors"));
}

#[test]
fn weights_init_writes_a_loadable_directory() {
    let dir = std::env::temp_dir().join(format!("osa-cli-weights-{}", std::process::id()));
    let out = osa()
        .args(["weights", "init", "--preset", "tiny", "--seed", "5", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(manifest["preset"], "tiny");
    assert_eq!(manifest["seed"], 5);
    for f in ["vae", "reference_unet", "denoising_unet", "face_locator", "audio_encoder"] {
        assert!(dir.join(format!("{f}.safetensors")).is_file(), "{f}");
    }
    let bad =
        osa().args(["weights", "init", "--preset", "huge", "--out"]).arg(&dir).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("huge"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn audio_features_writes_mel_and_features() {
    let out =
        std::env::temp_dir().join(format!("osa-cli-features-{}.safetensors", std::process::id()));
    let run = osa()
        .args(["audio", "features", "--audio", "target/samples/speech.wav", "--fps", "25", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let tensors: std::collections::HashMap<String, tch::Tensor> =
        tch::Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let mel = tensors["mel"].size();
    let features = tensors["features"].size();
    assert_eq!(mel[0], 80);
    assert_eq!(features[1..], [50, 16], "tiny preset: 50 tokens of 16");
    // About one frame per 40 ms of a ~7.5 s sentence, and 100 mel frames/s.
    assert!(
        (mel[1] as f64 / 100.0 - features[0] as f64 / 25.0).abs() < 0.1,
        "{mel:?} {features:?}"
    );
    let bad = osa()
        .args(["audio", "features", "--audio", "Cargo.toml", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Cargo.toml"));
    std::fs::remove_file(&out).unwrap();
}
