//! H.264 encoding with Cisco's openh264 (baseline-style stream: I and P
//! slices only, so decode order equals presentation order and no
//! composition offsets are needed in the container).
//!
//! openh264 is compiled from source by `openh264-sys2`; its assembly needs
//! `nasm` at build time, and without it the build silently falls back to C
//! at half the speed. Frame skipping is disabled so that every input frame
//! yields exactly one access unit: the service promises a constant frame
//! rate whose timestamps come from frame indices.

use openh264::OpenH264API;
use openh264::Timestamp;
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
    VuiConfig,
};
use openh264::formats::YUVSlices;

use crate::error::{MediaError, Result};
use crate::frame::{Fps, RgbFrame, VideoSize};
use crate::yuv::I420;

/// Settings of one H.264 output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Config {
    /// Picture size; every frame must have it.
    pub size: VideoSize,
    /// Constant frame rate.
    pub fps: Fps,
    /// Target bitrate in bits per second (openh264's bitrate rate control).
    pub bitrate_bps: u32,
    /// A keyframe every this many frames; 0 = only the first frame and
    /// frames requested with [`H264Encoder::force_keyframe`].
    pub keyframe_interval: u32,
}

impl H264Config {
    /// A config with a bitrate scaled to the picture area (2 Mbit/s at
    /// 512x512, at least 100 kbit/s) and a keyframe every two seconds.
    pub fn new(size: VideoSize, fps: Fps) -> Self {
        let area = u64::from(size.width()) * u64::from(size.height());
        let bitrate_bps = (area * 2_000_000 / (512 * 512)).max(100_000) as u32;
        Self { size, fps, bitrate_bps, keyframe_interval: 2 * fps.as_u32() }
    }

    fn validate(&self) -> Result<()> {
        if !(10_000..=100_000_000).contains(&self.bitrate_bps) {
            return Err(MediaError::InvalidConfig(format!(
                "bitrate {} bit/s outside 10 kbit/s..100 Mbit/s",
                self.bitrate_bps
            )));
        }
        Ok(())
    }
}

/// The SPS and PPS of a stream, as NAL units without start codes. The MP4
/// sample entry (`avcC`) carries them; samples do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcParameterSets {
    /// Sequence parameter set NAL unit (type 7).
    pub sps: Vec<u8>,
    /// Picture parameter set NAL unit (type 8).
    pub pps: Vec<u8>,
}

/// One encoded access unit.
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// The frame's index in its stream; its timestamp is derived from this.
    pub index: u64,
    /// An IDR picture: decoding can start here.
    pub keyframe: bool,
    /// The access unit in MP4 form: each NAL unit prefixed by its 4-byte
    /// big-endian length, parameter sets removed.
    pub data: Vec<u8>,
    /// SPS/PPS emitted with this frame (keyframes only).
    pub parameter_sets: Option<AvcParameterSets>,
}

/// An openh264 encoder for one stream of equally sized RGB frames.
pub struct H264Encoder {
    config: H264Config,
    encoder: Encoder,
    yuv: I420,
    last_index: Option<u64>,
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("config", &self.config)
            .field("last_index", &self.last_index)
            .finish_non_exhaustive()
    }
}

impl H264Encoder {
    /// Creates an encoder; fails on an out-of-range bitrate or if openh264
    /// cannot be initialised.
    pub fn new(config: H264Config) -> Result<Self> {
        config.validate()?;
        let enc_config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(config.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(config.fps.as_u32() as f32))
            .rate_control_mode(RateControlMode::Bitrate)
            .skip_frames(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(config.keyframe_interval))
            .vui(VuiConfig::bt601());
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), enc_config)
            .map_err(|e| MediaError::H264(e.to_string()))?;
        Ok(Self { config, encoder, yuv: I420::new(config.size), last_index: None })
    }

    /// The stream's settings.
    pub const fn config(&self) -> &H264Config {
        &self.config
    }

    /// Makes the next encoded frame an IDR keyframe (start of a segment).
    pub fn force_keyframe(&mut self) {
        self.encoder.force_intra_frame();
    }

    /// Encodes frame `index`. Indices must strictly increase; a gap is
    /// allowed (the muxers hold the previous frame over it).
    pub fn encode(&mut self, frame: &RgbFrame<'_>, index: u64) -> Result<EncodedFrame> {
        if frame.size() != self.config.size {
            return Err(MediaError::InvalidSize {
                width: frame.size().width(),
                height: frame.size().height(),
                reason: "frame size differs from the stream's",
            });
        }
        if let Some(previous) = self.last_index
            && index <= previous
        {
            return Err(MediaError::NonMonotonicIndex { index, previous });
        }
        self.yuv.fill_from_rgb(frame);
        let (y, u, v) = self.yuv.planes();
        let (w, h) = (self.config.size.width() as usize, self.config.size.height() as usize);
        let source = YUVSlices::new((y, u, v), (w, h), (w, w / 2, w / 2));
        let timestamp = Timestamp::from_millis(self.config.fps.pts_millis(index));
        let bitstream = self
            .encoder
            .encode_at(&source, timestamp)
            .map_err(|e| MediaError::H264(e.to_string()))?;
        let frame_type = bitstream.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Err(MediaError::H264(format!("encoder returned a {frame_type:?} frame")));
        }
        let mut out = EncodedFrame {
            index,
            keyframe: frame_type == FrameType::IDR,
            data: Vec::new(),
            parameter_sets: None,
        };
        let (mut sps, mut pps) = (None, None);
        for l in 0..bitstream.num_layers() {
            let Some(layer) = bitstream.layer(l) else { continue };
            for n in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(n).map(strip_start_code) else { continue };
                match nal.first().map(|b| b & 0x1f) {
                    None => {}
                    Some(7) => sps = Some(nal.to_vec()),
                    Some(8) => pps = Some(nal.to_vec()),
                    // Access unit delimiters carry nothing an MP4 needs.
                    Some(9) => {}
                    Some(_) => {
                        out.data.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        out.data.extend_from_slice(nal);
                    }
                }
            }
        }
        if out.data.is_empty() {
            return Err(MediaError::H264(format!("no picture data for frame {index}")));
        }
        if let (Some(sps), Some(pps)) = (sps, pps) {
            out.parameter_sets = Some(AvcParameterSets { sps, pps });
        }
        self.last_index = Some(index);
        Ok(out)
    }
}

/// Removes a leading Annex B start code (3 or 4 bytes) if present.
fn strip_start_code(nal: &[u8]) -> &[u8] {
    if let Some(rest) = nal.strip_prefix(&[0, 0, 0, 1]) {
        rest
    } else if let Some(rest) = nal.strip_prefix(&[0, 0, 1]) {
        rest
    } else {
        nal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_frame_is_a_keyframe_with_parameter_sets() {
        let size = VideoSize::new(64, 48).unwrap();
        let mut enc = H264Encoder::new(H264Config::new(size, Fps::F25)).unwrap();
        let rgb = vec![100u8; size.rgb_len()];
        let frame = RgbFrame::new(64, 48, &rgb).unwrap();
        let first = enc.encode(&frame, 0).unwrap();
        assert!(first.keyframe);
        let ps = first.parameter_sets.as_ref().unwrap();
        assert_eq!(ps.sps[0] & 0x1f, 7);
        assert_eq!(ps.pps[0] & 0x1f, 8);
        let second = enc.encode(&frame, 1).unwrap();
        assert!(!second.keyframe);
        assert!(matches!(enc.encode(&frame, 1), Err(MediaError::NonMonotonicIndex { .. })));
        enc.force_keyframe();
        assert!(enc.encode(&frame, 5).unwrap().keyframe);
    }
}
