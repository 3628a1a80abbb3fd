//! Seconds of audio encoded per second of wall time through the stage's
//! model thread (recipe windows, cross-stream batching), for the tiny
//! encoder (n_state 16) and whisper-tiny's shape (n_state 384), random
//! weights, with 1 and 8 concurrent streams.
//!
//! ```sh
//! cargo bench -p osa-audio-encoder --bench throughput -- [--seconds 30] [--device cpu|cuda]
//! ```

use std::time::{Duration, Instant};

use osa_audio_encoder::{
    model::{ModelConfig, encoder_config, parse_device, placement, stride_of},
    recipe::{Layout, Segment, WindowPlan},
    worker::{BatchConfig, Worker},
};

struct Args {
    seconds: usize,
    device: String,
}

fn args() -> Args {
    let mut a = Args { seconds: 30, device: "cpu".into() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => a.seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(30),
            "--device" => a.device = it.next().unwrap_or_else(|| "cpu".into()),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// One stream: a whole signal through the recipe and the worker.
async fn stream(worker: Worker, plan: WindowPlan, stride: usize, samples: Vec<f32>) -> usize {
    let mut seg = Segment::new(plan, Layout { fps: 25, frames_per_clip: 12 }, stride, 0);
    seg.push(&samples);
    seg.finish().expect("long enough");
    let mut clips = 0;
    loop {
        let jobs = seg.ready_windows(16);
        if jobs.is_empty() {
            break;
        }
        for s in worker.encode(jobs).await.expect("encode") {
            seg.accept(&s);
        }
        clips += seg.ready_clips().len();
    }
    clips + seg.ready_clips().len()
}

/// Milliseconds per window of one forward pass at several batch sizes, on
/// this thread (no queue).
fn forward_times(preset: &str, device: Option<tch::Device>, plan: WindowPlan, signal: &[f32]) {
    let model = osa_audio_encoder::model::WindowModel::load(&ModelConfig {
        weights: None,
        preset: preset.into(),
        seed: 0,
        placement: placement(device),
        plan,
    })
    .unwrap();
    let mut seg = Segment::new(plan, Layout { fps: 25, frames_per_clip: 12 }, model.stride(), 0);
    seg.push(&signal[..(signal.len()).min(40 * 16_000)]);
    let jobs = seg.ready_windows(32);
    let mut line = format!("{preset:9} forward pass, ms per window:");
    for b in [1usize, 4, 16, 32].into_iter().filter(|&b| b <= jobs.len()) {
        let refs: Vec<_> = jobs[..b].iter().collect();
        model.encode(&refs).unwrap();
        let reps = (64 / b).max(2);
        let t = Instant::now();
        for _ in 0..reps {
            model.encode(&refs).unwrap();
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / (reps * b) as f64;
        line += &format!(" batch {b}: {ms:.2};");
    }
    println!("{line}");
}

fn main() {
    let a = args();
    let device = parse_device(&a.device).expect("--device");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let plan = WindowPlan::default();
    // A speech-like signal: a chirp with a syllable-rate envelope.
    let signal: Vec<f32> = (0..a.seconds * 16_000)
        .map(|i| {
            let t = i as f32 / 16_000.0;
            let env = (0.5 + 0.5 * (2.0 * std::f32::consts::PI * 4.0 * t).sin()).powi(2);
            0.3 * env * (2.0 * std::f32::consts::PI * (150.0 + 40.0 * t.sin()) * t * 3.0).sin()
        })
        .collect();
    println!(
        "device {} ({:?}), window {} ms core + {} ms left + {} ms right, {} s per stream",
        a.device,
        placement(device),
        plan.core * 20,
        plan.left * 20,
        plan.right * 20,
        a.seconds
    );
    for preset in ["tiny", "echomimic"] {
        forward_times(preset, device, plan, &signal);
        let enc = encoder_config(None, preset).unwrap();
        let stride = stride_of(&enc);
        let model = ModelConfig {
            weights: None,
            preset: preset.into(),
            seed: 0,
            placement: placement(device),
            plan,
        };
        let batch = BatchConfig {
            max_batch: 32,
            max_batch_wait: Duration::from_millis(2),
            queue_capacity: 64,
        };
        let worker = Worker::spawn(model, batch).unwrap();
        runtime.block_on(async {
            worker.loaded().await.unwrap();
            // Warm-up.
            stream(worker.clone(), plan, stride, signal[..64_000].to_vec()).await;
            for streams in [1usize, 8] {
                let started = Instant::now();
                let tasks: Vec<_> = (0..streams)
                    .map(|_| tokio::spawn(stream(worker.clone(), plan, stride, signal.clone())))
                    .collect();
                let mut clips = 0;
                for t in tasks {
                    clips += t.await.unwrap();
                }
                let wall = started.elapsed().as_secs_f64();
                let audio = (streams * a.seconds) as f64;
                println!(
                    "{preset:9} (n_state {:3}) {streams} stream(s): {audio:5.0} s of audio in \
                     {wall:6.2} s = {:7.1} audio s/s ({clips} clips)",
                    enc.n_state,
                    audio / wall
                );
            }
        });
    }
}
