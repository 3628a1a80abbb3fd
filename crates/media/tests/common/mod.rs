//! Shared test helpers: synthetic frames and audio, and the independent
//! checks (ffprobe / ffmpeg from the system) every output must pass.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A smooth moving gradient with a colour ramp: R follows x, G follows y,
/// B moves with `t`, so motion and all three channels are exercised.
pub fn gradient(width: u32, height: u32, t: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            let r = (x * 255 / width.max(2).saturating_sub(1).max(1)) as u8;
            let g = (y * 255 / height.max(2).saturating_sub(1).max(1)) as u8;
            let b = ((x + y + 4 * t as u32) % 256) as u8 / 2 + 64;
            out.extend_from_slice(&[r, g, b]);
        }
    }
    out
}

/// Colour bars that shift by `t` pixels: hard edges for the encoder.
pub fn colour_bars(width: u32, height: u32, t: u64) -> Vec<u8> {
    const BARS: [[u8; 3]; 8] = [
        [235, 235, 235],
        [235, 235, 16],
        [16, 235, 235],
        [16, 235, 16],
        [235, 16, 235],
        [235, 16, 16],
        [16, 16, 235],
        [16, 16, 16],
    ];
    let mut out = Vec::with_capacity((width * height * 3) as usize);
    for _ in 0..height {
        for x in 0..width {
            let bar = ((x as u64 + t) * 8 / u64::from(width)) % 8;
            out.extend_from_slice(&BARS[bar as usize]);
        }
    }
    out
}

/// `samples` of 16 kHz mono: a quiet tone plus a full-scale click at each
/// position in `clicks`.
pub fn tone_with_clicks(samples: usize, clicks: &[usize]) -> Vec<i16> {
    let mut pcm: Vec<i16> = (0..samples)
        .map(|i| ((i as f32 * 2.0 * std::f32::consts::PI * 220.0 / 16_000.0).sin() * 2000.0) as i16)
        .collect();
    for &c in clicks {
        for k in 0..8 {
            if let Some(s) = pcm.get_mut(c + k) {
                *s = if k % 2 == 0 { 30_000 } else { -30_000 };
            }
        }
    }
    pcm
}

/// Speech from espeak-ng resampled to 16 kHz mono PCM16 by ffmpeg.
pub fn espeak_16k(text: &str) -> Result<Vec<i16>> {
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("speech.wav");
    let status = Command::new("espeak-ng").arg("-w").arg(&wav).arg(text).status()?;
    if !status.success() {
        bail!("espeak-ng failed");
    }
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&wav)
        .args(["-ar", "16000", "-ac", "1", "-f", "s16le", "-"])
        .output()?;
    if !out.status.success() {
        bail!("ffmpeg resample failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
}

/// What ffprobe says about one stream.
#[derive(Debug)]
pub struct Probe {
    pub codec: String,
    pub width: Option<u64>,
    pub height: Option<u64>,
    pub r_frame_rate: String,
    /// Frames counted by decoding (`-count_frames`).
    pub frames: Option<u64>,
    /// Frames the container's index claims (`nb_frames`).
    pub header_frames: Option<u64>,
    pub duration: Option<f64>,
    pub sample_rate: Option<u64>,
}

/// ffprobe -count_frames on `path`; returns (video, audio) streams.
pub fn probe(path: &Path) -> Result<(Probe, Option<Probe>)> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-of", "json", "-show_streams"])
        .arg(path)
        .output()
        .context("running ffprobe")?;
    if !out.status.success() {
        bail!("ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: Value = serde_json::from_slice(&out.stdout)?;
    let mut video = None;
    let mut audio = None;
    for s in json["streams"].as_array().context("no streams")? {
        let num = |k: &str| s[k].as_u64().or_else(|| s[k].as_str().and_then(|v| v.parse().ok()));
        let p = Probe {
            codec: s["codec_name"].as_str().unwrap_or_default().to_string(),
            width: num("width"),
            height: num("height"),
            r_frame_rate: s["r_frame_rate"].as_str().unwrap_or_default().to_string(),
            frames: num("nb_read_frames"),
            header_frames: num("nb_frames"),
            duration: s["duration"].as_str().and_then(|v| v.parse().ok()),
            sample_rate: num("sample_rate"),
        };
        match s["codec_type"].as_str() {
            Some("video") => video = Some(p),
            Some("audio") => audio = Some(p),
            _ => {}
        }
    }
    Ok((video.context("no video stream")?, audio))
}

/// `ffmpeg -v error -i path -f null -` must print nothing.
pub fn assert_decodes_cleanly(path: &Path) -> Result<()> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!("ffmpeg decode of {} reported: {stderr}", path.display());
    }
    Ok(())
}

/// Presentation times (seconds) of the video frames, as ffprobe reads them.
pub fn video_pts(path: &Path) -> Result<Vec<f64>> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time"])
        .args(["-of", "csv=p=0"])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("ffprobe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_end_matches(',').parse::<f64>().context("pts"))
        .collect()
}

/// Decodes video frame `n` to packed RGB24 with ffmpeg.
pub fn decode_frame_rgb(path: &Path, n: usize) -> Result<Vec<u8>> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-vf", &format!("select=eq(n\\,{n})"), "-frames:v", "1"])
        .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()?;
    if !out.status.success() {
        bail!("ffmpeg frame decode failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}

/// Decodes the audio track to 16 kHz mono PCM16 with ffmpeg.
pub fn decode_audio_16k(path: &Path) -> Result<Vec<i16>> {
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-vn", "-ar", "16000", "-ac", "1", "-f", "s16le", "-"])
        .output()?;
    if !out.status.success() {
        bail!("ffmpeg audio decode failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
}

/// Peak signal-to-noise ratio of two equally long 8-bit buffers, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum::<f64>()
        / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// Four-character codes of the top-level boxes of an MP4 byte stream.
pub fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        let size = if size == 1 {
            u64::from_be_bytes(bytes[pos + 8..pos + 16].try_into().unwrap()) as usize
        } else {
            size
        };
        out.push(String::from_utf8_lossy(&bytes[pos + 4..pos + 8]).into_owned());
        if size < 8 {
            break;
        }
        pos += size;
    }
    assert_eq!(pos, bytes.len(), "boxes do not tile the stream");
    out
}
