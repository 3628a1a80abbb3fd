//! A finished ("faststart") MP4 for render jobs: `ftyp`, then `moov`, then
//! one `mdat`, so a player can start before the whole file has arrived.
//! Samples are kept in memory until [`Mp4Writer::finish`] (about 15 MB per
//! minute at 2 Mbit/s), because the index must precede the data.

use crate::error::{MediaError, Result};
use crate::frame::{AUDIO_TIMESCALE, Fps, VIDEO_TIMESCALE, VideoSize};
use crate::h264::{AvcParameterSets, EncodedFrame};
use crate::mp4::boxes::{
    AUDIO_TRACK_ID, BoxWriter, Edit, MOVIE_TIMESCALE, SampleTable, Track, TrackMedia,
    VIDEO_TRACK_ID, frame_durations, ftyp, mdat_header, moov, run_lengths,
};
use crate::opus::{AudioPacket, OpusTrackInfo};

/// Interleave video and audio in chunks of this many movie ticks (0.5 s).
const CHUNK_TICKS: u64 = MOVIE_TIMESCALE as u64 / 2;

/// What the file will hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mp4Config {
    /// Picture size of every frame.
    pub size: VideoSize,
    /// Constant frame rate; frame `i` is presented at `i / fps` seconds.
    pub fps: Fps,
    /// The Opus track, if any.
    pub audio: Option<OpusTrackInfo>,
}

/// Collects encoded frames and audio packets, then writes a faststart MP4.
#[derive(Debug)]
pub struct Mp4Writer {
    config: Mp4Config,
    params: Option<AvcParameterSets>,
    indices: Vec<u64>,
    keyframes: Vec<bool>,
    video: Vec<Vec<u8>>,
    audio: Vec<AudioPacket>,
    audio_duration: Option<u64>,
}

impl Mp4Writer {
    /// Starts an empty file.
    pub fn new(config: Mp4Config) -> Self {
        Self {
            config,
            params: None,
            indices: Vec::new(),
            keyframes: Vec::new(),
            video: Vec::new(),
            audio: Vec::new(),
            audio_duration: None,
        }
    }

    /// Adds the next frame. The first must be a keyframe carrying SPS/PPS;
    /// indices must strictly increase (a gap holds the previous frame).
    pub fn push_video(&mut self, frame: EncodedFrame) -> Result<()> {
        if let Some(&previous) = self.indices.last()
            && frame.index <= previous
        {
            return Err(MediaError::NonMonotonicIndex { index: frame.index, previous });
        }
        check_parameter_sets(&mut self.params, &frame)?;
        self.indices.push(frame.index);
        self.keyframes.push(frame.keyframe);
        self.video.push(frame.data);
        Ok(())
    }

    /// Adds the next audio packet; packets must be contiguous from time 0.
    pub fn push_audio(&mut self, packet: AudioPacket) -> Result<()> {
        if self.config.audio.is_none() {
            return Err(MediaError::Mux("audio packet for a file without audio".into()));
        }
        let expected = self.audio.last().map_or(0, |p| p.start + u64::from(p.duration));
        if packet.start != expected {
            return Err(MediaError::AudioDiscontinuity { start: packet.start, expected });
        }
        self.audio.push(packet);
        Ok(())
    }

    /// Sets how long the audio plays, in 48 kHz ticks (normally
    /// [`crate::opus::OpusAudioEncoder::input_duration_48k`]). Without it
    /// the packets' total duration minus the pre-skip is used.
    pub fn set_audio_duration(&mut self, ticks_48k: u64) {
        self.audio_duration = Some(ticks_48k);
    }

    /// Writes the file.
    pub fn finish(self) -> Result<Vec<u8>> {
        let params =
            self.params.as_ref().ok_or_else(|| MediaError::Mux("no video frames".into()))?;
        let fps = self.config.fps;
        let durations = frame_durations(&self.indices, fps)?;
        let video_media: u64 = durations.iter().map(|&d| u64::from(d)).sum();
        let first_pts = fps.pts(self.indices[0]);

        // Lay out the interleaved chunks: (track, first sample, count).
        let video_times: Vec<u64> =
            self.indices.iter().map(|&i| to_movie(fps.pts(i), VIDEO_TIMESCALE)).collect();
        let pre_skip = self.config.audio.map_or(0, |a| u64::from(a.pre_skip));
        let audio_times: Vec<u64> =
            self.audio.iter().map(|p| p.start.saturating_sub(pre_skip)).collect();
        let chunks = interleave(&video_times, &audio_times);

        let mut video_table = SampleTable {
            stts: run_lengths(durations),
            sizes: self.video.iter().map(|d| d.len() as u32).collect(),
            sync: if self.keyframes.iter().all(|&k| k) {
                None
            } else {
                Some(
                    self.keyframes
                        .iter()
                        .enumerate()
                        .filter(|(_, k)| **k)
                        .map(|(i, _)| i as u32 + 1)
                        .collect(),
                )
            },
            ..SampleTable::default()
        };
        let mut audio_table = SampleTable {
            stts: run_lengths(self.audio.iter().map(|p| p.duration)),
            sizes: self.audio.iter().map(|p| p.data.len() as u32).collect(),
            ..SampleTable::default()
        };
        let video_sizes = video_table.sizes.clone();
        let audio_sizes = audio_table.sizes.clone();
        let mut payload_len = 0u64;
        let mut relative_offsets = (Vec::new(), Vec::new());
        for chunk in &chunks {
            let (table, offsets, sizes) = match chunk.track {
                TrackKind::Video => (&mut video_table, &mut relative_offsets.0, &video_sizes),
                TrackKind::Audio => (&mut audio_table, &mut relative_offsets.1, &audio_sizes),
            };
            offsets.push(payload_len);
            let chunk_no = offsets.len() as u32;
            if table.stsc.last().is_none_or(|&(_, n)| n != chunk.count as u32) {
                table.stsc.push((chunk_no, chunk.count as u32));
            }
            let bytes: u64 =
                sizes[chunk.first..chunk.first + chunk.count].iter().map(|&s| u64::from(s)).sum();
            payload_len += bytes;
        }

        let mut video_edits = Vec::new();
        if first_pts > 0 {
            video_edits
                .push(Edit { duration: to_movie(first_pts, VIDEO_TIMESCALE), media_time: -1 });
            video_edits
                .push(Edit { duration: to_movie(video_media, VIDEO_TIMESCALE), media_time: 0 });
        }
        let audio_media: u64 = self.audio.iter().map(|p| u64::from(p.duration)).sum();
        let audio_duration = self
            .audio_duration
            .unwrap_or(audio_media.saturating_sub(pre_skip))
            .min(audio_media.saturating_sub(pre_skip));

        let mdat_head = mdat_header(payload_len);
        // Build moov once to learn its size, then again with real offsets.
        let mut base = 0u64;
        let mut ftyp_box = BoxWriter::new();
        ftyp(&mut ftyp_box, false)?;
        let mut moov_box = BoxWriter::new();
        for _ in 0..2 {
            video_table.chunk_offsets = relative_offsets.0.iter().map(|o| o + base).collect();
            audio_table.chunk_offsets = relative_offsets.1.iter().map(|o| o + base).collect();
            let mut tracks = vec![Track {
                id: VIDEO_TRACK_ID,
                media: TrackMedia::Video { size: self.config.size, params },
                media_duration: video_media,
                edits: video_edits.clone(),
                table: std::mem::take(&mut video_table),
            }];
            // A configured audio track that got no packets is left out
            // rather than written as an empty track.
            if let Some(info) = self.config.audio.filter(|_| !self.audio.is_empty()) {
                tracks.push(Track {
                    id: AUDIO_TRACK_ID,
                    media: TrackMedia::Opus(info),
                    media_duration: audio_media,
                    edits: vec![Edit { duration: audio_duration, media_time: pre_skip as i64 }],
                    table: std::mem::take(&mut audio_table),
                });
            }
            moov_box = BoxWriter::new();
            moov(&mut moov_box, &tracks, false)?;
            let mut tracks = tracks.into_iter();
            video_table = tracks.next().map(|t| t.table).unwrap_or_default();
            audio_table = tracks.next().map(|t| t.table).unwrap_or_default();
            base = (ftyp_box.buf.len() + moov_box.buf.len() + mdat_head.len()) as u64;
        }

        let mut out = Vec::with_capacity(base as usize + payload_len as usize);
        out.extend_from_slice(&ftyp_box.buf);
        out.extend_from_slice(&moov_box.buf);
        out.extend_from_slice(&mdat_head);
        for chunk in &chunks {
            match chunk.track {
                TrackKind::Video => {
                    for data in &self.video[chunk.first..chunk.first + chunk.count] {
                        out.extend_from_slice(data);
                    }
                }
                TrackKind::Audio => {
                    for p in &self.audio[chunk.first..chunk.first + chunk.count] {
                        out.extend_from_slice(&p.data);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Records the stream's SPS/PPS from its first frame and rejects later
/// keyframes whose parameter sets differ (one sample entry per track).
pub(crate) fn check_parameter_sets(
    known: &mut Option<AvcParameterSets>,
    frame: &EncodedFrame,
) -> Result<()> {
    match (known.as_ref(), frame.parameter_sets.as_ref()) {
        (None, Some(ps)) if frame.keyframe => *known = Some(ps.clone()),
        (None, _) => {
            return Err(MediaError::Mux(format!(
                "stream must start with a keyframe carrying SPS/PPS (frame {})",
                frame.index
            )));
        }
        (Some(old), Some(new)) if old != new => {
            return Err(MediaError::Mux(format!(
                "parameter sets changed at frame {}",
                frame.index
            )));
        }
        _ => {}
    }
    Ok(())
}

fn to_movie(ticks: u64, timescale: u32) -> u64 {
    ticks * u64::from(MOVIE_TIMESCALE) / u64::from(timescale)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackKind {
    Video,
    Audio,
}

#[derive(Debug)]
struct Chunk {
    track: TrackKind,
    first: usize,
    count: usize,
}

/// Groups samples into half-second windows, video before audio in each.
fn interleave(video_times: &[u64], audio_times: &[u64]) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let (mut v, mut a) = (0, 0);
    while v < video_times.len() || a < audio_times.len() {
        let next = video_times.get(v).into_iter().chain(audio_times.get(a)).min().copied();
        let window_end = (next.unwrap_or(0) / CHUNK_TICKS + 1) * CHUNK_TICKS;
        for (track, times, i) in
            [(TrackKind::Video, video_times, &mut v), (TrackKind::Audio, audio_times, &mut a)]
        {
            let first = *i;
            while *i < times.len() && times[*i] < window_end {
                *i += 1;
            }
            if *i > first {
                chunks.push(Chunk { track, first, count: *i - first });
            }
        }
    }
    chunks
}

const _: () = assert!(AUDIO_TIMESCALE == MOVIE_TIMESCALE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaves_by_half_second() {
        let video: Vec<u64> = (0..50).map(|i| i * 1920).collect(); // 2 s at 25 fps
        let audio: Vec<u64> = (0..100).map(|i| i * 960).collect();
        let chunks = interleave(&video, &audio);
        assert_eq!(chunks.len(), 8);
        assert_eq!(chunks[0].track, TrackKind::Video);
        assert_eq!(chunks[0].count, 13);
        assert_eq!(chunks[1].count, 25);
        assert_eq!(chunks.iter().map(|c| c.count).sum::<usize>(), 150);
    }

    #[test]
    fn empty_writer_is_an_error() {
        let size = VideoSize::new(16, 16).unwrap();
        let w = Mp4Writer::new(Mp4Config { size, fps: Fps::F25, audio: None });
        assert!(w.finish().is_err());
    }
}
