//! Whole-file decoding: any supported container/codec -> 16 kHz mono `f32`.
//!
//! Pipeline: symphonia probes the container and demuxes the default audio
//! track; packets go to symphonia's decoder, or to `opus-rs` for Opus; each
//! decoded buffer is checked for NaN/Inf, averaged across channels and
//! trimmed of encoder delay, and streamed through [`crate::resample`] to
//! 16 kHz without a time shift. Only the 16 kHz result is ever held whole,
//! so memory is bounded by the duration limit whatever the source rate.
//!
//! Encoder delay ("priming"), so lips do not lag the audio:
//! - MP3: the LAME/Xing tag's delay and padding (+529 decoder delay) are
//!   applied by symphonia (`gapless` on).
//! - Vorbis/FLAC in Ogg: symphonia trims from the granule positions.
//! - Opus in Ogg: symphonia trims the end padding from the last granule
//!   position; the OpusHead `pre_skip` is dropped here (Opus is decoded
//!   straight to 16 kHz, see `opus.rs`). WebM/Matroska Opus: the same
//!   pre-skip; end padding (a few ms) is kept.
//! - AAC (and anything else) in MP4/M4A: the first edit of the track's edit
//!   list gives the priming (`media_time`, 1024 samples from ffmpeg's
//!   encoder, 2112 from Apple's) and the length to keep; symphonia does not
//!   apply edit lists, so it is done here. AAC without an edit list (raw
//!   ADTS, or an mp4 written without one) gets the AAC-LC convention of 1024
//!   samples, the frame overlap every AAC encoder introduces.
//! - MP3 without a LAME tag: LAME's 576-sample encoder delay plus the
//!   529-sample decoder delay (1105, measured: a tag-less ffmpeg/LAME file
//!   is 25 ms late at 44.1 kHz without it).
//!
//! Limits: the duration limit is checked against the header before decoding
//! and again as samples come out, so a 3-hour file is refused after reading
//! its header (or after 10 minutes of audio when the header does not say).

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use symphonia::core::codecs::CodecParameters;
use symphonia::core::codecs::audio::well_known as codec_ids;
use symphonia::core::codecs::audio::{
    AudioCodecId, AudioDecoder, AudioDecoderOptions, CODEC_ID_NULL_AUDIO,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::mp4::find_audio_edit;
use crate::opus::{OPUS_DECODE_RATE, OPUS_RATE, OpusHead, OpusPacketDecoder, from_48k};
use crate::resample::StreamResampler;
use crate::{AudioError, TARGET_SAMPLE_RATE};

/// AAC-LC priming assumed when the file does not state it (see module docs).
const AAC_DEFAULT_PRIMING: u64 = 1024;

/// MP3 delay assumed without a LAME tag: LAME's 576-sample encoder delay plus
/// the 529-sample decoder delay (the same sum symphonia applies from a tag).
const MP3_DEFAULT_DELAY: u64 = 576 + 529;

/// Sample rates outside this range are refused as unsupported streams.
const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 1_000..=768_000;

/// Limits applied while decoding a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Longest audio accepted. Default: 10 minutes.
    pub max_duration: Duration,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_duration: Duration::from_secs(600) }
    }
}

/// A decoded file: 16 kHz mono samples plus facts about the source.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedAudio {
    /// Mono samples at [`TARGET_SAMPLE_RATE`], nominally in [-1, 1].
    pub samples: Vec<f32>,
    /// The source's sample rate in Hz (48000 for Opus, the rate its
    /// timestamps count in).
    pub source_sample_rate: u32,
    /// The source's channel count (averaged into mono).
    pub source_channels: usize,
    /// Codec short name, e.g. "mp3", "aac", "opus", "flac", "vorbis", "pcm_s16le".
    pub codec: String,
    /// Container short name as symphonia names it, e.g. "wave", "ogg", "isomp4".
    pub container: String,
    /// Length of the source audio after encoder delay and padding are removed.
    pub duration: Duration,
}

impl DecodedAudio {
    /// Sample rate of [`DecodedAudio::samples`]: always 16 kHz.
    pub fn sample_rate(&self) -> u32 {
        TARGET_SAMPLE_RATE
    }
}

/// Decodes a whole audio file to 16 kHz mono.
///
/// `hint` is an optional file extension ("mp3", ".m4a") or MIME type
/// ("audio/ogg") that speeds up probing; the content decides. Every failure
/// is an [`AudioError`] naming the problem; malformed data never panics (a
/// decoder panic is caught and reported as corrupt data).
pub fn decode_file(
    bytes: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<DecodedAudio, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::EmptyInput);
    }
    let decoded = catch_unwind(AssertUnwindSafe(|| decode_source(bytes, hint, limits)))
        .unwrap_or_else(|_| {
            Err(AudioError::Corrupt {
                container: sniff_container(bytes).unwrap_or("audio").to_owned(),
                at: Duration::ZERO,
                detail: "the decoder failed on malformed data".to_owned(),
            })
        })?;
    Ok(DecodedAudio {
        samples: decoded.samples,
        source_sample_rate: decoded.source_rate,
        source_channels: decoded.channels,
        codec: decoded.codec,
        container: decoded.container,
        duration: frames_to_duration(decoded.frames, decoded.rate),
    })
}

/// The decoded file, delay trimmed, at 16 kHz.
struct SourceAudio {
    samples: Vec<f32>,
    /// Source frames kept (after delay and padding trims).
    frames: u64,
    /// The rate to report as the source's (Opus: 48 kHz, decoded at 16).
    source_rate: u32,
    rate: u32,
    channels: usize,
    codec: String,
    container: String,
}

enum TrackDecoder {
    Symphonia(Box<dyn AudioDecoder>),
    Opus(Box<OpusPacketDecoder>),
}

fn decode_source(
    bytes: &[u8],
    hint: Option<&str>,
    limits: &DecodeLimits,
) -> Result<SourceAudio, AudioError> {
    let mut format = probe(bytes, hint)?;
    let container = format.format_info().short_name.to_owned();
    let track = format
        .default_track(TrackType::Audio)
        .cloned()
        .ok_or_else(|| AudioError::NoAudioTrack { container: container.clone() })?;
    let Some(CodecParameters::Audio(params)) = track.codec_params.clone() else {
        return Err(AudioError::NoAudioTrack { container });
    };
    let unsupported = |codec: AudioCodecId| AudioError::UnsupportedCodec {
        codec: codec_name(codec),
        container: container.clone(),
    };
    if params.codec == CODEC_ID_NULL_AUDIO {
        return Err(unsupported(params.codec));
    }
    let is_opus = params.codec == codec_ids::CODEC_ID_OPUS;

    // Refuse from the header when it already announces too much audio.
    let header_rate = if is_opus { Some(OPUS_RATE) } else { params.sample_rate };
    if let (Some(frames), Some(rate)) = (track.num_frames, header_rate)
        && rate > 0
    {
        let announced = frames_to_duration(frames, rate);
        // Some headers only estimate (mp3 without a Xing tag, ADTS): refuse
        // early only beyond a 5 % margin; decoding enforces the exact limit.
        if announced > limits.max_duration + limits.max_duration / 20 {
            return Err(AudioError::TooLong {
                limit: limits.max_duration,
                found: announced,
                from_header: true,
            });
        }
    }

    let (mut decoder, codec, mut skip_front) = if is_opus {
        let head = params.extra_data.as_deref().unwrap_or_default();
        let stream_err = |detail: String| AudioError::UnsupportedStream { detail };
        let head = OpusHead::parse(head).map_err(stream_err)?;
        let dec = OpusPacketDecoder::new(&head).map_err(stream_err)?;
        (TrackDecoder::Opus(Box::new(dec)), "opus".to_owned(), from_48k(u64::from(head.pre_skip)))
    } else {
        let dec = symphonia::default::get_codecs()
            .make_audio_decoder(&params, &AudioDecoderOptions::default())
            .map_err(|_| unsupported(params.codec))?;
        let codec = dec.codec_info().short_name.to_owned();
        (TrackDecoder::Symphonia(dec), codec, 0)
    };

    // MP4 edit list (or the AAC convention): priming to skip, length to keep.
    let mut keep = None;
    let is_aac = params.codec == codec_ids::CODEC_ID_AAC;
    let edit = (container == "isomp4").then(|| find_audio_edit(bytes)).flatten();
    match (edit, params.sample_rate) {
        (Some(edit), Some(rate)) if rate > 0 => {
            skip_front = rescale(edit.media_time, rate, edit.media_timescale);
            keep = edit.keep.map(|k| rescale(k, rate, edit.media_timescale));
        }
        _ if is_aac => skip_front = AAC_DEFAULT_PRIMING,
        // symphonia applies the LAME tag's delay; without one it trims nothing.
        _ if params.codec == codec_ids::CODEC_ID_MP3 && track.delay.is_none() => {
            skip_front = MP3_DEFAULT_DELAY;
        }
        _ => {}
    }

    // Readers that stop quietly at a cut (mp3) or skip damaged frames to
    // resync (flac) still hand out fewer frames than an exact header
    // announces: the frame count of a Xing/LAME tag (present when `delay` is
    // known), FLAC's STREAMINFO, the mp4 sample table.
    let exact_count = match container.as_str() {
        "mp3" => track.delay.is_some(),
        "flac" | "isomp4" | "wave" => true,
        _ => false,
    };
    let exact_frames = track.num_frames.filter(|_| exact_count);

    let mut state = DecodeState {
        container: container.clone(),
        resampler: None,
        mono: Vec::new(),
        interleaved: Vec::new(),
        kept: 0,
        keep,
        rate: 0,
        channels: 0,
        frames_in: 0,
        skip_front,
        max_duration: limits.max_duration,
    };
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A WAV written to a pipe has no data length: it ends at EOF.
            Err(SymError::IoError(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof
                    && container == "wave"
                    && track.num_frames.is_none() =>
            {
                break;
            }
            Err(e) => return Err(state.stream_error(e, exact_frames, header_rate)),
        };
        if packet.track_id != track.id {
            continue;
        }
        match &mut decoder {
            TrackDecoder::Symphonia(dec) => {
                let buf = dec.decode(&packet).map_err(|e| state.packet_error(e))?;
                let (rate, channels) = (buf.spec().rate(), buf.spec().channels().count());
                if buf.frames() == 0 {
                    continue;
                }
                buf.copy_to_vec_interleaved::<f32>(&mut state.interleaved);
                state.push(rate, channels)?;
            }
            TrackDecoder::Opus(dec) => {
                let channels = dec.channels();
                let pcm = dec.decode(&packet.data).map_err(|detail| state.corrupt(detail))?;
                let frames = pcm.len() / channels;
                let start = (from_48k(packet.trim_start.get()) as usize).min(frames);
                let end =
                    frames.saturating_sub(from_48k(packet.trim_end.get()) as usize).max(start);
                state.interleaved.clear();
                state.interleaved.extend_from_slice(&pcm[start * channels..end * channels]);
                state.push(OPUS_DECODE_RATE, channels)?;
            }
        }
    }

    if let Some(announced) = exact_frames
        && state.frames_in < announced
    {
        let expected = frames_to_duration(announced, header_rate.unwrap_or(state.rate));
        return Err(if container == "mp3" {
            AudioError::Truncated { container, decoded: state.position(), expected: Some(expected) }
        } else {
            state.corrupt(format!(
                "only {:.3} s of the {:.3} s the header announces decode: damaged frames were skipped",
                state.position().as_secs_f64(),
                expected.as_secs_f64()
            ))
        });
    }
    if state.kept == 0 {
        return Err(AudioError::ZeroLength { container });
    }
    let (rate, channels, frames) = (state.rate, state.channels, state.kept);
    let samples = state.resampler.take().map(|r| r.finish()).transpose()?.unwrap_or_default();
    let source_rate = if is_opus { OPUS_RATE } else { rate };
    Ok(SourceAudio { samples, frames, source_rate, rate, channels, codec, container })
}

/// Accumulates decoded audio and turns symphonia errors into [`AudioError`]s.
struct DecodeState {
    container: String,
    /// Source rate -> 16 kHz, made when the first buffer tells the rate.
    resampler: Option<StreamResampler>,
    /// Scratch: the current packet downmixed.
    mono: Vec<f32>,
    /// Source frames passed on to the resampler.
    kept: u64,
    /// Most source frames to pass on (the mp4 edit's length).
    keep: Option<u64>,
    /// Scratch: the current packet's interleaved samples.
    interleaved: Vec<f32>,
    rate: u32,
    channels: usize,
    /// Source frames decoded so far, trimmed ones included.
    frames_in: u64,
    /// Frames still to drop from the front (encoder delay).
    skip_front: u64,
    max_duration: Duration,
}

impl DecodeState {
    /// Checks, downmixes and appends `self.interleaved`.
    fn push(&mut self, rate: u32, channels: usize) -> Result<(), AudioError> {
        if channels == 0 {
            return Err(self.corrupt("a decoded buffer has 0 channels".to_owned()));
        }
        if !SAMPLE_RATES.contains(&rate) {
            return Err(AudioError::UnsupportedStream {
                detail: format!("sample rate {rate} Hz (supported: 1 kHz to 768 kHz)"),
            });
        }
        if self.rate == 0 {
            (self.rate, self.channels) = (rate, channels);
            self.resampler = Some(StreamResampler::new(rate, TARGET_SAMPLE_RATE)?);
        } else if (self.rate, self.channels) != (rate, channels) {
            return Err(AudioError::UnsupportedStream {
                detail: format!(
                    "the stream changes from {} Hz x {} channels to {rate} Hz x {channels} \
                     channels at {:.3} s",
                    self.rate,
                    self.channels,
                    self.position().as_secs_f64()
                ),
            });
        }
        if let Some(i) = self.interleaved.iter().position(|s| !s.is_finite()) {
            return Err(AudioError::NonFinite {
                frame: self.frames_in + (i / channels) as u64,
                channel: i % channels,
                sample_rate: rate,
            });
        }
        let frames = self.interleaved.len() / channels;
        let skip = usize::try_from(self.skip_front).unwrap_or(usize::MAX).min(frames);
        self.skip_front -= skip as u64;
        self.frames_in += frames as u64;
        let room = self.keep.map_or(u64::MAX, |k| k.saturating_sub(self.kept));
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(frames - skip);
        let scale = 1.0 / channels as f32;
        self.mono.clear();
        self.mono.extend(
            self.interleaved
                .chunks_exact(channels)
                .skip(skip)
                .take(take)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
        self.kept += take as u64;
        if let Some(resampler) = self.resampler.as_mut() {
            resampler.push(&self.mono)?;
        }
        let limit_frames = (self.max_duration.as_secs_f64() * f64::from(rate)).ceil() as u64;
        if self.kept > limit_frames {
            return Err(AudioError::TooLong {
                limit: self.max_duration,
                found: self.position(),
                from_header: false,
            });
        }
        Ok(())
    }

    fn position(&self) -> Duration {
        if self.rate == 0 { Duration::ZERO } else { frames_to_duration(self.frames_in, self.rate) }
    }

    fn corrupt(&self, detail: String) -> AudioError {
        AudioError::Corrupt { container: self.container.clone(), at: self.position(), detail }
    }

    /// An error from the demuxer.
    fn stream_error(&self, e: SymError, announced: Option<u64>, rate: Option<u32>) -> AudioError {
        match e {
            SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                AudioError::Truncated {
                    container: self.container.clone(),
                    decoded: self.position(),
                    expected: announced.zip(rate).map(|(f, r)| frames_to_duration(f, r)),
                }
            }
            SymError::ResetRequired => AudioError::UnsupportedStream {
                detail: "chained streams (a new stream starts inside the file)".to_owned(),
            },
            SymError::Unsupported(what) => {
                AudioError::UnsupportedStream { detail: what.to_owned() }
            }
            other => self.corrupt(other.to_string()),
        }
    }

    /// An error from the decoder for one packet.
    fn packet_error(&self, e: SymError) -> AudioError {
        match e {
            SymError::Unsupported(what) => {
                AudioError::UnsupportedStream { detail: what.to_owned() }
            }
            other => self.corrupt(other.to_string()),
        }
    }
}

fn probe<'a>(
    bytes: &'a [u8],
    hint: Option<&str>,
) -> Result<Box<dyn FormatReader + 'a>, AudioError> {
    let mut h = Hint::new();
    if let Some(hint) = hint.map(str::trim).filter(|h| !h.is_empty()) {
        if hint.contains('/') {
            h.mime_type(hint);
        } else {
            h.with_extension(&hint.trim_start_matches('.').to_ascii_lowercase());
        }
    }
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    symphonia::default::get_probe()
        .probe(&h, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(|e| match (e, sniff_container(bytes)) {
            // A known signature whose header cannot be read is damage, not
            // a foreign format.
            (SymError::IoError(_), Some(container)) => AudioError::Truncated {
                container: container.to_owned(),
                decoded: Duration::ZERO,
                expected: None,
            },
            (SymError::Unsupported(what), Some(container)) if what.contains("moov") => {
                AudioError::Corrupt {
                    container: container.to_owned(),
                    at: Duration::ZERO,
                    detail: "no moov box: the file is truncated or incomplete (an mp4 writer \
                             puts moov last unless told to use faststart)"
                        .to_owned(),
                }
            }
            (e, Some(container)) => AudioError::Corrupt {
                container: container.to_owned(),
                at: Duration::ZERO,
                detail: format!("the header does not parse ({e})"),
            },
            _ => AudioError::UnknownFormat { hint: hint.map(str::to_owned) },
        })
}

/// Container named by the file's magic bytes, for messages about files whose
/// header does not even parse.
fn sniff_container(bytes: &[u8]) -> Option<&'static str> {
    let magic = bytes.get(..4)?;
    match magic {
        b"RIFF" | b"RIFX" | b"RF64" => Some("wave"),
        b"fLaC" => Some("flac"),
        b"OggS" => Some("ogg"),
        b"\x1a\x45\xdf\xa3" => Some("mkv"),
        _ if bytes.get(4..8) == Some(b"ftyp") => Some("isomp4"),
        _ if magic.starts_with(b"ID3") => Some("mp3"),
        _ => None,
    }
}

/// `t` ticks of `from_scale` in ticks of `to_scale` (rounded down).
fn rescale(t: u64, to_scale: u32, from_scale: u32) -> u64 {
    let f = u128::from(t) * u128::from(to_scale) / u128::from(from_scale.max(1));
    u64::try_from(f).unwrap_or(u64::MAX)
}

fn frames_to_duration(frames: u64, rate: u32) -> Duration {
    let rate = u64::from(rate.max(1));
    Duration::from_secs(frames / rate)
        + Duration::from_nanos(((frames % rate) as u128 * 1_000_000_000 / rate as u128) as u64)
}

/// A readable name for codecs symphonia knows but cannot decode here.
fn codec_name(id: AudioCodecId) -> String {
    use codec_ids::*;
    if id == CODEC_ID_NULL_AUDIO {
        return "unknown".to_owned();
    }
    let name = match id {
        CODEC_ID_OPUS => "opus",
        CODEC_ID_SPEEX => "speex",
        CODEC_ID_MUSEPACK => "musepack",
        CODEC_ID_MP1 => "mp1",
        CODEC_ID_MP2 => "mp2",
        CODEC_ID_AC3 => "ac3",
        CODEC_ID_EAC3 => "eac3",
        CODEC_ID_AC4 => "ac4",
        CODEC_ID_DCA => "dts",
        CODEC_ID_WMA => "wma",
        CODEC_ID_ALAC => "alac",
        CODEC_ID_WAVPACK => "wavpack",
        CODEC_ID_MONKEYS_AUDIO => "ape",
        CODEC_ID_TTA => "tta",
        CODEC_ID_ATRAC1 | CODEC_ID_ATRAC3 | CODEC_ID_ATRAC3PLUS | CODEC_ID_ATRAC9 => "atrac",
        _ => return format!("(symphonia codec id {id})"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, format_tag: u16, bits: u16, data: &[u8]) -> Vec<u8> {
        let block = channels * bits / 8;
        let mut v = b"RIFF".to_vec();
        v.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        v.extend_from_slice(b"WAVEfmt ");
        v.extend_from_slice(&16u32.to_le_bytes());
        v.extend_from_slice(&format_tag.to_le_bytes());
        v.extend_from_slice(&channels.to_le_bytes());
        v.extend_from_slice(&rate.to_le_bytes());
        v.extend_from_slice(&(rate * u32::from(block)).to_le_bytes());
        v.extend_from_slice(&block.to_le_bytes());
        v.extend_from_slice(&bits.to_le_bytes());
        v.extend_from_slice(b"data");
        v.extend_from_slice(&(data.len() as u32).to_le_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn pcm16_wav_at_16k_round_trips() {
        let samples: Vec<i16> = (0..1600).map(|i| ((i % 100) * 300 - 15_000) as i16).collect();
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let out =
            decode_file(&wav(16_000, 1, 1, 16, &data), None, &DecodeLimits::default()).unwrap();
        assert_eq!(out.samples.len(), 1600);
        assert_eq!(out.duration, Duration::from_millis(100));
        assert_eq!((out.source_sample_rate, out.source_channels), (16_000, 1));
        for (a, b) in out.samples.iter().zip(&samples) {
            assert_eq!(*a, f32::from(*b) / 32768.0);
        }
    }

    #[test]
    fn stereo_is_averaged() {
        let data: Vec<u8> =
            [1000i16, 3000].repeat(160).iter().flat_map(|s| s.to_le_bytes()).collect();
        let out =
            decode_file(&wav(16_000, 2, 1, 16, &data), None, &DecodeLimits::default()).unwrap();
        assert_eq!(out.samples.len(), 160);
        assert!(out.samples.iter().all(|s| (s - 2000.0 / 32768.0).abs() < 1e-7));
    }

    #[test]
    fn float_wav_with_nan_is_refused() {
        let mut samples = vec![0.25f32; 100];
        samples[57] = f32::NAN;
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let err =
            decode_file(&wav(16_000, 1, 3, 32, &data), None, &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, AudioError::NonFinite { frame: 57, channel: 0, .. }), "{err}");
    }

    #[test]
    fn header_longer_than_limit_is_refused_early() {
        let data = vec![0u8; 3200];
        let limits = DecodeLimits { max_duration: Duration::from_millis(50) };
        let err = decode_file(&wav(16_000, 1, 1, 16, &data), None, &limits).unwrap_err();
        assert!(matches!(err, AudioError::TooLong { from_header: true, .. }), "{err}");
    }

    #[test]
    fn empty_and_garbage() {
        let limits = DecodeLimits::default();
        assert_eq!(decode_file(&[], None, &limits).unwrap_err(), AudioError::EmptyInput);
        let err = decode_file(b"hello, this is plainly not audio", Some("txt"), &limits);
        assert!(matches!(err, Err(AudioError::UnknownFormat { .. })), "{err:?}");
        let err = decode_file(&wav(16_000, 1, 1, 16, &[]), None, &limits).unwrap_err();
        assert!(matches!(err, AudioError::ZeroLength { .. }), "{err}");
    }
}
