//! Audio in for the audio-encoder stage: whole files and live PCM16 chunks
//! become 16 kHz mono `f32` samples, the input the whisper-tiny feature
//! extractor expects (EchoMimic v1 / Hallo both run their audio encoders at
//! 16 kHz).
//!
//! - [`decode_file`]: wav, mp3, flac, ogg/vorbis, ogg/opus, webm/opus, m4a/aac,
//!   adts/aac at any
//!   sample rate and channel count. Containers and most codecs are decoded by
//!   symphonia; Opus (which symphonia 0.6 does not decode) by the pure-Rust
//!   `opus-rs` decoder. Encoder delay is removed so the samples line up with
//!   the source: MP3 LAME gapless info and Ogg granule positions are applied by
//!   symphonia, Opus pre-skip and the MP4 edit list (AAC priming) here; see
//!   [`decode`] for details. Channels are averaged, then an FFT resampler brings
//!   the signal to 16 kHz with its latency removed (see [`resample`]).
//! - [`PcmAssembler`]: the live path, PCM16LE mono 16 kHz chunks of any size,
//!   bounded.
//! - [`normalize_loudness`]: optional EBU R128 integrated-loudness
//!   normalisation, off unless the caller asks for it.
//!
//! Every way input can be bad maps to one [`AudioError`] variant whose message
//! names the problem in terms a client can act on.

mod decode;
mod error;
mod loudness;
mod mp4;
mod opus;
mod pcm;
pub mod resample;

pub use decode::{DecodeLimits, DecodedAudio, decode_file};
pub use error::AudioError;
pub use loudness::{LoudnessConfig, LoudnessReport, normalize_loudness};
pub use pcm::{PcmAssembler, PcmAssemblerConfig};

/// Sample rate of everything this crate hands out: whisper's 16 kHz.
pub const TARGET_SAMPLE_RATE: u32 = 16_000;
