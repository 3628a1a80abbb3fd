//! Just enough ISO-BMFF parsing to read an audio track's edit list.
//!
//! symphonia 0.6's mp4 reader parses `elst` but does not apply it (its
//! demuxer says "edits are not currently supported"), so AAC priming samples
//! come out of its decoder as leading audio: 1024 samples from ffmpeg's
//! encoder (its `initial_padding`), 2112 from Apple's. Left in, they delay
//! speech against the video by ~23 ms at 44.1 kHz. ffmpeg's mov demuxer
//! honours the edit list the same way as done here: skip the first edit's
//! `media_time`, keep `segment_duration` worth of samples.

/// The first non-empty edit of the first sound track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AudioEdit {
    /// Samples (in the media timescale) to drop from the start.
    pub media_time: u64,
    /// Length to keep, in the media timescale, when the edit states it.
    pub keep: Option<u64>,
    /// The track's media timescale (`mdhd`), normally its sample rate.
    pub media_timescale: u32,
}

/// Finds the edit list of the first sound (`soun`) track. Any malformed or
/// missing box gives `None`: the edit list is a refinement, the decoder
/// reports real damage.
pub(crate) fn find_audio_edit(file: &[u8]) -> Option<AudioEdit> {
    let moov = boxes(file).find(|(kind, _)| kind == b"moov")?.1;
    let movie_timescale = boxes(moov)
        .find(|(kind, _)| kind == b"mvhd")
        .and_then(|(_, body)| header_timescale(body))?;
    for (_, trak) in boxes(moov).filter(|(kind, _)| kind == b"trak") {
        let Some(mdia) = child(trak, b"mdia") else { continue };
        let is_sound = child(mdia, b"hdlr").and_then(|h| h.get(8..12)) == Some(b"soun");
        if !is_sound {
            continue;
        }
        let media_timescale = child(mdia, b"mdhd").and_then(header_timescale)?;
        let elst = child(trak, b"edts").and_then(|edts| child(edts, b"elst"))?;
        return first_edit(elst, movie_timescale, media_timescale);
    }
    None
}

fn first_edit(elst: &[u8], movie_timescale: u32, media_timescale: u32) -> Option<AudioEdit> {
    let version = *elst.first()?;
    let count = be_u32(elst.get(4..8)?) as usize;
    let entry_len = if version == 1 { 20 } else { 12 };
    let entries = elst.get(8..)?;
    for i in 0..count.min(entries.len() / entry_len) {
        let e = &entries[i * entry_len..(i + 1) * entry_len];
        let (segment_duration, media_time) = if version == 1 {
            (be_u64(&e[0..8]), be_u64(&e[8..16]) as i64)
        } else {
            (u64::from(be_u32(&e[0..4])), i64::from(be_u32(&e[4..8]) as i32))
        };
        // media_time -1 is an empty edit (a gap before the media starts):
        // skipped, since nothing precedes audio in the files we take.
        if media_time < 0 {
            continue;
        }
        let keep = (segment_duration > 0 && movie_timescale > 0).then(|| {
            let scaled = u128::from(segment_duration) * u128::from(media_timescale)
                + u128::from(movie_timescale) / 2;
            u64::try_from(scaled / u128::from(movie_timescale)).unwrap_or(u64::MAX)
        });
        return Some(AudioEdit { media_time: media_time as u64, keep, media_timescale });
    }
    None
}

/// `timescale` of an `mvhd` or `mdhd` body (both share the layout up to it).
fn header_timescale(body: &[u8]) -> Option<u32> {
    let at = if *body.first()? == 1 { 20 } else { 12 };
    let ts = be_u32(body.get(at..at + 4)?);
    (ts > 0).then_some(ts)
}

fn child<'a>(parent: &'a [u8], kind: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(parent).find(|(k, _)| k == kind).map(|(_, body)| body)
}

/// Iterates the boxes directly inside `data` as (type, body).
fn boxes(mut data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    std::iter::from_fn(move || {
        let size32 = be_u32(data.get(0..4)?);
        let kind: [u8; 4] = data.get(4..8)?.try_into().ok()?;
        let (header, size) = match size32 {
            0 => (8, data.len()),
            1 => (16, usize::try_from(be_u64(data.get(8..16)?)).ok()?),
            n => (8, n as usize),
        };
        if size < header || size > data.len() {
            data = &[];
            return None;
        }
        let body = &data[header..size];
        data = &data[size..];
        Some((kind, body))
    })
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn timescale_box(kind: &[u8; 4], ts: u32) -> Vec<u8> {
        let mut body = vec![0u8; 12];
        body.extend_from_slice(&ts.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        bx(kind, &body)
    }

    #[test]
    fn reads_ffmpeg_style_edit_list() {
        let mut elst = vec![0, 0, 0, 0, 0, 0, 0, 1];
        elst.extend_from_slice(&6051u32.to_be_bytes());
        elst.extend_from_slice(&1024u32.to_be_bytes());
        elst.extend_from_slice(&[0, 1, 0, 0]);
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(b"soun");
        let mdia = [timescale_box(b"mdhd", 22050), bx(b"hdlr", &hdlr)].concat();
        let trak = [bx(b"edts", &bx(b"elst", &elst)), bx(b"mdia", &mdia)].concat();
        let moov = [timescale_box(b"mvhd", 1000), bx(b"trak", &trak)].concat();
        let file = [bx(b"ftyp", b"M4A \0\0\0\0"), bx(b"moov", &moov)].concat();
        let edit = find_audio_edit(&file).unwrap();
        assert_eq!(
            edit,
            AudioEdit { media_time: 1024, keep: Some(133_425), media_timescale: 22050 }
        );
    }

    #[test]
    fn garbage_gives_none() {
        assert_eq!(find_audio_edit(b""), None);
        assert_eq!(find_audio_edit(&[0xff; 64]), None);
        assert_eq!(find_audio_edit(&[0, 0, 0, 1, b'm', b'o', b'o', b'v', 0xff]), None);
    }
}
