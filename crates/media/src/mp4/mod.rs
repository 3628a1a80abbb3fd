//! MP4 output: a finished faststart file ([`Mp4Writer`]) and a fragmented
//! stream of init + media segments ([`Fmp4Segmenter`]). Boxes are written
//! by hand (see `boxes`): no muxer crate did fragmented MP4, faststart and
//! Opus together (muxide 0.5 writes progressive MP4 only and rejects audio
//! before the first video frame; mp4e 1.0 has no fragments).
//!
//! Timescales: video 90 kHz (frame `i` at `i * 90000 / fps`, exact for 24,
//! 25 and 30 fps), audio 48 kHz (Opus), movie header 48 kHz.

mod boxes;
mod fragmented;
mod writer;

pub use fragmented::{Fmp4Config, Fmp4Segmenter, MediaSegment};
pub use writer::{Mp4Config, Mp4Writer};
