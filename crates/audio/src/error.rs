//! One error type for everything that can be wrong with audio input.
//!
//! Variants carry the facts a client needs to fix its request (which chunk,
//! how long, which codec); the `Display` text is meant to be returned to the
//! client verbatim (as gRPC INVALID_ARGUMENT, or RESOURCE_EXHAUSTED for
//! [`AudioError::BufferFull`]).

use std::time::Duration;

/// Why audio input was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum AudioError {
    /// The request carried no bytes at all.
    #[error("audio input is empty (0 bytes)")]
    EmptyInput,

    /// The bytes are not a container this service can read.
    #[error(
        "not a recognised audio file{}: supported are wav, mp3, flac, ogg and webm/mkv \
         (vorbis, opus, flac), m4a/mp4 and adts (aac)",
        hint.as_deref().map(|h| format!(" (hint {h:?})")).unwrap_or_default()
    )]
    UnknownFormat {
        /// The file-type hint the client gave, if any.
        hint: Option<String>,
    },

    /// The container holds no audio track (e.g. a video-only mp4).
    #[error("the {container} file contains no audio track")]
    NoAudioTrack {
        /// Container name.
        container: String,
    },

    /// The audio track uses a codec that cannot be decoded here.
    #[error(
        "unsupported audio codec {codec} in {container}: supported codecs are pcm, mp3, flac, \
         vorbis, opus and aac-lc"
    )]
    UnsupportedCodec {
        /// Codec name (or symphonia's numeric id when unnamed).
        codec: String,
        /// Container name.
        container: String,
    },

    /// The codec is known but this stream uses a feature or layout that is not
    /// supported (e.g. a sample rate of 0, an unsupported Opus channel mapping).
    #[error("unsupported audio stream: {detail}")]
    UnsupportedStream {
        /// What exactly is unsupported.
        detail: String,
    },

    /// The data ends before the container says it should.
    #[error(
        "the {container} audio is truncated: the data ends {}{}",
        if decoded.is_zero() {
            "before any audio".to_owned()
        } else {
            format!("after {:.3} s of audio", decoded.as_secs_f64())
        },
        expected.map(|e| format!(" but the header announces {:.3} s", e.as_secs_f64())).unwrap_or_default()
    )]
    Truncated {
        /// Container name.
        container: String,
        /// Audio decoded before the data ran out.
        decoded: Duration,
        /// Length announced by the header, when known.
        expected: Option<Duration>,
    },

    /// The data is damaged: a packet or header does not decode.
    #[error("the {container} audio is corrupt at {:.3} s: {detail}", at.as_secs_f64())]
    Corrupt {
        /// Container name.
        container: String,
        /// Position of the damage (in decoded audio).
        at: Duration,
        /// What the decoder reported.
        detail: String,
    },

    /// The file decodes to no samples at all.
    #[error("the {container} file contains no audio samples (zero length)")]
    ZeroLength {
        /// Container name.
        container: String,
    },

    /// The audio is longer than the configured limit.
    #[error(
        "audio is too long: {} {:.3} s, the limit is {:.3} s",
        if *from_header { "the header announces" } else { "it runs past" },
        found.as_secs_f64(),
        limit.as_secs_f64()
    )]
    TooLong {
        /// The configured limit.
        limit: Duration,
        /// The length found: the header's claim, or how far decoding got
        /// before it was stopped.
        found: Duration,
        /// Whether `found` comes from the header (nothing was decoded).
        from_header: bool,
    },

    /// A decoded sample is NaN or infinite (possible in float WAV files).
    #[error(
        "audio contains a non-finite sample (NaN or infinity) at {:.3} s (frame {frame}, channel {channel})",
        *frame as f64 / f64::from(*sample_rate)
    )]
    NonFinite {
        /// Frame index in the source stream.
        frame: u64,
        /// Channel of the bad sample.
        channel: usize,
        /// Source sample rate (to state the time).
        sample_rate: u32,
    },

    /// A live PCM16 chunk whose length is not a whole number of 2-byte samples.
    #[error(
        "pcm chunk {chunk_index} has {len} bytes, not a whole number of 16-bit samples: each \
         chunk must hold complete little-endian PCM16 samples (an even byte count)"
    )]
    PartialSample {
        /// 0-based index of the chunk in the stream.
        chunk_index: u64,
        /// Its length in bytes.
        len: usize,
    },

    /// The live buffer is full because the consumer has not kept up.
    #[error(
        "pcm chunk {chunk_index} refused: {buffered} samples are already buffered and {incoming} \
         more would exceed the limit of {limit} samples ({:.3} s); send audio no faster than \
         real time",
        *limit as f64 / f64::from(crate::TARGET_SAMPLE_RATE)
    )]
    BufferFull {
        /// 0-based index of the refused chunk.
        chunk_index: u64,
        /// Samples waiting for the consumer.
        buffered: usize,
        /// Samples in the refused chunk.
        incoming: usize,
        /// The configured bound.
        limit: usize,
    },

    /// A live stream longer than its configured limit.
    #[error(
        "pcm chunk {chunk_index} refused: the stream would exceed its limit of {:.3} s",
        limit.as_secs_f64()
    )]
    StreamTooLong {
        /// 0-based index of the refused chunk.
        chunk_index: u64,
        /// The configured limit.
        limit: Duration,
    },

    /// A bug or resource failure on our side, not the client's input.
    #[error("internal audio error: {0}")]
    Internal(String),
}

impl AudioError {
    /// Whether the client sent bad input (INVALID_ARGUMENT) as opposed to
    /// overload (RESOURCE_EXHAUSTED: [`AudioError::BufferFull`]) or a fault of
    /// ours ([`AudioError::Internal`]).
    pub fn is_invalid_input(&self) -> bool {
        !matches!(self, AudioError::BufferFull { .. } | AudioError::Internal(_))
    }
}
