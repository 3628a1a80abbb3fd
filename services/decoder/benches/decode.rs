//! Decoder throughput on this machine: frames decoded per second (VAE and
//! TAESD) and frames H.264-encoded per second, at the tiny preset (64x64)
//! and at full size (512x512, the SD VAE decoder with seeded random
//! weights), one 12-frame clip per decode.
//!
//! ```sh
//! cargo bench -p osa-decoder --bench decode            # tiny and full
//! cargo bench -p osa-decoder --bench decode -- tiny    # tiny only
//! OSA_BENCH_FULL_FRAMES=2 cargo bench -p osa-decoder --bench decode -- full
//! ```
//! The full-size VAE costs ~1.2 TFLOP per frame: on a 2-core CPU one clip
//! takes minutes, so `OSA_BENCH_FULL_FRAMES` can shorten the clip.

use std::time::Instant;

use osa_decoder::worker::Decoders;
use osa_media::{
    frame::{Fps, RgbFrame, VideoSize},
    output::{Mp4Render, OutputConfig},
};
use osa_model::{device::Placement, preset::Preset, scheduler::NoiseGenerator};
use tch::{Device, Kind};

fn bench(preset: Preset, frames: i64, reps: usize) {
    let name = preset.name;
    let (w, h) = (preset.width, preset.height);
    let (lh, lw) = preset.latent_size();
    let t = Instant::now();
    let d = Decoders::random(preset, 0, Placement::cpu());
    println!(
        "{name}: {w}x{h}, built in {:.2} s, {frames} frames per clip",
        t.elapsed().as_secs_f64()
    );
    let z = NoiseGenerator::new(1).randn(&[frames, 4, lh, lw], Kind::Float, Device::Cpu);
    let _ = d.decode(&z.narrow(0, 0, 1), false).unwrap(); // warm-up
    let _ = d.decode(&z.narrow(0, 0, 1), true).unwrap();
    let mut rgb = None;
    for (label, fast) in [("vae", false), ("taesd", true)] {
        let t = Instant::now();
        for _ in 0..reps {
            rgb = Some(d.decode(&z, fast).unwrap());
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "{name}: {label:>5} decode {:8.2} frames/s ({:.3} s per {frames}-frame clip)",
            (frames as usize * reps) as f64 / s,
            s / reps as f64
        );
    }
    let rgb = Vec::<u8>::try_from(rgb.unwrap().flatten(0, -1)).unwrap();
    let size = VideoSize::new(w, h).unwrap();
    let mut config = OutputConfig::new(size, Fps::F25);
    config.audio = None;
    let mut mp4 = Mp4Render::new(config).unwrap();
    let frame_len = size.rgb_len();
    let encode_frames = (frames as usize * reps).max(48);
    let t = Instant::now();
    for i in 0..encode_frames {
        let f = &rgb[(i % frames as usize) * frame_len..][..frame_len];
        mp4.push_frame(&RgbFrame::new(w, h, f).unwrap(), i as u64).unwrap();
    }
    let bytes = mp4.finish().unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "{name}: h264 encode {:8.2} frames/s ({encode_frames} frames, {} bytes)",
        encode_frames as f64 / s,
        bytes.len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |n: &str| args.is_empty() || args.iter().any(|a| a == n);
    println!("torch threads: {}", tch::get_num_threads());
    if want("tiny") {
        bench(Preset::tiny(), 12, 20);
    }
    if want("full") {
        let frames =
            std::env::var("OSA_BENCH_FULL_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(12);
        bench(Preset::echomimic(), frames, 1);
    }
}
