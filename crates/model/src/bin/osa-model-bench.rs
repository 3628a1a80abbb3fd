//! `osa-model-bench`: times the inference path of one preset with seeded
//! random weights (speed does not depend on the weights' values).
//!
//! Per 12-frame clip it times the denoising UNet (one `generate_clip` call
//! per clip, for each requested step count), the VAE decode of the clip and
//! the audio encoder (whisper features of the clip's audio span and of a
//! 10 s signal); the reference preparation is timed once. CUDA work is
//! synchronised before every clock read. Prints a table (stderr with
//! `--json`, which puts one JSON object on stdout).

#![forbid(unsafe_code)]

use std::{
    error::Error,
    path::PathBuf,
    process::{Command, ExitCode},
    time::Instant,
};

use clap::{Parser, ValueEnum};
use image::{Rgb, RgbImage};
use osa_model::{
    device::Placement, pipeline::Pipeline, preset::PRESET_NAMES, preset::Preset,
    rolling::RollingState,
};
use serde_json::{Value, json};
use tch::{Device, Kind};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const SAMPLE_RATE: usize = 16_000;

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
    /// CUDA when available, else CPU.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum DtypeArg {
    F32,
    F16,
    Bf16,
}

impl DtypeArg {
    fn kind(self) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::F16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }
}

#[derive(Debug, Parser)]
#[command(name = "osa-model-bench", about = "Times the OSA-LCM inference path per 12-frame clip")]
struct Args {
    /// Model size.
    #[arg(long, default_value = "tiny", value_parser = clap::builder::PossibleValuesParser::new(PRESET_NAMES))]
    preset: String,
    /// `cuda` fails when CUDA is not usable; `auto` falls back to CPU.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Precision; default f16 on CUDA, f32 on CPU.
    #[arg(long, value_enum)]
    dtype: Option<DtypeArg>,
    /// Network calls per clip to time, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    steps: Vec<u32>,
    /// Timed clips per step count (and timed audio-encoder calls).
    #[arg(long, default_value_t = 5)]
    clips: usize,
    /// Untimed clips (and audio-encoder calls) before the timed ones.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Weights and stream seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reference image; default a synthetic portrait-like image.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Video frame rate the audio features are cut for.
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// CPU threads for libtorch (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Let cuDNN autotune convolution algorithms.
    #[arg(long)]
    cudnn_benchmark: bool,
    /// One JSON object on stdout; the table goes to stderr.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osa-model-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What libtorch reports about CUDA in this process.
fn cuda_report() -> Value {
    json!({
        "is_available": tch::Cuda::is_available(),
        "device_count": tch::Cuda::device_count(),
        "cudnn_is_available": tch::Cuda::cudnn_is_available(),
        "has_cuda": tch::utils::has_cuda(),
        // True once libtorch_cuda is loaded, with or without a GPU.
        "cuda_backend_loaded": tch::utils::has_cudart(),
        "linked_with_cuda_feature": cfg!(feature = "cuda"),
    })
}

fn choose_device(arg: DeviceArg) -> Result<Device> {
    let available = tch::Cuda::is_available();
    match (arg, available) {
        (DeviceArg::Cpu, _) => Ok(Device::Cpu),
        (DeviceArg::Cuda | DeviceArg::Auto, true) => Ok(Device::Cuda(0)),
        (DeviceArg::Cuda, false) => {
            // libtorch_cuda's hooks answer has_cudart() = true once the
            // library is loaded, GPU or not: that splits the two causes.
            let hint = if !cfg!(feature = "cuda") {
                "this binary was built without `--features cuda`, so libtorch_cuda is not linked"
            } else if !tch::utils::has_cudart() {
                "libtorch_cuda is not loaded (was the binary linked with --no-as-needed?)"
            } else {
                "libtorch_cuda is loaded but sees no GPU (no device, no driver, or \
                 CUDA_VISIBLE_DEVICES hides it)"
            };
            Err(format!(
                "--device cuda requested but tch::Cuda::is_available() is false \
                 (device_count {}): {hint}",
                tch::Cuda::device_count()
            )
            .into())
        }
        (DeviceArg::Auto, false) => {
            eprintln!(
                "note: CUDA not available (tch::Cuda::is_available() = false); running on CPU"
            );
            Ok(Device::Cpu)
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Runs `f` between two synchronised clock reads: (result, milliseconds).
fn timed<T>(device: Device, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    sync(device);
    let start = Instant::now();
    let out = f()?;
    sync(device);
    Ok((out, start.elapsed().as_secs_f64() * 1e3))
}

/// Mean, median and minimum of some timings in ms.
#[derive(Debug, Clone, Copy)]
struct Stats {
    mean: f64,
    p50: f64,
    min: f64,
    n: usize,
}

impl Stats {
    fn of(ms: &[f64]) -> Self {
        let mut sorted = ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let p50 =
            if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Self { mean: ms.iter().sum::<f64>() / n as f64, p50, min: sorted[0], n }
    }

    fn json(self) -> Value {
        json!({ "mean_ms": self.mean, "p50_ms": self.p50, "min_ms": self.min, "n": self.n })
    }

    fn cells(self) -> String {
        format!("{:>9.1} {:>9.1} {:>9.1}", self.mean, self.p50, self.min)
    }
}

/// A portrait-like test image: a warm oval with darker eyes and mouth on a
/// gradient background (no detector runs, so the whole image is the crop).
fn synthetic_image(size: u32) -> RgbImage {
    let s = size as f32;
    RgbImage::from_fn(size, size, |x, y| {
        let (u, v) = (x as f32 / s - 0.5, y as f32 / s - 0.5);
        let background = Rgb([(60.0 + 80.0 * (u + 0.5)) as u8, 90, (140.0 - 60.0 * v) as u8]);
        let in_face = (u / 0.28).powi(2) + (v / 0.38).powi(2) < 1.0;
        if !in_face {
            return background;
        }
        let eye = ((u.abs() - 0.1).powi(2) + (v + 0.08).powi(2)).sqrt() < 0.035;
        let mouth = u.abs() < 0.1 && (v - 0.18).abs() < 0.02;
        if eye || mouth { Rgb([60, 30, 30]) } else { Rgb([225, 180, 150]) }
    })
}

/// A speech-like 16 kHz signal: a wobbling tone with syllable-rate
/// amplitude modulation and some deterministic noise.
fn signal(seconds: f64) -> Vec<f32> {
    let n = (seconds * SAMPLE_RATE as f64) as usize;
    (0..n)
        .map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            let envelope = 0.5 + 0.5 * (t * 2.0 * std::f32::consts::PI * 4.0).sin();
            let tone = (t * 2.0 * std::f32::consts::PI * (180.0 + 40.0 * (t * 3.0).sin())).sin();
            let noise = ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.05;
            0.3 * envelope * tone + noise
        })
        .collect()
}

/// Peak resident set size of this process (VmHWM), MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// One nvidia-smi query, one line per row; `None` when nvidia-smi is absent
/// or fails.
fn nvidia_smi(args: &[&str]) -> Option<Vec<String>> {
    let out = Command::new("nvidia-smi").args(args).output().ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().to_string()).collect()
    })
}

/// Memory in use on GPU `index` (all processes), MiB.
fn gpu_used_mib(index: usize) -> Option<f64> {
    let i = index.to_string();
    let rows = nvidia_smi(&["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", &i])?;
    rows.first()?.parse().ok()
}

/// GPU memory nvidia-smi attributes to this process, MiB (absent in some
/// containers, where process ids are not visible).
fn process_gpu_mib() -> Option<f64> {
    let pid = std::process::id().to_string();
    let rows =
        nvidia_smi(&["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])?;
    rows.iter().find_map(|r| {
        let (p, m) = r.split_once(',')?;
        (p.trim() == pid).then(|| m.trim().parse().ok()).flatten()
    })
}

fn run(args: &Args) -> Result<()> {
    if args.clips == 0 {
        return Err("--clips must be at least 1".into());
    }
    if args.steps.is_empty() || args.steps.contains(&0) {
        return Err("--steps must list step counts of at least 1".into());
    }
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let cuda = cuda_report();
    eprintln!("libtorch CUDA: {cuda}");
    let device = choose_device(args.device)?;
    let dtype = args.dtype.unwrap_or(if device.is_cuda() { DtypeArg::F16 } else { DtypeArg::F32 });
    if !device.is_cuda() && dtype != DtypeArg::F32 {
        eprintln!("note: {} on CPU is slow in libtorch; f32 is the CPU default", dtype.name());
    }
    if args.cudnn_benchmark {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let gpu_index = match device {
        Device::Cuda(i) => Some(i),
        _ => None,
    };
    let gpu_name = gpu_index
        .and_then(|i| {
            nvidia_smi(&["--query-gpu=name", "--format=csv,noheader", "-i", &i.to_string()])
        })
        .and_then(|rows| rows.into_iter().next());
    let gpu_before = gpu_index.and_then(gpu_used_mib);

    let preset = Preset::by_name(&args.preset).ok_or("unknown preset")?;
    let placement = Placement { device, kind: dtype.kind() };
    let frames = preset.frames;
    let device_name = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    eprintln!(
        "preset {} {}x{}, {frames} frames/clip, device {device_name}{}, dtype {}, \
         threads {}, warmup {}, clips {}",
        preset.name,
        preset.width,
        preset.height,
        gpu_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        dtype.name(),
        tch::get_num_threads(),
        args.warmup,
        args.clips
    );

    let started = Instant::now();
    let pipe = Pipeline::random(preset.clone(), args.seed, placement, None)?;
    sync(device);
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("random weights built in {build_ms:.0} ms");

    let image = match &args.image {
        Some(p) => image::open(p).map_err(|e| format!("{}: {e}", p.display()))?.to_rgb8(),
        None => synthetic_image(preset.width),
    };
    let (avatar, reference_ms) = timed(device, || Ok(pipe.prepare_avatar(&image)?))?;
    eprintln!("reference preparation (once, cold): {reference_ms:.1} ms");

    // Audio: the features of one clip's span (frames / fps seconds) and of
    // a 10 s signal.
    let span = signal(frames as f64 / f64::from(args.fps));
    let ten = signal(10.0);
    let mut audio_times = [Vec::new(), Vec::new()];
    let mut clip_audio = None;
    for i in 0..args.warmup + args.clips {
        for (j, samples) in [&span, &ten].into_iter().enumerate() {
            let (features, ms) = timed(device, || Ok(pipe.audio_features(samples, args.fps)?))?;
            if i >= args.warmup {
                audio_times[j].push(ms);
            }
            if j == 0 {
                clip_audio = Some(features);
            }
        }
    }
    let clip_audio = clip_audio.ok_or("no audio features")?;
    let have = clip_audio.size()[0];
    if have < frames {
        return Err(format!("clip span gave {have} feature frames, need {frames}").into());
    }
    let clip_audio = clip_audio.narrow(0, 0, frames);
    let audio_span = Stats::of(&audio_times[0]);
    let audio_ten = Stats::of(&audio_times[1]);
    eprintln!(
        "audio features: clip span {:.1} ms, 10 s signal {:.1} ms (means)",
        audio_span.mean, audio_ten.mean
    );

    let mut rows = Vec::new();
    for &steps in &args.steps {
        let mut state = RollingState::new(args.seed, steps);
        let (mut generate, mut decode) = (Vec::new(), Vec::new());
        for i in 0..args.warmup + args.clips {
            let (clip, g) =
                timed(device, || Ok(pipe.generate_clip(&avatar, &state, &clip_audio)?))?;
            let (_rgb, d) = timed(device, || Ok(pipe.decode(&clip.latents)?))?;
            let warm = i >= args.warmup;
            eprintln!(
                "steps {steps} clip {i}{}: generate {g:.1} ms, decode {d:.1} ms",
                if warm { "" } else { " (warmup)" }
            );
            if warm {
                generate.push(g);
                decode.push(d);
            }
            state = clip.next;
        }
        let (g, d) = (Stats::of(&generate), Stats::of(&decode));
        eprintln!("steps {steps}: generate {:.1} ms, decode {:.1} ms (means)", g.mean, d.mean);
        rows.push((steps, g, d));
    }

    let host_peak = peak_rss_mib();
    let gpu_after = gpu_index.and_then(gpu_used_mib);
    let gpu_delta = gpu_before.zip(gpu_after).map(|(b, a)| a - b);
    let gpu_process = gpu_index.and(process_gpu_mib());

    // Table.
    let fps = |ms: f64| frames as f64 * 1e3 / ms;
    let mut table = String::new();
    table.push_str(&format!(
        "\nosa-model-bench: {} {}x{}, {frames} frames/clip, {device_name}{}, {}, \
         warmup {}, clips {}\n",
        preset.name,
        preset.width,
        preset.height,
        gpu_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
        dtype.name(),
        args.warmup,
        args.clips
    ));
    table.push_str(&format!("reference preparation (once, cold): {reference_ms:.1} ms\n"));
    table.push_str(&format!("{:<38} {:>9} {:>9} {:>9}\n", "ms per call", "mean", "p50", "min"));
    table.push_str(&format!(
        "{:<38} {}\n",
        format!("audio features, clip span ({:.2} s)", span.len() as f64 / SAMPLE_RATE as f64),
        audio_span.cells()
    ));
    table.push_str(&format!("{:<38} {}\n", "audio features, 10 s signal", audio_ten.cells()));
    table.push_str(&format!(
        "\n{:>5} | {:>29} | {:>29} | {:>8} | {:>11}\n",
        "steps",
        "UNet ms/clip mean/p50/min",
        "VAE decode ms/clip m/p50/min",
        "fps gen",
        "fps gen+dec"
    ));
    for (steps, g, d) in &rows {
        table.push_str(&format!(
            "{steps:>5} | {} | {} | {:>8.1} | {:>11.1}\n",
            g.cells(),
            d.cells(),
            fps(g.mean),
            fps(g.mean + d.mean)
        ));
    }
    let mib = |v: Option<f64>| v.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
    table.push_str(&format!("peak host RSS (VmHWM): {}\n", mib(host_peak)));
    if gpu_index.is_some() {
        table.push_str(&format!(
            "GPU memory (nvidia-smi, end of run; the caching allocator keeps its peak \
             reservation, CUDA context included): device used +{}, this process {}\n",
            mib(gpu_delta),
            mib(gpu_process)
        ));
    }
    eprint!("{table}");

    if args.json {
        let report = json!({
            "preset": preset.name,
            "width": preset.width,
            "height": preset.height,
            "frames_per_clip": frames,
            "fps": args.fps,
            "device": device_name,
            "gpu_name": gpu_name,
            "dtype": dtype.name(),
            "threads": tch::get_num_threads(),
            "warmup": args.warmup,
            "clips": args.clips,
            "seed": args.seed,
            "cuda": cuda,
            "build_ms": build_ms,
            "reference_ms": reference_ms,
            "audio": {
                "clip_span_seconds": span.len() as f64 / SAMPLE_RATE as f64,
                "clip_span": audio_span.json(),
                "ten_seconds": audio_ten.json(),
            },
            "steps": rows.iter().map(|(steps, g, d)| json!({
                "steps": steps,
                "generate": g.json(),
                "decode": d.json(),
                "fps_generate": fps(g.mean),
                "fps_generate_decode": fps(g.mean + d.mean),
            })).collect::<Vec<_>>(),
            "memory": {
                "host_peak_rss_mib": host_peak,
                "gpu_used_delta_mib": gpu_delta,
                "gpu_process_mib": gpu_process,
                "gpu_source": "nvidia-smi at the end of the run (tch 0.24 has no \
                               max_memory_allocated binding)",
            },
        });
        println!("{report}");
    }
    Ok(())
}
