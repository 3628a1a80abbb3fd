//! Fragmented MP4 (live sessions): init + media segments, each playable as it
//! arrives, and their concatenation a clean stream with index-derived times.

mod common;

use anyhow::Result;
use osa_media::frame::{Fps, RgbFrame, VideoSize};
use osa_media::h264::{H264Config, H264Encoder};
use osa_media::mp4::{Fmp4Config, Fmp4Segmenter};
use osa_media::output::{LiveChunk, LiveStream, OutputConfig};

use common::*;

const CLIP: u64 = 12;

/// Runs a live stream of `clips` 12-frame clips, two clips per segment,
/// with audio covering exactly the video; returns init and segments.
fn live(side: u32, fps: Fps, clips: u64, last_clip: u64) -> Result<(Vec<u8>, Vec<Vec<u8>>, usize)> {
    let size = VideoSize::new(side, side)?;
    let mut stream = LiveStream::new(OutputConfig::new(size, fps), 2)?;
    let frames = (clips - 1) * CLIP + last_clip;
    let audio_len = frames as usize * 16_000 / fps.as_u32() as usize;
    let pcm = tone_with_clicks(audio_len, &[8_000]);
    let mut chunks = Vec::new();
    let per_clip = audio_len / clips as usize;
    for c in 0..clips {
        // Audio for the clip arrives first (the video is generated from it).
        let end = if c + 1 == clips { audio_len } else { (c as usize + 1) * per_clip };
        stream.push_audio_i16(&pcm[c as usize * per_clip..end])?;
        let len = if c + 1 == clips { last_clip } else { CLIP };
        let data: Vec<Vec<u8>> =
            (c * CLIP..c * CLIP + len).map(|i| gradient(side, side, i)).collect();
        let clip: Vec<RgbFrame<'_>> =
            data.iter().map(|d| RgbFrame::new(side, side, d)).collect::<Result<_, _>>()?;
        if c + 1 == clips {
            chunks.extend(stream.push_final_clip(c * CLIP, &clip)?);
            break;
        }
        chunks.extend(stream.push_clip(c * CLIP, &clip)?);
    }
    let mut init = None;
    let mut segments = Vec::new();
    let mut expected_start = 0.0;
    let mut video_segments = 0u64;
    for chunk in chunks {
        match chunk {
            LiveChunk::Init(bytes) => {
                assert!(init.is_none() && segments.is_empty(), "init comes first, once");
                init = Some(bytes);
            }
            LiveChunk::Segment(s) => {
                assert_eq!(s.sequence_number as usize, segments.len() + 1);
                if s.frame_count > 0 {
                    assert!((s.start_secs() - expected_start).abs() < 1e-9);
                    expected_start += s.duration_secs();
                    video_segments += 1;
                } else {
                    // Only the audio tail after the last frame.
                    assert!(
                        s.start_secs() < expected_start && s.start_secs() > expected_start - 0.05
                    );
                }
                segments.push(s.bytes);
            }
        }
    }
    assert_eq!(video_segments, clips.div_ceil(2));
    Ok((init.expect("init segment"), segments, audio_len))
}

#[test]
fn concatenated_segments_decode_cleanly() -> Result<()> {
    let cases =
        [(64, Fps::F25, 5, 12), (64, Fps::F24, 4, 7), (64, Fps::F30, 3, 12), (512, Fps::F25, 3, 5)];
    for (side, fps, clips, last_clip) in cases {
        let frames = (clips - 1) * CLIP + last_clip;
        let (init, segments, audio_len) = live(side, fps, clips, last_clip)?;
        assert_eq!(top_level_boxes(&init), ["ftyp", "moov"]);
        // Opus-in-ISOBMFF 4.3.6.2: a 'roll' group in the init segment and in
        // every fragment that carries Opus.
        let has_roll = |b: &[u8]| b.windows(4).any(|w| w == b"roll");
        assert!(has_roll(&init));
        for s in &segments {
            assert_eq!(top_level_boxes(s), ["moof", "mdat"]);
            assert!(has_roll(s));
        }
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stream.mp4");
        let mut all = init.clone();
        for s in &segments {
            all.extend_from_slice(s);
        }
        std::fs::write(&path, &all)?;
        assert_decodes_cleanly(&path)?;
        let (video, audio) = probe(&path)?;
        assert_eq!(video.codec, "h264");
        assert_eq!(video.width, Some(u64::from(side)));
        assert_eq!(video.r_frame_rate, format!("{}/1", fps.as_u32()));
        assert_eq!(video.frames, Some(frames));
        let pts = video_pts(&path)?;
        for (i, t) in pts.iter().enumerate() {
            assert!((t - i as f64 / f64::from(fps.as_u32())).abs() < 1e-4, "frame {i} at {t}");
        }
        // Fragments cannot trim the encoder's last padding: at most one
        // 20 ms Opus frame more than the input.
        let audio = audio.expect("audio stream");
        assert_eq!(audio.codec, "opus");
        let input = audio_len as f64 / 16_000.0;
        let got = audio.duration.expect("audio duration");
        assert!(got >= input - 1e-3 && got <= input + 0.0205 + 0.0066, "{got} vs {input}");

        // Each segment is playable as it arrives: init + that segment alone.
        for (k, s) in segments.iter().enumerate() {
            let one = dir.path().join(format!("seg{k}.mp4"));
            let mut bytes = init.clone();
            bytes.extend_from_slice(s);
            std::fs::write(&one, bytes)?;
            assert_decodes_cleanly(&one)?;
        }
    }
    Ok(())
}

#[test]
fn audio_stays_in_sync_in_the_stream() -> Result<()> {
    let (init, segments, _) = live(64, Fps::F25, 4, 12)?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stream.mp4");
    let mut all = init;
    segments.iter().for_each(|s| all.extend_from_slice(s));
    std::fs::write(&path, &all)?;
    let pcm = decode_audio_16k(&path)?;
    // The click was placed at input sample 8000 (0.5 s).
    let window = &pcm[7_000..9_000];
    let peak =
        window.iter().enumerate().max_by_key(|(_, s)| s.unsigned_abs()).map(|(i, _)| i + 7_000);
    let peak = peak.expect("non-empty");
    assert!((peak as i64 - 8_000).abs() <= 16, "click at {peak}, expected 8000 (±1 ms)");
    Ok(())
}

/// Timestamps come from frame indices: a stream that starts at clip 1
/// (index 12) and skips clip 3 shows exactly those times, however the
/// segments were produced.
#[test]
fn timestamps_come_from_indices() -> Result<()> {
    let side = 64;
    let size = VideoSize::new(side, side)?;
    let mut enc = H264Encoder::new(H264Config::new(size, Fps::F25))?;
    let mut seg = Fmp4Segmenter::new(Fmp4Config { size, fps: Fps::F25, audio: None });
    let clips = [12u64, 24, 48];
    let mut segments = Vec::new();
    for &start in &clips {
        enc.force_keyframe();
        let mut frames = Vec::new();
        for i in start..start + CLIP {
            frames.push(enc.encode(&RgbFrame::new(side, side, &gradient(side, side, i))?, i)?);
        }
        // Produced with no regard to wall-clock time.
        let s = seg.write_segment(&frames, &[])?;
        assert_eq!(s.first_index, Some(start));
        assert_eq!(s.start_ticks, start * 3600);
        segments.push(s.bytes);
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("gaps.mp4");
    let mut all = seg.init_segment()?;
    segments.iter().for_each(|s| all.extend_from_slice(s));
    std::fs::write(&path, &all)?;
    assert_decodes_cleanly(&path)?;
    let pts = video_pts(&path)?;
    let expected: Vec<f64> =
        clips.iter().flat_map(|&s| (s..s + CLIP).map(|i| i as f64 / 25.0)).collect();
    assert_eq!(pts.len(), expected.len());
    for (got, want) in pts.iter().zip(&expected) {
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }
    // Going back in time is refused and leaves the segmenter usable.
    let back = enc.encode(&RgbFrame::new(side, side, &gradient(side, side, 0))?, 100)?;
    let mut stale = back.clone();
    stale.index = 30;
    assert!(seg.write_segment(&[stale], &[]).is_err());
    assert!(seg.write_segment(&[back], &[]).is_ok());
    Ok(())
}
