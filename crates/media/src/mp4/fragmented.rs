//! Fragmented MP4 for live sessions: one init segment (`ftyp` + `moov` with
//! empty sample tables and `mvex`) and then media segments (`moof` + `mdat`),
//! each holding the frames of one or more clips and the audio packets that
//! go with them. A player (MSE, ffmpeg) can play each segment as it arrives;
//! init + all segments concatenated is itself a valid fragmented MP4.
//!
//! Every segment's decode time (`tfdt`) comes from the first frame's index
//! (`index * 90000 / fps`), never from arrival time, so a late or retried
//! segment still lands where it belongs; a gap in the indices becomes a gap
//! in time. Audio `tfdt` is the packet position on the Opus timeline; the
//! init segment's edit list removes the encoder's pre-skip (see `opus`).
//! What fragments cannot do is cut the padding after the last input sample:
//! a live stream's audio may run up to one Opus frame (20 ms) past the input.

use crate::error::{MediaError, Result};
use crate::frame::{AUDIO_TIMESCALE, Fps, VIDEO_TIMESCALE, VideoSize};
use crate::h264::{AvcParameterSets, EncodedFrame};
use crate::mp4::boxes::{
    AUDIO_TRACK_ID, BoxWriter, Edit, NON_SYNC_SAMPLE_FLAGS, SYNC_SAMPLE_FLAGS, SampleTable, Track,
    TrackMedia, VIDEO_TRACK_ID, frame_durations, ftyp, mdat_header, moov, roll_group_mapping,
};
use crate::mp4::writer::check_parameter_sets;
use crate::opus::{AudioPacket, OpusTrackInfo};

/// What the stream will hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fmp4Config {
    /// Picture size of every frame.
    pub size: VideoSize,
    /// Constant frame rate.
    pub fps: Fps,
    /// The Opus track, if any.
    pub audio: Option<OpusTrackInfo>,
}

/// One `moof` + `mdat` pair and where it sits in time.
#[derive(Debug, Clone)]
pub struct MediaSegment {
    /// `mfhd` sequence number, 1 for the first segment.
    pub sequence_number: u32,
    /// Index of the first video frame (if the segment has video).
    pub first_index: Option<u64>,
    /// Number of video frames.
    pub frame_count: usize,
    /// Presentation start of the segment's video in 90 kHz ticks (of its
    /// audio for an audio-only segment).
    pub start_ticks: u64,
    /// Video duration in 90 kHz ticks, up to the frame after the last one
    /// (the audio's for an audio-only segment).
    pub duration_ticks: u64,
    /// The segment's bytes.
    pub bytes: Vec<u8>,
}

impl MediaSegment {
    /// Start time in seconds.
    pub fn start_secs(&self) -> f64 {
        self.start_ticks as f64 / f64::from(VIDEO_TIMESCALE)
    }

    /// Duration in seconds.
    pub fn duration_secs(&self) -> f64 {
        self.duration_ticks as f64 / f64::from(VIDEO_TIMESCALE)
    }
}

/// Turns encoded frames and audio packets into fragmented-MP4 segments.
#[derive(Debug)]
pub struct Fmp4Segmenter {
    config: Fmp4Config,
    params: Option<AvcParameterSets>,
    sequence_number: u32,
    last_index: Option<u64>,
    audio_end: u64,
}

impl Fmp4Segmenter {
    /// A segmenter for one stream.
    pub fn new(config: Fmp4Config) -> Self {
        Self { config, params: None, sequence_number: 0, last_index: None, audio_end: 0 }
    }

    /// The init segment (`ftyp` + `moov`). Available once the first media
    /// segment has been written, because the SPS/PPS come from its first
    /// keyframe; send it before that segment.
    pub fn init_segment(&self) -> Result<Vec<u8>> {
        let params = self.params.as_ref().ok_or_else(|| {
            MediaError::Mux("init segment needs the first keyframe (write a segment first)".into())
        })?;
        let mut w = BoxWriter::new();
        ftyp(&mut w, true)?;
        let mut tracks = vec![Track {
            id: VIDEO_TRACK_ID,
            media: TrackMedia::Video { size: self.config.size, params },
            media_duration: 0,
            edits: Vec::new(),
            table: SampleTable::default(),
        }];
        if let Some(info) = self.config.audio {
            tracks.push(Track {
                id: AUDIO_TRACK_ID,
                media: TrackMedia::Opus(info),
                media_duration: 0,
                // Duration 0: "the rest of the (fragmented) media".
                edits: vec![Edit { duration: 0, media_time: i64::from(info.pre_skip) }],
                table: SampleTable::default(),
            });
        }
        moov(&mut w, &tracks, true)?;
        Ok(w.buf)
    }

    /// Writes the next media segment from `video` (strictly increasing
    /// indices, continuing the previous segment's) and `audio` (contiguous
    /// with the previous segment's packets). Either may be empty, not both.
    pub fn write_segment(
        &mut self,
        video: &[EncodedFrame],
        audio: &[AudioPacket],
    ) -> Result<MediaSegment> {
        if video.is_empty() && audio.is_empty() {
            return Err(MediaError::Mux("empty segment".into()));
        }
        if !audio.is_empty() && self.config.audio.is_none() {
            return Err(MediaError::Mux("audio packets for a stream without audio".into()));
        }
        // Validate everything before changing any state.
        let mut previous = self.last_index;
        let mut params = self.params.clone();
        for frame in video {
            if let Some(previous) = previous
                && frame.index <= previous
            {
                return Err(MediaError::NonMonotonicIndex { index: frame.index, previous });
            }
            previous = Some(frame.index);
            check_parameter_sets(&mut params, frame)?;
        }
        let mut expected = self.audio_end;
        for p in audio {
            if p.start != expected {
                return Err(MediaError::AudioDiscontinuity { start: p.start, expected });
            }
            expected += u64::from(p.duration);
        }

        let fps = self.config.fps;
        let indices: Vec<u64> = video.iter().map(|f| f.index).collect();
        let durations = frame_durations(&indices, fps)?;
        let sequence_number = self.sequence_number + 1;
        let video_bytes: u64 = video.iter().map(|f| f.data.len() as u64).sum();
        let audio_bytes: u64 = audio.iter().map(|p| p.data.len() as u64).sum();
        let mdat_head = mdat_header(video_bytes + audio_bytes);

        let build = |data_start: u64| -> Result<Vec<u8>> {
            let mut w = BoxWriter::new();
            w.begin(b"moof");
            w.begin_full(b"mfhd", 0, 0);
            w.u32(sequence_number);
            w.end()?;
            if let Some(first) = video.first() {
                traf_header(&mut w, VIDEO_TRACK_ID, fps.pts(first.index));
                w.begin_full(b"trun", 0, 0x000001 | 0x000100 | 0x000200 | 0x000400);
                w.u32(video.len() as u32);
                w.i32(offset_i32(data_start)?);
                for (frame, &duration) in video.iter().zip(&durations) {
                    w.u32(duration);
                    w.u32(frame.data.len() as u32);
                    w.u32(if frame.keyframe { SYNC_SAMPLE_FLAGS } else { NON_SYNC_SAMPLE_FLAGS });
                }
                w.end()?; // trun
                w.end()?; // traf
            }
            if let Some(first) = audio.first() {
                traf_header(&mut w, AUDIO_TRACK_ID, first.start);
                w.begin_full(b"trun", 0, 0x000001 | 0x000100 | 0x000200);
                w.u32(audio.len() as u32);
                w.i32(offset_i32(data_start + video_bytes)?);
                for p in audio {
                    w.u32(p.duration);
                    w.u32(p.data.len() as u32);
                }
                w.end()?; // trun
                roll_group_mapping(&mut w, audio.len() as u32)?;
                w.end()?; // traf
            }
            w.end()?; // moof
            Ok(w.buf)
        };
        // Offsets are relative to the moof (default-base-is-moof); the moof's
        // size does not depend on their values, so measure, then rebuild.
        let moof_len = build(0)?.len() as u64;
        let mut bytes = build(moof_len + mdat_head.len() as u64)?;
        bytes.reserve((video_bytes + audio_bytes) as usize + mdat_head.len());
        bytes.extend_from_slice(&mdat_head);
        for frame in video {
            bytes.extend_from_slice(&frame.data);
        }
        for p in audio {
            bytes.extend_from_slice(&p.data);
        }

        self.sequence_number = sequence_number;
        self.params = params;
        self.last_index = previous;
        self.audio_end = expected;
        let first_index = video.first().map(|f| f.index);
        let (start_ticks, duration_ticks) = match (first_index, audio.first()) {
            (Some(i), _) => (fps.pts(i), durations.iter().map(|&d| u64::from(d)).sum()),
            // An audio-only segment (the tail after the last frame): its
            // presentation span on the 90 kHz clock.
            (None, Some(first)) => {
                let pre_skip = self.config.audio.map_or(0, |a| u64::from(a.pre_skip));
                let to_90k = |t: u64| t * u64::from(VIDEO_TIMESCALE) / u64::from(AUDIO_TIMESCALE);
                let start = to_90k(first.start.saturating_sub(pre_skip));
                (start, to_90k(expected.saturating_sub(pre_skip)) - start)
            }
            (None, None) => (0, 0),
        };
        Ok(MediaSegment {
            sequence_number,
            first_index,
            frame_count: video.len(),
            start_ticks,
            duration_ticks,
            bytes,
        })
    }
}

/// Opens `traf` and writes `tfhd` (default-base-is-moof) and `tfdt` (v1).
fn traf_header(w: &mut BoxWriter, track_id: u32, base_decode_time: u64) {
    w.begin(b"traf");
    w.begin_full(b"tfhd", 0, 0x020000);
    w.u32(track_id);
    // begin/end pairs are balanced within this function's caller; ending
    // here cannot fail.
    let _ = w.end();
    w.begin_full(b"tfdt", 1, 0);
    w.u64(base_decode_time);
    let _ = w.end();
}

fn offset_i32(offset: u64) -> Result<i32> {
    i32::try_from(offset).map_err(|_| MediaError::Mux("segment larger than 2 GiB".into()))
}
