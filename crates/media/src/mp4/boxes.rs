//! A minimal ISO-BMFF (MP4) box writer and the boxes both muxers share:
//! `ftyp`, `moov` with one `trak` per track, the `avc1`/`avcC` and
//! `Opus`/`dOps` sample entries (ISO/IEC 14496-15 and "Encapsulation of Opus
//! in ISO Base Media File Format" v0.8.1), and `mvex` for fragmented files.

use crate::error::{MediaError, Result};
use crate::frame::{AUDIO_TIMESCALE, Fps, VIDEO_TIMESCALE, VideoSize};
use crate::h264::AvcParameterSets;
use crate::opus::OpusTrackInfo;

/// Movie-header timescale: 48 kHz, so the audio edit list is sample-exact
/// and every video frame (2000/1920/1600 ticks) is a whole number of ticks.
pub(crate) const MOVIE_TIMESCALE: u32 = AUDIO_TIMESCALE;
pub(crate) const VIDEO_TRACK_ID: u32 = 1;
pub(crate) const AUDIO_TRACK_ID: u32 = 2;

/// Sample flags for fragments (ISO 14496-12 8.8.3.1): a sync sample that
/// depends on nothing, and a non-sync sample that depends on others.
pub(crate) const SYNC_SAMPLE_FLAGS: u32 = 0x0200_0000;
pub(crate) const NON_SYNC_SAMPLE_FLAGS: u32 = 0x0101_0000;

/// Appends boxes to a byte buffer; `begin`/`end` pairs patch box sizes.
#[derive(Debug, Default)]
pub(crate) struct BoxWriter {
    pub(crate) buf: Vec<u8>,
    open: Vec<usize>,
}

impl BoxWriter {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn begin(&mut self, fourcc: &[u8; 4]) {
        self.open.push(self.buf.len());
        self.u32(0);
        self.buf.extend_from_slice(fourcc);
    }

    pub(crate) fn begin_full(&mut self, fourcc: &[u8; 4], version: u8, flags: u32) {
        self.begin(fourcc);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    }

    /// Closes the innermost open box. Box sizes are 32-bit: only `mdat` can
    /// outgrow that, and it is written separately.
    pub(crate) fn end(&mut self) -> Result<()> {
        let start = self.open.pop().ok_or_else(|| MediaError::Mux("unbalanced box".into()))?;
        let size = u32::try_from(self.buf.len() - start)
            .map_err(|_| MediaError::Mux("box larger than 4 GiB".into()))?;
        self.buf[start..start + 4].copy_from_slice(&size.to_be_bytes());
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }

    /// The unity transformation matrix of `mvhd`/`tkhd`.
    fn matrix(&mut self) {
        for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
    }
}

/// Writes an `mdat` header for `payload_len` bytes (64-bit size if needed)
/// and returns it.
pub(crate) fn mdat_header(payload_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    if payload_len + 8 <= u64::from(u32::MAX) {
        out.extend_from_slice(&((payload_len + 8) as u32).to_be_bytes());
        out.extend_from_slice(b"mdat");
    } else {
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(b"mdat");
        out.extend_from_slice(&(payload_len + 16).to_be_bytes());
    }
    out
}

pub(crate) fn ftyp(w: &mut BoxWriter, fragmented: bool) -> Result<()> {
    w.begin(b"ftyp");
    w.bytes(b"isom");
    w.u32(0x200);
    let brands: &[&[u8; 4]] = if fragmented {
        &[b"isom", b"iso6", b"avc1", b"mp41"]
    } else {
        &[b"isom", b"iso2", b"avc1", b"mp41"]
    };
    for brand in brands {
        w.bytes(*brand);
    }
    w.end()
}

/// One edit-list entry: `media_time` -1 is an empty edit (a gap).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Edit {
    pub(crate) duration: u64,
    pub(crate) media_time: i64,
}

/// The sample table of a finished file; empty for fragmented files.
#[derive(Debug, Default)]
pub(crate) struct SampleTable {
    /// Run-length (count, delta) pairs.
    pub(crate) stts: Vec<(u32, u32)>,
    pub(crate) sizes: Vec<u32>,
    /// (first chunk, samples per chunk) runs, 1-based chunks.
    pub(crate) stsc: Vec<(u32, u32)>,
    pub(crate) chunk_offsets: Vec<u64>,
    /// 1-based sync sample numbers; `None` = every sample is sync.
    pub(crate) sync: Option<Vec<u32>>,
}

/// What a `trak` describes.
#[derive(Debug)]
pub(crate) enum TrackMedia<'a> {
    Video { size: VideoSize, params: &'a AvcParameterSets },
    Opus(OpusTrackInfo),
}

#[derive(Debug)]
pub(crate) struct Track<'a> {
    pub(crate) id: u32,
    pub(crate) media: TrackMedia<'a>,
    /// Media duration in the track's timescale (0 when fragmented).
    pub(crate) media_duration: u64,
    pub(crate) edits: Vec<Edit>,
    pub(crate) table: SampleTable,
}

impl Track<'_> {
    fn timescale(&self) -> u32 {
        match self.media {
            TrackMedia::Video { .. } => VIDEO_TIMESCALE,
            TrackMedia::Opus(_) => AUDIO_TIMESCALE,
        }
    }

    /// Presentation duration in movie ticks: the sum of the edits, else the
    /// media duration.
    fn movie_duration(&self) -> u64 {
        if self.edits.is_empty() {
            self.media_duration * u64::from(MOVIE_TIMESCALE) / u64::from(self.timescale())
        } else {
            self.edits.iter().map(|e| e.duration).sum()
        }
    }
}

/// Writes `moov`. With `fragmented` the sample tables are empty and `mvex`
/// announces the fragments.
pub(crate) fn moov(w: &mut BoxWriter, tracks: &[Track<'_>], fragmented: bool) -> Result<()> {
    w.begin(b"moov");
    let duration = tracks.iter().map(Track::movie_duration).max().unwrap_or(0);
    w.begin_full(b"mvhd", 1, 0);
    w.u64(0); // creation time
    w.u64(0); // modification time
    w.u32(MOVIE_TIMESCALE);
    w.u64(duration);
    w.u32(0x0001_0000); // rate 1.0
    w.u16(0x0100); // volume 1.0
    w.zeros(10);
    w.matrix();
    w.zeros(24);
    w.u32(tracks.iter().map(|t| t.id).max().unwrap_or(0) + 1);
    w.end()?;
    for track in tracks {
        trak(w, track)?;
    }
    if fragmented {
        w.begin(b"mvex");
        for track in tracks {
            w.begin_full(b"trex", 0, 0);
            w.u32(track.id);
            w.u32(1); // sample description index
            w.u32(0); // default duration
            w.u32(0); // default size
            w.u32(0); // default flags
            w.end()?;
        }
        w.end()?;
    }
    w.end()
}

fn trak(w: &mut BoxWriter, t: &Track<'_>) -> Result<()> {
    w.begin(b"trak");
    w.begin_full(b"tkhd", 1, 0x3); // enabled, in movie
    w.u64(0);
    w.u64(0);
    w.u32(t.id);
    w.u32(0);
    w.u64(t.movie_duration());
    w.zeros(8);
    w.u16(0); // layer
    match &t.media {
        TrackMedia::Video { size, .. } => {
            w.u16(0); // alternate group
            w.u16(0); // volume
            w.u16(0);
            w.matrix();
            w.u32(size.width() << 16);
            w.u32(size.height() << 16);
        }
        TrackMedia::Opus(_) => {
            w.u16(1);
            w.u16(0x0100);
            w.u16(0);
            w.matrix();
            w.u32(0);
            w.u32(0);
        }
    }
    w.end()?;
    if !t.edits.is_empty() {
        w.begin(b"edts");
        w.begin_full(b"elst", 1, 0);
        w.u32(t.edits.len() as u32);
        for e in &t.edits {
            w.u64(e.duration);
            w.u64(e.media_time as u64);
            w.u32(0x0001_0000); // media rate 1.0
        }
        w.end()?;
        w.end()?;
    }
    w.begin(b"mdia");
    w.begin_full(b"mdhd", 1, 0);
    w.u64(0);
    w.u64(0);
    w.u32(t.timescale());
    w.u64(t.media_duration);
    w.u16(0x55c4); // language "und"
    w.u16(0);
    w.end()?;
    w.begin_full(b"hdlr", 0, 0);
    w.u32(0);
    let (handler, name): (&[u8; 4], &[u8]) = match t.media {
        TrackMedia::Video { .. } => (b"vide", b"VideoHandler\0"),
        TrackMedia::Opus(_) => (b"soun", b"SoundHandler\0"),
    };
    w.bytes(handler);
    w.zeros(12);
    w.bytes(name);
    w.end()?;
    w.begin(b"minf");
    match t.media {
        TrackMedia::Video { .. } => {
            w.begin_full(b"vmhd", 0, 1);
            w.zeros(8);
            w.end()?;
        }
        TrackMedia::Opus(_) => {
            w.begin_full(b"smhd", 0, 0);
            w.zeros(4);
            w.end()?;
        }
    }
    w.begin(b"dinf");
    w.begin_full(b"dref", 0, 0);
    w.u32(1);
    w.begin_full(b"url ", 0, 1); // media in this file
    w.end()?;
    w.end()?;
    w.end()?;
    stbl(w, t)?;
    w.end()?; // minf
    w.end()?; // mdia
    w.end() // trak
}

fn stbl(w: &mut BoxWriter, t: &Track<'_>) -> Result<()> {
    w.begin(b"stbl");
    w.begin_full(b"stsd", 0, 0);
    w.u32(1);
    match &t.media {
        TrackMedia::Video { size, params } => avc1(w, *size, params)?,
        TrackMedia::Opus(info) => opus_entry(w, info)?,
    }
    w.end()?;
    let table = &t.table;
    w.begin_full(b"stts", 0, 0);
    w.u32(table.stts.len() as u32);
    for &(count, delta) in &table.stts {
        w.u32(count);
        w.u32(delta);
    }
    w.end()?;
    if let Some(sync) = &table.sync {
        w.begin_full(b"stss", 0, 0);
        w.u32(sync.len() as u32);
        for &s in sync {
            w.u32(s);
        }
        w.end()?;
    }
    w.begin_full(b"stsc", 0, 0);
    w.u32(table.stsc.len() as u32);
    for &(first_chunk, per_chunk) in &table.stsc {
        w.u32(first_chunk);
        w.u32(per_chunk);
        w.u32(1);
    }
    w.end()?;
    w.begin_full(b"stsz", 0, 0);
    w.u32(0); // sizes listed per sample
    w.u32(table.sizes.len() as u32);
    for &s in &table.sizes {
        w.u32(s);
    }
    w.end()?;
    if table.chunk_offsets.iter().all(|&o| o <= u64::from(u32::MAX)) {
        w.begin_full(b"stco", 0, 0);
        w.u32(table.chunk_offsets.len() as u32);
        for &o in &table.chunk_offsets {
            w.u32(o as u32);
        }
    } else {
        w.begin_full(b"co64", 0, 0);
        w.u32(table.chunk_offsets.len() as u32);
        for &o in &table.chunk_offsets {
            w.u64(o);
        }
    }
    w.end()?;
    if let TrackMedia::Opus(_) = t.media {
        roll_group_description(w)?;
        roll_group_mapping(w, table.sizes.len() as u32)?;
    }
    w.end()
}

/// Opus needs 80 ms of pre-roll after a random access; the Opus-in-ISOBMFF
/// spec (4.3.6.2) makes a 'roll' sample group mandatory to say so:
/// `roll_distance` = -(80 ms / 20 ms per packet) = -4 samples.
pub(crate) const OPUS_ROLL_DISTANCE: i16 = -4;

fn roll_group_description(w: &mut BoxWriter) -> Result<()> {
    w.begin_full(b"sgpd", 1, 0);
    w.bytes(b"roll");
    w.u32(2); // default_length: one i16 per entry
    w.u32(1); // entry count
    w.u16(OPUS_ROLL_DISTANCE as u16);
    w.end()
}

/// Maps `samples` samples to entry 1 of the `stbl`'s 'roll' description
/// (in a `traf` as well: indices up to 0x10000 refer to the `stbl`).
pub(crate) fn roll_group_mapping(w: &mut BoxWriter, samples: u32) -> Result<()> {
    w.begin_full(b"sbgp", 0, 0);
    w.bytes(b"roll");
    if samples == 0 {
        w.u32(0);
    } else {
        w.u32(1);
        w.u32(samples);
        w.u32(1);
    }
    w.end()
}

fn avc1(w: &mut BoxWriter, size: VideoSize, params: &AvcParameterSets) -> Result<()> {
    if params.sps.len() < 4 || params.sps.len() > 0xffff || params.pps.len() > 0xffff {
        return Err(MediaError::Mux("malformed SPS/PPS".into()));
    }
    w.begin(b"avc1");
    w.zeros(6);
    w.u16(1); // data reference index
    w.zeros(16); // pre_defined, reserved
    w.u16(size.width() as u16);
    w.u16(size.height() as u16);
    w.u32(0x0048_0000); // 72 dpi
    w.u32(0x0048_0000);
    w.u32(0);
    w.u16(1); // frame count
    let mut name = [0u8; 32];
    let label = b"openh264";
    name[0] = label.len() as u8;
    name[1..=label.len()].copy_from_slice(label);
    w.bytes(&name);
    w.u16(0x0018); // depth
    w.u16(0xffff); // pre_defined = -1
    w.begin(b"avcC");
    w.u8(1); // configuration version
    w.u8(params.sps[1]); // profile
    w.u8(params.sps[2]); // compatibility
    w.u8(params.sps[3]); // level
    w.u8(0xff); // 4-byte NAL lengths
    w.u8(0xe1); // one SPS
    w.u16(params.sps.len() as u16);
    w.bytes(&params.sps);
    w.u8(1); // one PPS
    w.u16(params.pps.len() as u16);
    w.bytes(&params.pps);
    w.end()?;
    w.end()
}

fn opus_entry(w: &mut BoxWriter, info: &OpusTrackInfo) -> Result<()> {
    w.begin(b"Opus");
    w.zeros(6);
    w.u16(1); // data reference index
    w.zeros(8);
    w.u16(u16::from(info.channels));
    w.u16(16); // sample size
    w.u16(0);
    w.u16(0);
    w.u32(AUDIO_TIMESCALE << 16);
    // dOps is a plain box (no version/flags word of its own).
    w.begin(b"dOps");
    w.u8(0); // version
    w.u8(info.channels);
    w.u16(info.pre_skip);
    w.u32(info.input_sample_rate);
    w.u16(0); // output gain
    w.u8(0); // channel mapping family 0: mono or stereo
    w.end()?;
    w.end()
}

/// Run-length encodes per-sample durations for `stts`.
pub(crate) fn run_lengths(durations: impl IntoIterator<Item = u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for d in durations {
        match out.last_mut() {
            Some((count, delta)) if *delta == d => *count += 1,
            _ => out.push((1, d)),
        }
    }
    out
}

/// Converts frame index gaps to per-frame durations (the last frame lasts
/// one frame).
pub(crate) fn frame_durations(indices: &[u64], fps: Fps) -> Result<Vec<u32>> {
    let tick = u64::from(fps.frame_ticks());
    let mut out = Vec::with_capacity(indices.len());
    for pair in indices.windows(2) {
        let d = (pair[1] - pair[0]) * tick;
        out.push(u32::try_from(d).map_err(|_| MediaError::Mux("frame gap too long".into()))?);
    }
    if !indices.is_empty() {
        out.push(fps.frame_ticks());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_sizes_are_patched() {
        let mut w = BoxWriter::new();
        w.begin(b"moov");
        w.begin_full(b"mvhd", 0, 0);
        w.u32(7);
        w.end().unwrap();
        w.end().unwrap();
        assert_eq!(&w.buf[0..8], &[0, 0, 0, 24, b'm', b'o', b'o', b'v']);
        assert_eq!(&w.buf[8..12], &[0, 0, 0, 16]);
        assert!(w.end().is_err());
    }

    #[test]
    fn durations_and_runs() {
        let d = frame_durations(&[0, 1, 2, 4, 5], Fps::F25).unwrap();
        assert_eq!(d, vec![3600, 3600, 7200, 3600, 3600]);
        assert_eq!(run_lengths(d), vec![(2, 3600), (1, 7200), (2, 3600)]);
    }
}
