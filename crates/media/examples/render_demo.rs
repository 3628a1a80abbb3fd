//! Writes a demo MP4 and a fragmented stream (init + segments concatenated)
//! from a moving gradient and a 220 Hz tone with a click every second.
//!
//! `cargo run -p osa-media --example render_demo -- OUT_DIR [SIZE] [FPS] [SECONDS]`

use anyhow::{Context, Result};
use osa_media::frame::{Fps, RgbFrame, VideoSize};
use osa_media::output::{LiveChunk, LiveStream, Mp4Render, OutputConfig};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next().context("usage: render_demo OUT_DIR [SIZE] [FPS] [SECONDS]")?,
    );
    let side: u32 = args.next().map_or(Ok(256), |s| s.parse())?;
    let fps = Fps::try_from(args.next().map_or(Ok(25), |s| s.parse())?)?;
    let seconds: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let size = VideoSize::new(side, side)?;
    let samples = (seconds * 16_000.0) as usize;
    let pcm: Vec<i16> = (0..samples)
        .map(|i| {
            if i % 16_000 < 16 {
                if i % 2 == 0 { 30_000 } else { -30_000 }
            } else {
                ((i as f32 * 2.0 * std::f32::consts::PI * 220.0 / 16_000.0).sin() * 3000.0) as i16
            }
        })
        .collect();
    let frames = (seconds * f64::from(fps.as_u32())).ceil() as u64;
    let frame = |t: u64| -> Vec<u8> {
        let mut out = Vec::with_capacity(size.rgb_len());
        for y in 0..side {
            for x in 0..side {
                out.extend_from_slice(&[
                    (x * 255 / side) as u8,
                    (y * 255 / side) as u8,
                    ((x + y + 4 * t as u32) % 256) as u8,
                ]);
            }
        }
        out
    };

    let mut render = Mp4Render::new(OutputConfig::new(size, fps))?;
    render.push_audio_i16(&pcm)?;
    for i in 0..frames {
        render.push_frame(&RgbFrame::new(side, side, &frame(i))?, i)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("render.mp4"), render.finish()?)?;

    let mut live = LiveStream::new(OutputConfig::new(size, fps), 2)?;
    live.push_audio_i16(&pcm)?;
    let mut stream = Vec::new();
    let mut chunks = Vec::new();
    for clip_start in (0..frames).step_by(12) {
        let data: Vec<Vec<u8>> = (clip_start..(clip_start + 12).min(frames)).map(frame).collect();
        let clip: Vec<RgbFrame<'_>> =
            data.iter().map(|d| RgbFrame::new(side, side, d)).collect::<Result<_, _>>()?;
        chunks.extend(live.push_clip(clip_start, &clip)?);
    }
    chunks.extend(live.finish()?);
    for chunk in chunks {
        match chunk {
            LiveChunk::Init(bytes) => stream.extend(bytes),
            LiveChunk::Segment(s) => {
                println!(
                    "segment {} start {:.3}s duration {:.3}s frames {}",
                    s.sequence_number,
                    s.start_secs(),
                    s.duration_secs(),
                    s.frame_count
                );
                stream.extend(s.bytes);
            }
        }
    }
    std::fs::write(dir.join("live.mp4"), stream)?;
    Ok(())
}
