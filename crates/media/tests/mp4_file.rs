//! Finished (faststart) MP4 output checked by ffprobe and ffmpeg.

mod common;

use anyhow::Result;
use osa_media::frame::{Fps, RgbFrame, VideoSize};
use osa_media::output::{Mp4Render, OutputConfig};

use common::*;

struct Case {
    size: u32,
    fps: Fps,
    frames: u64,
    bars: bool,
}

/// Encodes `case` with an audio track exactly as long as the video and
/// returns the file path (in `dir`) and the audio length in samples.
fn render(dir: &std::path::Path, case: &Case) -> Result<(std::path::PathBuf, usize)> {
    let size = VideoSize::new(case.size, case.size)?;
    let mut render = Mp4Render::new(OutputConfig::new(size, case.fps))?;
    // Audio slightly longer than the video's whole frames would be odd;
    // make it end mid-frame to exercise the "within one frame" rule.
    let audio_len = (case.frames as usize * 16_000 / case.fps.as_u32() as usize) - 100;
    let pcm = tone_with_clicks(audio_len, &[4_000]);
    for chunk in pcm.chunks(1_000) {
        render.push_audio_i16(chunk)?;
    }
    for i in 0..case.frames {
        let rgb = if case.bars {
            colour_bars(case.size, case.size, i)
        } else {
            gradient(case.size, case.size, i)
        };
        render.push_frame(&RgbFrame::new(case.size, case.size, &rgb)?, i)?;
    }
    let bytes = render.finish()?;
    let path = dir.join(format!("out_{}_{}_{}.mp4", case.size, case.fps.as_u32(), case.frames));
    std::fs::write(&path, bytes)?;
    Ok((path, audio_len))
}

fn check(case: &Case) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (path, audio_len) = render(dir.path(), case)?;
    assert_decodes_cleanly(&path)?;
    let (video, audio) = probe(&path)?;
    let fps = f64::from(case.fps.as_u32());
    assert_eq!(video.codec, "h264");
    assert_eq!(video.width, Some(u64::from(case.size)));
    assert_eq!(video.height, Some(u64::from(case.size)));
    assert_eq!(video.r_frame_rate, format!("{}/1", case.fps.as_u32()));
    assert_eq!(video.frames, Some(case.frames));
    let video_duration = video.duration.expect("video duration");
    assert!((video_duration - case.frames as f64 / fps).abs() < 1e-3, "{video_duration}");
    let audio = audio.expect("audio stream");
    assert_eq!(audio.codec, "opus");
    let audio_duration = audio.duration.expect("audio duration");
    let input_duration = audio_len as f64 / 16_000.0;
    assert!((audio_duration - input_duration).abs() < 1e-3, "{audio_duration} vs {input_duration}");
    assert!(
        (video_duration - audio_duration).abs() <= 1.0 / fps,
        "{video_duration} vs {audio_duration}"
    );
    Ok(())
}

#[test]
fn small_files_at_every_rate() -> Result<()> {
    for fps in [Fps::F24, Fps::F25, Fps::F30] {
        for frames in [48, 50] {
            check(&Case { size: 64, fps, frames, bars: false })?;
        }
    }
    check(&Case { size: 64, fps: Fps::F25, frames: 37, bars: true })
}

#[test]
fn large_files() -> Result<()> {
    check(&Case { size: 512, fps: Fps::F25, frames: 36, bars: false })?;
    check(&Case { size: 512, fps: Fps::F30, frames: 31, bars: true })
}
