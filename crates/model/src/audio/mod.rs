//! EchoMimic v1's audio feature path: whisper-tiny log-mel front end, the
//! whisper audio encoder's hidden states, and the per-video-frame windows
//! that the denoising UNet cross-attends to.
//!
//! Upstream: antgroup/echomimic `src/models/whisper/audio2feature.py` and its
//! bundled openai-whisper copy (`whisper/audio.py`, `whisper/model.py`,
//! `whisper/transcribe.py`). The pieces, in order:
//! - [`mel`]: 16 kHz samples -> log-mel `[80, n_samples / 160]` (100 frames/s).
//! - [`whisper`]: log-mel pieces of 3000 frames -> hidden states
//!   `[B, 1500, 5, 384]` (input of block 0 and the 4 block outputs, 50/s).
//! - [`features`]: the 30 s piece logic that turns a whole signal into
//!   `[T, 5, 384]`, and the windows `[n_frames, 50, 384]` for video frames.
//!
//! Each step is public on its own so that a streaming service can reuse
//! them; [`features::AudioFeatureExtractor`] chains them for a whole signal.

pub mod features;
pub mod mel;
pub mod whisper;

pub use features::{AudioFeatureExtractor, frame_windows, frames_for_duration};
pub use mel::LogMel;
pub use whisper::{WhisperEncoder, WhisperEncoderConfig};

/// Errors of the audio path: bad input shapes or lengths, and libtorch
/// failures.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A tensor argument does not have the shape the function needs.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape { what: &'static str, expected: String, got: Vec<i64> },
    /// The signal is too short for the STFT's reflect padding.
    #[error("audio too short: {samples} samples, need at least {min}")]
    TooShort { samples: usize, min: usize },
    /// A frame rate of zero.
    #[error("invalid video frame rate {0}")]
    InvalidFps(u32),
    /// A libtorch call failed (device, dtype, out of memory).
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Builds an [`AudioError::Shape`] for `t`.
pub(crate) fn shape_error(
    what: &'static str,
    expected: impl Into<String>,
    t: &tch::Tensor,
) -> AudioError {
    AudioError::Shape { what, expected: expected.into(), got: t.size() }
}
