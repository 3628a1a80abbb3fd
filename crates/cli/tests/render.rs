//! `osa render` end to end on the embedded default (tiny preset, seeded
//! random weights, the real MTCNN): real speech in, an MP4 out that ffprobe
//! and ffmpeg accept with the right codec, size, rate, frame count and
//! duration; bad arguments are refused by name.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn osa() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osa"));
    cmd.current_dir(root()).env_remove("OSA_WEIGHTS").env_remove("OSA_FACE_DETECTOR");
    cmd
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("osa-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn speech(path: &Path, text: &str) {
    let ok = Command::new("espeak-ng").arg("-w").arg(path).arg(text).status().unwrap().success();
    assert!(ok, "espeak-ng failed (run scripts/setup.sh)");
}

fn ffprobe(path: &Path, stream: &str, entries: &str) -> String {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", stream, "-show_entries"])
        .arg(format!("stream={entries}"))
        .args(["-of", "default=noprint_wrappers=1:nokey=1"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn renders_speech_into_an_mp4_an_independent_decoder_accepts() {
    let wav = tmp("hello.wav");
    speech(&wav, "Hello there, friend.");
    let out_path = tmp("hello.mp4");
    let out = osa()
        .args(["render", "--image", "target/samples/portrait.png", "--fps", "24", "--seed", "3"])
        .arg("--audio")
        .arg(&wav)
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("random weights do not make a real face"), "{stderr}");

    let v =
        ffprobe(&out_path, "v:0", "codec_name,width,height,r_frame_rate,nb_read_frames,duration");
    let v: Vec<&str> = v.lines().collect();
    assert_eq!(&v[..4], ["h264", "64", "64", "24/1"], "{v:?}");
    let frames: f64 = v[5].parse().unwrap();
    let video_secs: f64 = v[4].parse().unwrap();
    let a = ffprobe(&out_path, "a:0", "codec_name,duration");
    let a: Vec<&str> = a.lines().collect();
    assert_eq!(a[0], "opus");
    let audio_secs: f64 = a[1].parse().unwrap();
    let wav_secs = std::fs::metadata(&wav).unwrap().len() as f64 / 2.0 / 22_050.0; // espeak: 22.05 kHz s16 mono
    assert!((audio_secs - wav_secs).abs() < 0.01, "audio {audio_secs} vs input {wav_secs}");
    assert!(
        (video_secs - audio_secs).abs() <= 1.0 / 24.0 + 1e-6,
        "video {video_secs} vs audio {audio_secs}"
    );
    assert_eq!(frames, (audio_secs * 24.0).round(), "one frame per 1/24 s of audio");

    let decode = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&out_path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        decode.status.success() && decode.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&decode.stderr)
    );

    // Same inputs and seed, same video.
    let again = tmp("again.mp4");
    let out = osa()
        .args(["render", "--image", "target/samples/portrait.png", "--fps", "24", "--seed", "3"])
        .arg("--audio")
        .arg(&wav)
        .arg("--out")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(std::fs::read(&out_path).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn bad_arguments_are_named_and_nothing_is_written() {
    let out_path = tmp("never.mp4");
    let cases: &[(&[&str], &str)] = &[
        (&["--image", "/nonexistent.png", "--audio", "Cargo.toml"], "--image /nonexistent.png"),
        (
            &["--image", "target/samples/portrait.png", "--audio", "Cargo.toml", "--fps", "60"],
            "--fps 60",
        ),
        (
            &["--image", "target/samples/portrait.png", "--audio", "Cargo.toml", "--quality", "3"],
            "--quality 3",
        ),
        (&["--image", "Cargo.toml", "--audio", "Cargo.toml"], "--image Cargo.toml"),
        (
            &["--image", "target/samples/portrait.png", "--audio", "Cargo.toml"],
            "--audio Cargo.toml",
        ),
    ];
    for (args, needle) in cases {
        let out = osa().arg("render").args(*args).arg("--out").arg(&out_path).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!out_path.exists());
}
