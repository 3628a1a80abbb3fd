//! The one error type of this crate.

/// Why encoding or muxing failed. Every variant is a caller mistake or an
/// encoder failure; none of them panics.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Width or height is zero, odd (4:2:0 needs even sizes) or too large.
    #[error("invalid frame size {width}x{height}: {reason}")]
    InvalidSize { width: u32, height: u32, reason: &'static str },
    /// A pixel or sample buffer does not have the length its shape implies.
    #[error("{what}: expected {expected} bytes or samples, got {actual}")]
    BufferLength { what: &'static str, expected: usize, actual: usize },
    /// Only 24, 25 and 30 fps are served.
    #[error("unsupported frame rate {0} fps (supported: 24, 25, 30)")]
    UnsupportedFps(u32),
    /// Frame indices must strictly increase within one output.
    #[error("frame index {index} is not after the previous frame index {previous}")]
    NonMonotonicIndex { index: u64, previous: u64 },
    /// Audio packets must be contiguous and in order.
    #[error("audio packet starts at {start} but the previous one ended at {expected}")]
    AudioDiscontinuity { start: u64, expected: u64 },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The muxer got input it cannot place (for example a stream that does not
    /// start with a keyframe).
    #[error("mux error: {0}")]
    Mux(String),
    /// openh264 reported an error.
    #[error("h264 encoder: {0}")]
    H264(String),
    /// The Opus encoder reported an error.
    #[error("opus encoder: {0}")]
    Opus(String),
}

/// Result alias for this crate.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;
