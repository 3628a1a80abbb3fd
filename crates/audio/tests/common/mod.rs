//! Fixtures made at test time from real speech: espeak-ng speaks a sentence,
//! ffmpeg converts it to every container/codec the decoder supports. Nothing
//! binary is committed; the files live in a temp dir only while being made.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use osa_audio::{DecodeLimits, decode_file};

/// One encoded file.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File name, also used as the probe hint's extension.
    pub name: String,
    pub bytes: Vec<u8>,
    /// Lossless (pcm, flac): compared sample by sample.
    pub lossless: bool,
    /// Longest codec frame in seconds: the duration tolerance for lossy codecs.
    pub frame_secs: f64,
    pub rate: u32,
    pub channels: usize,
}

impl Fixture {
    pub fn ext(&self) -> &str {
        self.name.rsplit('.').next().unwrap_or("")
    }
}

pub struct Fixtures {
    /// The reference: our decode of the 16 kHz mono s16 WAV.
    pub reference: Vec<f32>,
    pub files: Vec<Fixture>,
}

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog. Real time talking \
                        portraits need lips that move exactly with the voice.";

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn ffmpeg(input: &Path, args: &[&str], output: &Path) {
    run(Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(input)
        .args(args)
        .arg(output));
}

/// Speech at espeak's native 22.05 kHz, written into `dir`.
pub fn speech_wav(dir: &Path) -> std::path::PathBuf {
    let master = dir.join("master.wav");
    run(Command::new("espeak-ng").arg("-w").arg(&master).arg(SENTENCE));
    master
}

/// Mono to stereo at unity gain (ffmpeg's default upmix is -3 dB per side),
/// so the average of the channels equals the mono source.
const DUP: &str = "pan=stereo|c0=c0|c1=c0";
/// Mono to 5.1, every channel the source.
const DUP51: &str = "pan=5.1|c0=c0|c1=c0|c2=c0|c3=c0|c4=c0|c5=c0";

/// (name, ffmpeg args, lossless, frame seconds, rate, channels)
type Spec = (&'static str, &'static [&'static str], bool, f64, u32, usize);

#[rustfmt::skip]
const SPECS: &[Spec] = &[
    ("ref16k.wav", &["-ar", "16000", "-ac", "1", "-c:a", "pcm_s16le"], true, 0.0, 16_000, 1),
    ("w8k.wav", &["-ar", "8000", "-ac", "1", "-c:a", "pcm_s16le"], true, 0.0, 8_000, 1),
    ("w22k.wav", &["-ar", "22050", "-ac", "1", "-c:a", "pcm_s16le"], true, 0.0, 22_050, 1),
    ("w44k.wav", &["-ar", "44100", "-ac", "1", "-c:a", "pcm_s16le"], true, 0.0, 44_100, 1),
    ("w48k.wav", &["-ar", "48000", "-ac", "1", "-c:a", "pcm_s16le"], true, 0.0, 48_000, 1),
    ("w44k_st.wav", &["-ar", "44100", "-af", DUP, "-c:a", "pcm_s16le"], true, 0.0, 44_100, 2),
    ("w48k_st.wav", &["-ar", "48000", "-af", DUP, "-c:a", "pcm_s16le"], true, 0.0, 48_000, 2),
    ("w16k_f32.wav", &["-ar", "16000", "-ac", "1", "-c:a", "pcm_f32le"], true, 0.0, 16_000, 1),
    ("w44k_st_f32.wav", &["-ar", "44100", "-af", DUP, "-c:a", "pcm_f32le"], true, 0.0, 44_100, 2),
    ("f16k.flac", &["-ar", "16000", "-ac", "1", "-c:a", "flac"], true, 0.0, 16_000, 1),
    ("f44k_st.flac", &["-ar", "44100", "-af", DUP, "-c:a", "flac"], true, 0.0, 44_100, 2),
    ("f48k_51.flac", &["-ar", "48000", "-af", DUP51, "-c:a", "flac"], true, 0.0, 48_000, 6),
    ("m44k_st.mp3", &["-ar", "44100", "-ac", "2", "-c:a", "libmp3lame", "-b:a", "128k"], false, MP3_44, 44_100, 2),
    ("m22k.mp3", &["-ar", "22050", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "64k"], false, MP3_22, 22_050, 1),
    ("m44k_noxing.mp3", &["-ar", "44100", "-c:a", "libmp3lame", "-write_xing", "0"], false, MP3_44, 44_100, 1),
    ("v44k_st.ogg", &["-ar", "44100", "-ac", "2", "-c:a", "libvorbis", "-q:a", "4"], false, VORBIS_44, 44_100, 2),
    ("v16k.ogg", &["-ar", "16000", "-ac", "1", "-c:a", "libvorbis", "-q:a", "4"], false, VORBIS_16, 16_000, 1),
    ("o48k_st.opus", &["-ar", "48000", "-ac", "2", "-c:a", "libopus", "-b:a", "64k"], false, OPUS, 48_000, 2),
    ("o16k.opus", &["-ar", "16000", "-ac", "1", "-c:a", "libopus", "-b:a", "32k"], false, OPUS, 48_000, 1),
    ("o48k_51.opus", &["-ar", "48000", "-af", DUP51, "-c:a", "libopus", "-b:a", "256k"], false, OPUS, 48_000, 6),
    ("o48k.webm", &["-ar", "48000", "-c:a", "libopus", "-b:a", "64k"], false, OPUS, 48_000, 1),
    ("a44k_st.m4a", &["-ar", "44100", "-ac", "2", "-c:a", "aac", "-b:a", "128k"], false, AAC_44, 44_100, 2),
    ("a22k.m4a", &["-ar", "22050", "-ac", "1", "-c:a", "aac", "-b:a", "64k"], false, AAC_22, 22_050, 1),
    ("a44k.aac", &["-ar", "44100", "-c:a", "aac", "-b:a", "96k"], false, AAC_44, 44_100, 1),
    ("a48k_noedit.m4a", &["-ar", "48000", "-c:a", "aac", "-use_editlist", "0"], false, AAC_48, 48_000, 1),
];

// Longest codec frame in seconds (the duration tolerance for lossy codecs).
const MP3_44: f64 = 1152.0 / 44_100.0;
const MP3_22: f64 = 576.0 / 22_050.0;
const VORBIS_44: f64 = 2048.0 / 44_100.0;
const VORBIS_16: f64 = 2048.0 / 16_000.0;
const OPUS: f64 = 0.02;
const AAC_44: f64 = 1024.0 / 44_100.0;
const AAC_22: f64 = 1024.0 / 22_050.0;
const AAC_48: f64 = 1024.0 / 48_000.0;

fn make() -> Fixtures {
    let dir = tempfile::tempdir().expect("temp dir");
    let master = speech_wav(dir.path());
    let files: Vec<Fixture> = SPECS
        .iter()
        .map(|&(name, args, lossless, frame_secs, rate, channels)| {
            let path = dir.path().join(name);
            ffmpeg(&master, args, &path);
            let bytes = std::fs::read(&path).expect("read fixture");
            Fixture { name: name.to_owned(), bytes, lossless, frame_secs, rate, channels }
        })
        .collect();
    let reference = decode_file(&files[0].bytes, Some("wav"), &DecodeLimits::default())
        .expect("reference")
        .samples;
    Fixtures { reference, files }
}

/// The fixtures, made once per test binary.
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(make)
}

/// Normalised cross-correlation of `out[i]` with `reference[i - lag]` over a
/// window of up to 3 s: positive `lag` means `out` is late.
pub fn correlation_at(out: &[f32], reference: &[f32], lag: i64, max_lag: i64) -> f64 {
    let start = max_lag as usize;
    let end = out.len().min(reference.len()).saturating_sub(max_lag as usize).min(start + 48_000);
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for i in start..end {
        let (x, y) = (f64::from(out[i]), f64::from(reference[(i as i64 - lag) as usize]));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { ab / (aa * bb).sqrt() }
}

/// The lag in `-max_lag..=max_lag` with the highest correlation, and that correlation.
pub fn best_lag(out: &[f32], reference: &[f32], max_lag: i64) -> (i64, f64) {
    (-max_lag..=max_lag)
        .map(|lag| (lag, correlation_at(out, reference, lag, max_lag)))
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .expect("non-empty lag range")
}

/// Deterministic xorshift for the fuzz tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}
