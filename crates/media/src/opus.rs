//! Opus encoding of the input speech (16 kHz mono PCM) for the MP4 audio
//! track, with the pure-Rust `opus-rs` encoder (a port of libopus; no C
//! library). AAC is not offered: the AAC encoders reachable from Rust are
//! bindings — `fdk-aac`/`fdk-aac-sys` (Fraunhofer's FDK AAC, whose licence
//! Debian files under non-free) and FFmpeg's encoder through `ffmpeg-next`
//! (FFmpeg's -dev packages and clang) — and no pure-Rust AAC encoder was
//! found (symphonia and the like only decode it).
//!
//! Timing. Opus always decodes at 48 kHz; the track's timescale is 48000 and
//! every packet here holds 20 ms (960 ticks). The encoder delays its output
//! by its lookahead (libopus's `OPUS_GET_LOOKAHEAD`: Fs/400 + Fs/250 =
//! 6.5 ms = 312 ticks at 48 kHz). That delay is the `pre_skip` written into
//! the `dOps` box, and the MP4 edit list starts the track `pre_skip` ticks
//! into the media so that input sample 0 plays at time 0. [`OpusAudioEncoder::finish`]
//! pads with silence until the last input sample has left the encoder, and
//! the edit list's duration (`input_samples * 48000 / input_rate`) cuts the
//! padding off again: the track's duration equals the input's.
//! (ffprobe reports exactly that duration. ffmpeg's decoder honours the
//! pre-skip but not the end of the edit, so a decode to PCM runs up to one
//! packet long; the start, and so lip sync, is sample-exact: a test finds
//! an input click within 1 ms of its place in the decoded audio, which also
//! confirms that `opus-rs` has libopus's lookahead.)

use opus_rs::{Application, OpusEncoder};

use crate::error::{MediaError, Result};
use crate::frame::AUDIO_TIMESCALE;

/// Input sample rate the service uses for speech.
pub const INPUT_SAMPLE_RATE: u32 = 16_000;
/// Samples of one 20 ms Opus frame at 48 kHz.
pub const PACKET_TICKS: u32 = AUDIO_TIMESCALE / 50;
/// Largest Opus packet (RFC 6716).
const MAX_PACKET: usize = 1276;

/// Settings of the Opus track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusConfig {
    /// Input sample rate: 8000, 12000, 16000, 24000 or 48000 Hz.
    pub sample_rate: u32,
    /// Target bitrate in bits per second.
    pub bitrate_bps: u32,
}

impl Default for OpusConfig {
    /// 16 kHz input at 32 kbit/s (wideband speech, transparent enough for
    /// lip-sync review).
    fn default() -> Self {
        Self { sample_rate: INPUT_SAMPLE_RATE, bitrate_bps: 32_000 }
    }
}

/// What a muxer needs to know about an Opus track (the `dOps` fields and
/// the duration the edit list keeps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusTrackInfo {
    /// Priming samples (48 kHz) the decoder must drop.
    pub pre_skip: u16,
    /// Sample rate of the original input (informational in `dOps`).
    pub input_sample_rate: u32,
    /// Channel count (always 1 here).
    pub channels: u8,
}

/// One Opus packet placed on the track's 48 kHz media timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    /// Decode time in 48 kHz ticks from the start of the media (before the
    /// edit list removes `pre_skip`).
    pub start: u64,
    /// Duration in 48 kHz ticks.
    pub duration: u32,
    /// The Opus packet.
    pub data: Vec<u8>,
}

/// Streams mono PCM into 20 ms Opus packets.
pub struct OpusAudioEncoder {
    config: OpusConfig,
    encoder: OpusEncoder,
    /// Samples not yet encoded (less than one frame).
    pending: Vec<f32>,
    /// Input samples received so far.
    input_samples: u64,
    /// Packets produced so far.
    packets: u64,
    finished: bool,
}

impl std::fmt::Debug for OpusAudioEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusAudioEncoder")
            .field("config", &self.config)
            .field("input_samples", &self.input_samples)
            .field("packets", &self.packets)
            .finish_non_exhaustive()
    }
}

impl OpusAudioEncoder {
    /// Creates a mono encoder.
    pub fn new(config: OpusConfig) -> Result<Self> {
        if !(6_000..=256_000).contains(&config.bitrate_bps) {
            return Err(MediaError::InvalidConfig(format!(
                "opus bitrate {} bit/s outside 6..256 kbit/s",
                config.bitrate_bps
            )));
        }
        let mut encoder = OpusEncoder::new(config.sample_rate as i32, 1, Application::Audio)
            .map_err(|e| MediaError::Opus(format!("{e} ({} Hz)", config.sample_rate)))?;
        encoder.bitrate_bps = config.bitrate_bps as i32;
        Ok(Self {
            config,
            encoder,
            pending: Vec::new(),
            input_samples: 0,
            packets: 0,
            finished: false,
        })
    }

    /// The track description for the muxers.
    pub fn track_info(&self) -> OpusTrackInfo {
        OpusTrackInfo {
            pre_skip: pre_skip_48k(self.config.sample_rate),
            input_sample_rate: self.config.sample_rate,
            channels: 1,
        }
    }

    /// Input samples received so far.
    pub const fn input_samples(&self) -> u64 {
        self.input_samples
    }

    /// Duration of the input so far in 48 kHz ticks: what the edit list keeps.
    pub fn input_duration_48k(&self) -> u64 {
        self.input_samples * u64::from(AUDIO_TIMESCALE) / u64::from(self.config.sample_rate)
    }

    /// Appends PCM16 samples; returns the packets that became complete.
    pub fn push_i16(&mut self, pcm: &[i16]) -> Result<Vec<AudioPacket>> {
        self.push_iter(pcm.iter().map(|&s| f32::from(s) / 32768.0), pcm.len())
    }

    /// Appends float samples (full scale +-1.0); returns the packets that
    /// became complete.
    pub fn push_f32(&mut self, pcm: &[f32]) -> Result<Vec<AudioPacket>> {
        if pcm.iter().any(|s| !s.is_finite()) {
            return Err(MediaError::InvalidConfig("audio samples must be finite".into()));
        }
        self.push_iter(pcm.iter().map(|&s| s.clamp(-1.0, 1.0)), pcm.len())
    }

    fn push_iter(
        &mut self,
        samples: impl Iterator<Item = f32>,
        count: usize,
    ) -> Result<Vec<AudioPacket>> {
        if self.finished {
            return Err(MediaError::Mux("audio pushed after finish".into()));
        }
        self.pending.extend(samples);
        self.input_samples += count as u64;
        self.drain(false)
    }

    /// Pads with silence until every input sample (plus the lookahead) is
    /// encoded and returns the last packets. Further pushes are errors.
    pub fn finish(&mut self) -> Result<Vec<AudioPacket>> {
        if self.finished {
            return Ok(Vec::new());
        }
        self.finished = true;
        if self.input_samples == 0 {
            // No input, no track: not even the lookahead's worth of silence.
            return Ok(Vec::new());
        }
        self.drain(true)
    }

    fn frame_len(&self) -> usize {
        self.config.sample_rate as usize / 50
    }

    fn drain(&mut self, flush: bool) -> Result<Vec<AudioPacket>> {
        let frame = self.frame_len();
        if flush {
            // Input sample n leaves the encoder in the packet covering
            // n + lookahead; encode until that is true for the last one.
            let lookahead = u64::from(pre_skip_48k(self.config.sample_rate))
                * u64::from(self.config.sample_rate)
                / u64::from(AUDIO_TIMESCALE);
            let needed = (self.input_samples + lookahead).div_ceil(frame as u64);
            let total = needed * frame as u64;
            let encoded = self.packets * frame as u64;
            self.pending.resize((total - encoded) as usize, 0.0);
        }
        let mut out = Vec::with_capacity(self.pending.len() / frame);
        let mut buf = [0u8; MAX_PACKET];
        let mut consumed = 0;
        while self.pending.len() - consumed >= frame {
            let input = &self.pending[consumed..consumed + frame];
            let n = self
                .encoder
                .encode(input, frame, &mut buf)
                .map_err(|e| MediaError::Opus(e.into()))?;
            out.push(AudioPacket {
                start: self.packets * u64::from(PACKET_TICKS),
                duration: PACKET_TICKS,
                data: buf[..n].to_vec(),
            });
            self.packets += 1;
            consumed += frame;
        }
        self.pending.drain(..consumed);
        Ok(out)
    }
}

/// libopus's lookahead for the non-low-delay applications, in 48 kHz ticks:
/// Fs/400 (2.5 ms) + Fs/250 (4 ms delay compensation) = 312.
fn pre_skip_48k(_sample_rate: u32) -> u16 {
    (AUDIO_TIMESCALE / 400 + AUDIO_TIMESCALE / 250) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_cover_input_plus_lookahead() {
        let mut enc = OpusAudioEncoder::new(OpusConfig::default()).unwrap();
        let mut packets = enc.push_i16(&vec![0i16; 16_000]).unwrap();
        // 1 s = 50 packets; the lookahead is not out yet.
        assert_eq!(packets.len(), 50);
        packets.extend(enc.finish().unwrap());
        assert_eq!(packets.len(), 51);
        assert_eq!(enc.input_duration_48k(), 48_000);
        let end = packets.last().map(|p| p.start + u64::from(p.duration)).unwrap();
        assert!(end >= 48_000 + u64::from(enc.track_info().pre_skip));
        assert!(enc.push_i16(&[0]).is_err());
    }

    #[test]
    fn rejects_bad_config() {
        let bad_rate = OpusConfig { sample_rate: 44_100, ..OpusConfig::default() };
        assert!(OpusAudioEncoder::new(bad_rate).is_err());
        let bad_bitrate = OpusConfig { bitrate_bps: 1, ..OpusConfig::default() };
        assert!(OpusAudioEncoder::new(bad_bitrate).is_err());
    }
}
