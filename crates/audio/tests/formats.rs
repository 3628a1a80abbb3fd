//! Every supported container/codec decodes to 16 kHz mono that matches the
//! reference (our decode of the 16 kHz mono PCM WAV made from the same
//! speech), with no time offset: the lag found by cross-correlation must be
//! within 1 ms, which is what catches untrimmed AAC priming (~23-48 ms),
//! Opus pre-skip (6.5 ms) or MP3 encoder delay.

mod common;

use osa_audio::{DecodeLimits, TARGET_SAMPLE_RATE, decode_file};

/// 1 ms at 16 kHz.
const MAX_LAG: i64 = 16;
/// Search range for the lag: 50 ms either way.
const SEARCH: i64 = 800;

#[test]
fn every_format_matches_the_reference_without_time_offset() {
    let fixtures = common::fixtures();
    let reference = &fixtures.reference;
    let ref_secs = reference.len() as f64 / f64::from(TARGET_SAMPLE_RATE);
    let mut failures = Vec::new();
    for fx in &fixtures.files {
        let out = match decode_file(&fx.bytes, Some(fx.ext()), &DecodeLimits::default()) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{}: {e}", fx.name));
                continue;
            }
        };
        let (lag, corr) = common::best_lag(&out.samples, reference, SEARCH);
        let n = out.samples.len().min(reference.len());
        let max_err = out.samples[..n]
            .iter()
            .zip(&reference[..n])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let secs = out.duration.as_secs_f64();
        let out_secs = out.samples.len() as f64 / 16_000.0;
        let report = format!(
            "{}: codec {} rate {} ch {} lag {lag} corr {corr:.4} max_err {max_err:.4} \
             duration {secs:.4}s (reference {ref_secs:.4}s)",
            fx.name, out.codec, out.source_sample_rate, out.source_channels
        );
        println!("{report}");
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{report}: {what}"));
            }
        };
        check(out.sample_rate() == 16_000, "output rate");
        check(out.source_sample_rate == fx.rate, "source rate");
        check(out.source_channels == fx.channels, "source channels");
        check(lag.abs() <= MAX_LAG, "time offset over 1 ms");
        check((out_secs - secs).abs() <= 1.0 / 16_000.0, "sample count vs duration");
        if fx.lossless {
            check((secs - ref_secs).abs() <= 0.001, "duration differs by more than 1 ms");
            if fx.rate == 16_000 {
                // Same rate: only the sample format differs (s16 vs f32).
                check(max_err <= 1e-4, "samples differ");
            } else if fx.rate > 16_000 {
                // Another resampler (ffmpeg's) made the file; ours brings it back.
                check(corr > 0.999 && max_err <= 0.05, "samples differ");
            } else {
                // 8 kHz lost everything above 4 kHz.
                check(corr > 0.99, "samples differ");
            }
        } else {
            check(corr > 0.9, "correlation below 0.9");
            check((secs - ref_secs).abs() <= fx.frame_secs + 0.001, "duration off by over a frame");
        }
    }
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}

/// A click at a known time must come out at that time from every lossy
/// codec: the sharpest check of priming/pre-skip trimming.
#[test]
fn click_position_is_preserved_by_lossy_codecs() {
    let dir = tempfile::tempdir().unwrap();
    let rate = 44_100u32;
    let click_at = 1.0f64; // seconds
    let mut samples = vec![0i16; (rate as f64 * 2.0) as usize];
    let c = (click_at * f64::from(rate)) as usize;
    for (k, s) in samples[c..c + 8].iter_mut().enumerate() {
        *s = if k % 2 == 0 { 24_000 } else { -24_000 };
    }
    let wav = dir.path().join("click.wav");
    std::fs::write(&wav, pcm16_wav(rate, &samples)).unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("click.m4a", &["-c:a", "aac", "-b:a", "128k"]),
        ("click_noedit.m4a", &["-c:a", "aac", "-b:a", "128k", "-use_editlist", "0"]),
        ("click.mp3", &["-c:a", "libmp3lame", "-b:a", "128k"]),
        ("click.ogg", &["-c:a", "libvorbis"]),
        ("click.opus", &["-c:a", "libopus", "-b:a", "96k"]),
        ("click.flac", &["-c:a", "flac"]),
    ];
    let mut failures = Vec::new();
    for (name, args) in cases {
        let path = dir.path().join(name);
        common::ffmpeg(&wav, args, &path);
        let out = decode_file(&std::fs::read(&path).unwrap(), None, &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let peak = out
            .samples
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .map(|(i, _)| i as f64 / 16_000.0)
            .unwrap();
        let offset_ms = (peak - click_at) * 1000.0;
        println!("{name}: click at {peak:.5} s ({offset_ms:+.2} ms)");
        if offset_ms.abs() > 1.0 {
            failures.push(format!("{name}: click {offset_ms:+.2} ms off"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

fn pcm16_wav(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * 2).to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(&data);
    v
}

/// The hint only speeds up probing: a wrong one does not stop a file from
/// decoding by its content.
#[test]
fn a_wrong_hint_does_not_matter() {
    let fixtures = common::fixtures();
    for (name, hint) in
        [("f16k.flac", "mp3"), ("ref16k.wav", "audio/ogg"), ("o48k_st.opus", ".M4A")]
    {
        let fx = fixtures.files.iter().find(|f| f.name == name).unwrap();
        let out = decode_file(&fx.bytes, Some(hint), &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{name} with hint {hint}: {e}"));
        assert!(out.duration.as_secs_f64() > 6.9, "{name}");
    }
}

/// Optional loudness normalisation on real speech reaches its target.
#[test]
fn loudness_normalisation_on_speech() {
    let fixtures = common::fixtures();
    let mut quiet: Vec<f32> = fixtures.reference.iter().map(|s| s * 0.2).collect();
    let cfg = osa_audio::LoudnessConfig::default();
    let first = osa_audio::normalize_loudness(&mut quiet, 16_000, &cfg).unwrap();
    let before = first.measured_lufs.expect("speech has a loudness");
    assert!(first.gain_db > 5.0, "{first:?}");
    let second = osa_audio::normalize_loudness(&mut quiet, 16_000, &cfg).unwrap();
    let after = second.measured_lufs.unwrap();
    assert!(
        (after - cfg.target_lufs).abs() < 0.5,
        "before {before:.2} LUFS, after {after:.2} LUFS"
    );
    let peak = quiet.iter().fold(0f32, |m, s| m.max(s.abs()));
    assert!(peak <= cfg.peak_ceiling + 1e-4, "peak {peak}");
}

/// opus-rs (pure Rust, decoding at 16 kHz) against ffmpeg's own Opus
/// decoder, and against the original speech as closely as libopus gets.
///
/// libopus (through ffmpeg) only decodes at 48 kHz there; its SILK
/// 16 -> 48 kHz upsampler smears speech-mode streams (correlation with the
/// original 0.979 at a 1-sample lag for the 32 kbps mono file), and opus-rs
/// at 48 kHz reproduces exactly that. Decoding at 16 kHz avoids it.
#[test]
fn opus_decoder_agrees_with_reference_decoders() {
    let fixtures = common::fixtures();
    let dir = tempfile::tempdir().unwrap();
    for name in ["o48k_st.opus", "o16k.opus", "o48k_51.opus"] {
        let fx = fixtures.files.iter().find(|f| f.name == name).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, &fx.bytes).unwrap();
        let decode_with = |decoder: &str| -> Vec<f32> {
            let raw = dir.path().join(format!("{name}.{decoder}.f32"));
            // `-c:a` before `-i` picks the decoder.
            common::run(
                std::process::Command::new("ffmpeg")
                    .args(["-hide_banner", "-loglevel", "error", "-c:a", decoder, "-i"])
                    .arg(&path)
                    .args(["-ac", "1", "-ar", "16000", "-f", "f32le"])
                    .arg(&raw),
            );
            std::fs::read(&raw)
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let ours = decode_file(&fx.bytes, None, &DecodeLimits::default()).unwrap().samples;
        let (lag, corr) = common::best_lag(&ours, &decode_with("opus"), SEARCH);
        let (_, ours_vs_source) = common::best_lag(&ours, &fixtures.reference, SEARCH);
        let (_, libopus_vs_source) =
            common::best_lag(&decode_with("libopus"), &fixtures.reference, SEARCH);
        println!(
            "{name}: vs ffmpeg's decoder lag {lag} corr {corr:.5}; vs the source: ours \
             {ours_vs_source:.4}, libopus {libopus_vs_source:.4}"
        );
        assert!(lag.abs() <= 1 && corr > 0.999, "{name}: lag {lag} corr {corr}");
        assert!(ours_vs_source >= libopus_vs_source - 0.001, "{name}");
    }
}
