//! osa-media: the decoder stage's video output.
pub mod error;
pub mod frame;
pub mod h264;
pub mod mp4;
pub mod opus;
pub mod output;
pub mod yuv;

pub use error::{MediaError, Result};
