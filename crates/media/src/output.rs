//! The two ways frames leave the service as video, end to end: a finished
//! MP4 for render jobs ([`Mp4Render`]) and fragmented-MP4 segments for live
//! sessions ([`LiveStream`]). Each owns an H.264 encoder, an optional Opus
//! encoder and a muxer. (Raw RGB frames, the third output, need no encoding.)

use crate::error::{MediaError, Result};
use crate::frame::{AUDIO_TIMESCALE, Fps, RgbFrame, VIDEO_TIMESCALE, VideoSize};
use crate::h264::{EncodedFrame, H264Config, H264Encoder};
use crate::mp4::{Fmp4Config, Fmp4Segmenter, MediaSegment, Mp4Config, Mp4Writer};
use crate::opus::{AudioPacket, OpusAudioEncoder, OpusConfig};

/// Settings shared by both outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputConfig {
    /// Video settings (size, fps, bitrate, keyframe interval).
    pub video: H264Config,
    /// Opus settings; `None` for a silent (video-only) output.
    pub audio: Option<OpusConfig>,
}

impl OutputConfig {
    /// Default bitrate and keyframes for `size` at `fps`, 16 kHz mono audio.
    pub fn new(size: VideoSize, fps: Fps) -> Self {
        Self { video: H264Config::new(size, fps), audio: Some(OpusConfig::default()) }
    }
}

/// Encodes a render job into a faststart MP4.
#[derive(Debug)]
pub struct Mp4Render {
    video: H264Encoder,
    audio: Option<OpusAudioEncoder>,
    writer: Mp4Writer,
}

impl Mp4Render {
    /// Starts a render.
    pub fn new(config: OutputConfig) -> Result<Self> {
        let video = H264Encoder::new(config.video)?;
        let audio = config.audio.map(OpusAudioEncoder::new).transpose()?;
        let writer = Mp4Writer::new(Mp4Config {
            size: config.video.size,
            fps: config.video.fps,
            audio: audio.as_ref().map(OpusAudioEncoder::track_info),
        });
        Ok(Self { video, audio, writer })
    }

    /// Encodes frame `index` (strictly increasing).
    pub fn push_frame(&mut self, frame: &RgbFrame<'_>, index: u64) -> Result<()> {
        let encoded = self.video.encode(frame, index)?;
        self.writer.push_video(encoded)
    }

    /// Appends input audio (mono PCM16 at the configured rate).
    pub fn push_audio_i16(&mut self, pcm: &[i16]) -> Result<()> {
        let packets = self.audio_encoder()?.push_i16(pcm)?;
        packets.into_iter().try_for_each(|p| self.writer.push_audio(p))
    }

    /// Appends input audio (mono f32, full scale +-1).
    pub fn push_audio_f32(&mut self, pcm: &[f32]) -> Result<()> {
        let packets = self.audio_encoder()?.push_f32(pcm)?;
        packets.into_iter().try_for_each(|p| self.writer.push_audio(p))
    }

    fn audio_encoder(&mut self) -> Result<&mut OpusAudioEncoder> {
        self.audio.as_mut().ok_or_else(|| MediaError::Mux("render has no audio track".into()))
    }

    /// Flushes the encoders and returns the file's bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if let Some(audio) = self.audio.as_mut() {
            for p in audio.finish()? {
                self.writer.push_audio(p)?;
            }
            self.writer.set_audio_duration(audio.input_duration_48k());
        }
        self.writer.finish()
    }
}

/// What a live stream emits, in order: the init segment once, before the
/// first media segment, then media segments.
#[derive(Debug, Clone)]
pub enum LiveChunk {
    /// `ftyp` + `moov`.
    Init(Vec<u8>),
    /// `moof` + `mdat`.
    Segment(MediaSegment),
}

/// Encodes a live session clip by clip into fragmented-MP4 segments of
/// `clips_per_segment` clips. Each segment starts with a keyframe so a
/// client can join at any segment boundary.
/// The init segment declares the audio track whenever `audio` is configured,
/// so a silent session should be configured with `audio: None`.
#[derive(Debug)]
pub struct LiveStream {
    fps: Fps,
    video: H264Encoder,
    audio: Option<OpusAudioEncoder>,
    segmenter: Fmp4Segmenter,
    clips_per_segment: usize,
    clips: usize,
    frames: Vec<EncodedFrame>,
    packets: Vec<AudioPacket>,
    pre_skip: u64,
    init_sent: bool,
    /// Index of the last frame encoded.
    last_index: Option<u64>,
}

impl LiveStream {
    /// Starts a stream. `clips_per_segment` must be at least 1.
    pub fn new(config: OutputConfig, clips_per_segment: usize) -> Result<Self> {
        if clips_per_segment == 0 {
            return Err(MediaError::InvalidConfig("clips_per_segment must be at least 1".into()));
        }
        let video = H264Encoder::new(config.video)?;
        let audio = config.audio.map(OpusAudioEncoder::new).transpose()?;
        let info = audio.as_ref().map(OpusAudioEncoder::track_info);
        let segmenter = Fmp4Segmenter::new(Fmp4Config {
            size: config.video.size,
            fps: config.video.fps,
            audio: info,
        });
        Ok(Self {
            fps: config.video.fps,
            video,
            audio,
            segmenter,
            clips_per_segment,
            clips: 0,
            frames: Vec::new(),
            packets: Vec::new(),
            pre_skip: info.map_or(0, |i| u64::from(i.pre_skip)),
            init_sent: false,
            last_index: None,
        })
    }

    /// Appends input audio (mono PCM16). Audio normally runs ahead of the
    /// video, since the video is generated from it.
    pub fn push_audio_i16(&mut self, pcm: &[i16]) -> Result<()> {
        let audio = self
            .audio
            .as_mut()
            .ok_or_else(|| MediaError::Mux("stream has no audio track".into()))?;
        self.packets.extend(audio.push_i16(pcm)?);
        Ok(())
    }

    /// Encodes one clip whose first frame has index `first_index`; returns
    /// the chunks that became ready (none until a segment is full).
    pub fn push_clip(
        &mut self,
        first_index: u64,
        frames: &[RgbFrame<'_>],
    ) -> Result<Vec<LiveChunk>> {
        if frames.is_empty() {
            return Err(MediaError::Mux("empty clip".into()));
        }
        // Check the index before encoding anything, so a refused clip leaves
        // the stream exactly as it was.
        if let Some(previous) = self.last_index
            && first_index <= previous
        {
            return Err(MediaError::NonMonotonicIndex { index: first_index, previous });
        }
        let mut encoded = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            if i == 0 && self.frames.is_empty() {
                self.video.force_keyframe();
            }
            encoded.push(self.video.encode(frame, first_index + i as u64)?);
        }
        self.last_index = encoded.last().map(|f| f.index);
        self.frames.extend(encoded);
        self.clips += 1;
        if self.clips < self.clips_per_segment {
            return Ok(Vec::new());
        }
        self.flush_segment(false)
    }

    /// Encodes the stream's last clip and ends the stream: the final
    /// segment carries this clip, any clips still pending and all the
    /// remaining audio, so no audio-only tail segment is needed.
    pub fn push_final_clip(
        mut self,
        first_index: u64,
        frames: &[RgbFrame<'_>],
    ) -> Result<Vec<LiveChunk>> {
        self.clips_per_segment = usize::MAX;
        let mut out = self.push_clip(first_index, frames)?;
        out.extend(self.finish()?);
        Ok(out)
    }

    /// Ends the stream: flushes the audio encoder and emits what is left
    /// (pending clips, or only an audio tail if every clip was already sent;
    /// such a segment has no video and is only meaningful after the others).
    pub fn finish(mut self) -> Result<Vec<LiveChunk>> {
        if let Some(audio) = self.audio.as_mut() {
            self.packets.extend(audio.finish()?);
        }
        if self.frames.is_empty() && self.packets.is_empty() {
            return Ok(Vec::new());
        }
        self.flush_segment(true)
    }

    fn flush_segment(&mut self, last: bool) -> Result<Vec<LiveChunk>> {
        // Audio whose presentation starts before the video segment's end
        // goes with it; the rest waits for the next segment.
        let take = if last {
            self.packets.len()
        } else {
            let end = self.frames.last().map_or(0, |f| self.fps.pts(f.index + 1));
            let end_48k = end * u64::from(AUDIO_TIMESCALE) / u64::from(VIDEO_TIMESCALE);
            self.packets.iter().take_while(|p| p.start < end_48k + self.pre_skip).count()
        };
        let audio: Vec<AudioPacket> = self.packets.drain(..take).collect();
        let video = std::mem::take(&mut self.frames);
        self.clips = 0;
        let segment = self.segmenter.write_segment(&video, &audio)?;
        let mut out = Vec::with_capacity(2);
        if !self.init_sent {
            out.push(LiveChunk::Init(self.segmenter.init_segment()?));
            self.init_sent = true;
        }
        out.push(LiveChunk::Segment(segment));
        Ok(out)
    }
}
