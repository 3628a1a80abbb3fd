//! Each kind of bad input gets its own error, with a message that says what
//! is wrong.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use osa_audio::{AudioError, DecodeLimits, decode_file};

fn decode(bytes: &[u8]) -> Result<osa_audio::DecodedAudio, AudioError> {
    decode_file(bytes, None, &DecodeLimits::default())
}

/// The error, or a short panic (not the whole decoded buffer) when it decoded.
trait ExpectErr {
    fn expect_audio_err(self, what: &str) -> AudioError;
}

impl ExpectErr for Result<osa_audio::DecodedAudio, AudioError> {
    fn expect_audio_err(self, what: &str) -> AudioError {
        match self {
            Ok(d) => panic!("{what}: decoded {:?} of {} instead of failing", d.duration, d.codec),
            Err(e) => e,
        }
    }
}

fn wav(rate: u32, format_tag: u16, bits: u16, data: &[u8]) -> Vec<u8> {
    let block = bits / 8;
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&format_tag.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
    v.extend_from_slice(&block.to_le_bytes());
    v.extend_from_slice(&bits.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    v
}

fn fixture(name: &str) -> &'static [u8] {
    &common::fixtures().files.iter().find(|f| f.name == name).expect("fixture").bytes
}

#[test]
fn empty_input() {
    let err = decode(&[]).expect_audio_err("decode");
    assert_eq!(err, AudioError::EmptyInput);
    assert!(err.to_string().contains("empty"));
}

#[test]
fn not_audio() {
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x02\0\0\0";
    for (bytes, hint) in [
        (&b"{\"text\": \"this is json, not audio\"}"[..], Some("json")),
        (&png[..], None),
        (&[0u8; 4096][..], Some("wav")),
    ] {
        let err = decode_file(bytes, hint, &DecodeLimits::default()).expect_audio_err("decode");
        assert!(matches!(err, AudioError::UnknownFormat { .. }), "{err}");
        assert!(err.to_string().contains("not a recognised audio file"), "{err}");
    }
}

#[test]
fn unsupported_codec_and_no_audio_track() {
    let dir = tempfile::tempdir().unwrap();
    let master = common::speech_wav(dir.path());
    for (name, args, codec) in
        [("alac.m4a", ["-c:a", "alac"], "alac"), ("ac3.mp4", ["-c:a", "ac3"], "ac3")]
    {
        let path = dir.path().join(name);
        common::ffmpeg(&master, &args, &path);
        let err = decode(&std::fs::read(&path).unwrap()).expect_audio_err("decode");
        assert!(
            matches!(&err, AudioError::UnsupportedCodec { codec: c, .. } if c == codec),
            "{name}: {err}"
        );
        assert!(err.to_string().contains(&format!("unsupported audio codec {codec}")), "{err}");
    }

    let video = dir.path().join("video.mp4");
    common::run(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-f", "lavfi"])
            .args(["-i", "testsrc=duration=1:size=64x64:rate=5", "-c:v", "mpeg4"])
            .arg(&video),
    );
    let err = decode(&std::fs::read(&video).unwrap()).expect_audio_err("decode");
    assert!(matches!(err, AudioError::NoAudioTrack { .. }), "{err}");
    assert!(err.to_string().contains("no audio track"), "{err}");
}

#[test]
fn truncated_files() {
    for name in [
        "ref16k.wav",
        "w44k_st_f32.wav",
        "f44k_st.flac",
        "m44k_st.mp3",
        "v44k_st.ogg",
        "o48k_st.opus",
    ] {
        let bytes = fixture(name);
        for frac in [0.5, 0.99] {
            let cut = &bytes[..(bytes.len() as f64 * frac) as usize];
            let err = decode(cut).expect_audio_err("decode");
            assert!(matches!(err, AudioError::Truncated { .. }), "{name} cut at {frac}: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
    // An mp4 whose moov box (written last by default) was cut off.
    let bytes = fixture("a44k_st.m4a");
    let err = decode(&bytes[..bytes.len() / 2]).expect_audio_err("decode");
    assert!(matches!(err, AudioError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("truncated or incomplete"), "{err}");
    // A header alone.
    let err = decode(&fixture("f16k.flac")[..20]).expect_audio_err("decode");
    assert!(matches!(err, AudioError::Truncated { .. } | AudioError::Corrupt { .. }), "{err}");
}

#[test]
fn corrupt_data() {
    // Overwrite the middle third of a FLAC file: frames fail their CRC or
    // do not parse.
    let mut bytes = fixture("f44k_st.flac").to_vec();
    let n = bytes.len();
    let mut rng = common::Rng(0x1234_5678);
    for b in &mut bytes[n / 3..2 * n / 3] {
        *b = rng.next() as u8;
    }
    let err = decode(&bytes).expect_audio_err("decode");
    assert!(matches!(err, AudioError::Corrupt { .. } | AudioError::Truncated { .. }), "{err}");
}

#[test]
fn zero_length() {
    let err = decode(&wav(16_000, 1, 16, &[])).expect_audio_err("decode");
    assert!(matches!(err, AudioError::ZeroLength { .. }), "{err}");
    assert!(err.to_string().contains("zero length"), "{err}");
}

#[test]
fn too_long_is_refused_from_the_header_without_decoding() {
    // 11 minutes of 48 kHz silence, over the default 10-minute limit.
    let data = vec![0u8; 48_000 * 2 * 660];
    let bytes = wav(48_000, 1, 16, &data);
    let started = Instant::now();
    let err = decode(&bytes).expect_audio_err("decode");
    let took = started.elapsed();
    assert!(
        matches!(err, AudioError::TooLong { from_header: true, found, .. } if found == Duration::from_secs(660)),
        "{err}"
    );
    assert!(err.to_string().contains("too long"), "{err}");
    assert!(took < Duration::from_millis(500), "took {took:?}: it decoded the file");
}

#[test]
fn too_long_is_refused_while_decoding_when_the_header_does_not_say() {
    // A WAV written to a pipe has no data length; the limit stops decoding.
    let dir = tempfile::tempdir().unwrap();
    let master = common::speech_wav(dir.path());
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(&master)
        .args(["-f", "wav", "-c:a", "pcm_s16le", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let ok = decode(&out.stdout).expect("a length-less WAV decodes to its end");
    assert!(ok.duration > Duration::from_secs(5));
    let limits = DecodeLimits { max_duration: Duration::from_secs(2) };
    let err = decode_file(&out.stdout, None, &limits).expect_audio_err("decode");
    assert!(
        matches!(err, AudioError::TooLong { from_header: false, found, .. } if found < Duration::from_secs(3)),
        "{err}"
    );
    // Files with a header that states the length are refused before decoding.
    let err = decode_file(fixture("m44k_st.mp3"), None, &limits).expect_audio_err("decode");
    assert!(matches!(err, AudioError::TooLong { from_header: true, .. }), "{err}");
}

#[test]
fn non_finite_samples() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut samples = vec![0.1f32; 16_000];
        samples[12_345] = bad;
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let err = decode(&wav(16_000, 3, 32, &data)).expect_audio_err("decode");
        assert!(matches!(err, AudioError::NonFinite { frame: 12_345, .. }), "{err}");
        assert!(err.to_string().contains("non-finite sample"), "{err}");
        assert!(err.to_string().contains("0.772 s"), "{err}");
    }
}

#[test]
fn errors_classify_for_grpc() {
    assert!(AudioError::EmptyInput.is_invalid_input());
    assert!(!AudioError::Internal("x".into()).is_invalid_input());
}
