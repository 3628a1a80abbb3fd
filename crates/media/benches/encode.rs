//! Frames encoded per second (RGB -> I420 -> H.264 -> MP4) at 64x64 and
//! 512x512, plus Opus real-time factor.
//!
//! `cargo bench -p osa-media --bench encode`

use std::time::Instant;

use osa_media::frame::{Fps, RgbFrame, VideoSize};
use osa_media::h264::{H264Config, H264Encoder};
use osa_media::mp4::{Mp4Config, Mp4Writer};
use osa_media::opus::{OpusAudioEncoder, OpusConfig};
use osa_media::yuv::I420;

fn frames(side: u32, count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|t| {
            let mut out = Vec::with_capacity((side * side * 3) as usize);
            for y in 0..side {
                for x in 0..side {
                    let b = ((x + y + 4 * t as u32) % 256) as u8;
                    out.extend_from_slice(&[(x * 255 / side) as u8, (y * 255 / side) as u8, b]);
                }
            }
            out
        })
        .collect()
}

fn main() -> Result<(), osa_media::MediaError> {
    for (side, count) in [(64u32, 2000u64), (512, 300)] {
        let size = VideoSize::new(side, side)?;
        let data = frames(side, count);
        let rgb: Vec<RgbFrame<'_>> =
            data.iter().map(|d| RgbFrame::new(side, side, d)).collect::<Result<_, _>>()?;

        let start = Instant::now();
        let mut yuv = I420::new(size);
        for f in &rgb {
            yuv.fill_from_rgb(f);
        }
        let convert = count as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        let mut enc = H264Encoder::new(H264Config::new(size, Fps::F25))?;
        let mut writer = Mp4Writer::new(Mp4Config { size, fps: Fps::F25, audio: None });
        for (i, f) in rgb.iter().enumerate() {
            writer.push_video(enc.encode(f, i as u64)?)?;
        }
        let bytes = writer.finish()?;
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{side}x{side}: {:.0} frames/s encoded+muxed ({count} frames, {:.2} s, {} KiB); rgb->i420 alone {convert:.0} frames/s",
            count as f64 / secs,
            secs,
            bytes.len() / 1024,
        );
    }

    let seconds = 60;
    let pcm: Vec<i16> =
        (0..16_000 * seconds).map(|i| ((i as f32 * 0.0863).sin() * 8000.0) as i16).collect();
    let start = Instant::now();
    let mut opus = OpusAudioEncoder::new(OpusConfig::default())?;
    let mut packets = opus.push_i16(&pcm)?.len();
    packets += opus.finish()?.len();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "opus 16 kHz mono: {seconds} s of audio in {secs:.3} s ({:.0}x real time, {packets} packets)",
        seconds as f64 / secs
    );
    Ok(())
}
