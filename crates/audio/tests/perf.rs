//! Decode speed on long files (ignored by default; run in release):
//! `cargo test -p osa-audio --release --test perf -- --ignored --nocapture`

mod common;

use std::process::Command;
use std::time::Instant;

use osa_audio::{DecodeLimits, decode_file};

#[test]
#[ignore = "slow: encodes ~10 minutes of audio per format; run in release"]
fn ten_minute_files() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("long.wav");
    // 590 s of speech-like noise bursts at 48 kHz stereo (just under the default limit).
    common::run(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i"])
            .arg("anoisesrc=d=590:c=pink:r=48000:a=0.3,volume='0.5+0.5*sin(2*PI*3*t)':eval=frame")
            .args(["-ac", "2"])
            .arg(&master),
    );
    let cases: &[(&str, &[&str])] = &[
        ("long_44k.wav", &["-ar", "44100"]),
        ("long.flac", &["-c:a", "flac"]),
        ("long.mp3", &["-c:a", "libmp3lame", "-b:a", "128k"]),
        ("long.ogg", &["-c:a", "libvorbis"]),
        ("long.opus", &["-c:a", "libopus", "-b:a", "64k"]),
        ("long.m4a", &["-c:a", "aac", "-b:a", "128k"]),
    ];
    for (name, args) in cases {
        let path = dir.path().join(name);
        common::ffmpeg(&master, args, &path);
        let bytes = std::fs::read(&path).unwrap();
        let started = Instant::now();
        let out = decode_file(&bytes, None, &DecodeLimits::default()).unwrap();
        let took = started.elapsed();
        println!(
            "{name}: {:.1} MB, {:.1} s of audio decoded in {:.2} s ({:.0}x real time)",
            bytes.len() as f64 / 1e6,
            out.duration.as_secs_f64(),
            took.as_secs_f64(),
            out.duration.as_secs_f64() / took.as_secs_f64()
        );
        assert_eq!(out.samples.len(), (out.duration.as_secs_f64() * 16_000.0).ceil() as usize);
    }
}
