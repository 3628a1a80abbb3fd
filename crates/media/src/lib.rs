//! osa-media: how generated frames leave the service as video.
//!
//! The decoder stage turns latents into RGB frames; this crate turns those
//! frames into (a) nothing more — raw RGB frames need no help from it —,
//! (b) fragmented-MP4 segments for live sessions, playable as they arrive,
//! or (c) a finished MP4 with its index at the front for render jobs.
//! No libtorch, no FFmpeg libraries: openh264 (compiled from source) and a
//! pure-Rust Opus encoder, with the MP4 boxes written here.
//!
//! - [`frame`]: frame rates (24/25/30), sizes (even, at most 3840x2160),
//!   borrowed RGB frames, and the index-to-time rule: frame `i` is presented
//!   at `i / fps` seconds (`i * 90000 / fps` ticks), never at its arrival time.
//! - [`yuv`]: RGB24 -> I420, BT.601 limited range (signalled in the SPS VUI).
//! - [`h264`]: openh264 encoder, bitrate rate control, no frame skipping,
//!   keyframe interval and forced keyframes.
//! - [`opus`]: 16 kHz mono PCM (i16 or f32) -> 20 ms Opus packets with the
//!   pre-skip the MP4 edit list needs so that audio duration = input duration.
//!   AAC is not offered (no pure-Rust encoder; the bindings need
//!   Fraunhofer's non-free FDK or FFmpeg's -dev packages; see [`opus`]).
//!   ffmpeg decodes the Opus track (tested); browsers are not tested here.
//! - [`mp4`]: [`mp4::Mp4Writer`] (faststart: `ftyp`, `moov`, `mdat`) and
//!   [`mp4::Fmp4Segmenter`] (init segment + `moof`/`mdat` media segments).
//! - [`output`]: the two pipelines end to end, [`output::Mp4Render`] and
//!   [`output::LiveStream`].
//!
//! Every check of the output in the tests is done by an independent decoder
//! (ffprobe/ffmpeg): codec, size, frame rate, frame count, durations, clean
//! decode, colours (PSNR) and audio timing (a click lands on its sample).

pub mod error;
pub mod frame;
pub mod h264;
pub mod mp4;
pub mod opus;
pub mod output;
pub mod yuv;

pub use error::{MediaError, Result};
