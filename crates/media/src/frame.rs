//! Raw frames, frame rates and the index-to-time mapping every track uses.

use crate::error::{MediaError, Result};

/// Timescale (ticks per second) of the video track: 90 kHz, the MPEG
/// convention. 90000 is divisible by 24, 25 and 30, so every frame lasts a
/// whole number of ticks and `pts = index * 90000 / fps` is exact.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Timescale of the Opus track and of the movie header: Opus always decodes
/// at 48 kHz, and 48000 is also divisible by 24, 25 and 30.
pub const AUDIO_TIMESCALE: u32 = 48_000;

/// Largest side openh264 accepts (level 5.2 limits, landscape or portrait).
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;

/// A constant output frame rate. Only the rates the service renders at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fps {
    /// 24 frames per second (film).
    F24,
    /// 25 frames per second (EchoMimic's default, PAL).
    F25,
    /// 30 frames per second.
    F30,
}

impl Fps {
    /// Frames per second as an integer.
    pub const fn as_u32(self) -> u32 {
        match self {
            Fps::F24 => 24,
            Fps::F25 => 25,
            Fps::F30 => 30,
        }
    }

    /// Duration of one frame in [`VIDEO_TIMESCALE`] ticks.
    pub const fn frame_ticks(self) -> u32 {
        VIDEO_TIMESCALE / self.as_u32()
    }

    /// Presentation time of frame `index` in [`VIDEO_TIMESCALE`] ticks: the
    /// time comes from the index alone, never from when the frame arrived.
    pub const fn pts(self, index: u64) -> u64 {
        index * self.frame_ticks() as u64
    }

    /// Presentation time of frame `index` in milliseconds (rounded down).
    pub const fn pts_millis(self, index: u64) -> u64 {
        index * 1000 / self.as_u32() as u64
    }
}

impl TryFrom<u32> for Fps {
    type Error = MediaError;

    fn try_from(fps: u32) -> Result<Self> {
        match fps {
            24 => Ok(Fps::F24),
            25 => Ok(Fps::F25),
            30 => Ok(Fps::F30),
            other => Err(MediaError::UnsupportedFps(other)),
        }
    }
}

/// Picture size in pixels; both sides even and within openh264's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoSize {
    width: u32,
    height: u32,
}

impl VideoSize {
    /// Validates a size: non-zero, even (4:2:0 chroma is subsampled by two
    /// in both directions) and at most 3840x2160 in either orientation.
    pub fn new(width: u32, height: u32) -> Result<Self> {
        let err = |reason| Err(MediaError::InvalidSize { width, height, reason });
        if width == 0 || height == 0 {
            return err("sides must be non-zero");
        }
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return err("sides must be even for yuv420p");
        }
        if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
            return err("openh264 supports at most 3840x2160 (or 2160x3840)");
        }
        Ok(Self { width, height })
    }

    /// Width in pixels.
    pub const fn width(self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub const fn height(self) -> u32 {
        self.height
    }

    /// Bytes of one packed RGB24 frame of this size.
    pub const fn rgb_len(self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}

/// A borrowed packed RGB24 frame, row-major `H x W x 3`, no row padding.
#[derive(Debug, Clone, Copy)]
pub struct RgbFrame<'a> {
    size: VideoSize,
    data: &'a [u8],
}

impl<'a> RgbFrame<'a> {
    /// Wraps `data` after checking that it holds exactly `width * height * 3`
    /// bytes.
    pub fn new(width: u32, height: u32, data: &'a [u8]) -> Result<Self> {
        let size = VideoSize::new(width, height)?;
        if data.len() != size.rgb_len() {
            return Err(MediaError::BufferLength {
                what: "rgb frame",
                expected: size.rgb_len(),
                actual: data.len(),
            });
        }
        Ok(Self { size, data })
    }

    /// The frame's size.
    pub const fn size(&self) -> VideoSize {
        self.size
    }

    /// The packed pixels.
    pub const fn data(&self) -> &'a [u8] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pts_is_exact_for_all_rates() {
        for fps in [Fps::F24, Fps::F25, Fps::F30] {
            assert_eq!(fps.pts(fps.as_u32() as u64), VIDEO_TIMESCALE as u64);
            assert_eq!(AUDIO_TIMESCALE % fps.as_u32(), 0);
        }
    }

    #[test]
    fn rejects_bad_sizes_and_rates() {
        assert!(VideoSize::new(63, 64).is_err());
        assert!(VideoSize::new(64, 0).is_err());
        assert!(VideoSize::new(4096, 64).is_err());
        assert!(VideoSize::new(2160, 3840).is_ok());
        assert!(Fps::try_from(60).is_err());
        assert!(RgbFrame::new(4, 4, &[0; 47]).is_err());
        assert!(RgbFrame::new(4, 4, &[0; 48]).is_ok());
    }
}
