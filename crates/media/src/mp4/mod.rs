//! MP4 output: a finished faststart file ([`Mp4Writer`]) and a fragmented
//! stream of init + media segments ([`Fmp4Segmenter`]). Boxes are written
//! by hand (see `boxes`, ~450 lines). The two muxer crates that build here
//! were read first: muxide 0.5 (faststart MP4 and fMP4, H.264 + AAC/Opus)
//! and mp4e 1.0.5 (MP4 and fMP4). Neither writes an edit list, so the Opus
//! pre-skip (6.5 ms) and the encoder's padding stay in the presentation and
//! the audio would be longer than, and offset from, the input; muxide also
//! rejects audio earlier than the first video frame, and mp4e names the
//! Opus sample entry `opus` where the spec says `Opus`.
//!
//! Timescales: video 90 kHz (frame `i` at `i * 90000 / fps`, exact for 24,
//! 25 and 30 fps), audio 48 kHz (Opus), movie header 48 kHz.

mod boxes;
mod fragmented;
mod writer;

pub use fragmented::{Fmp4Config, Fmp4Segmenter, MediaSegment};
pub use writer::{Mp4Config, Mp4Writer};
