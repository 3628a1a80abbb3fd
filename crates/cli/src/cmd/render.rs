//! `osa render`: image + audio in, MP4 out, every stage in one process (the
//! embedded mode, [`osa_cli::embedded`]: the same latents as the cluster):
//! audio decode, the audio-encoder's features, reference preparation,
//! one-step rolling generation clip by clip, VAE decode, H.264 + Opus into a
//! faststart MP4.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Instant,
};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use osa_cli::embedded::{Embedded, EmbeddedOptions};
use osa_media::{
    frame::{Fps, RgbFrame, VideoSize},
    output::{Mp4Render, OutputConfig},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reference portrait (JPEG, PNG or WebP).
    #[arg(long)]
    image: PathBuf,
    /// Speech or song (WAV, MP3, FLAC, Ogg Vorbis/Opus, M4A).
    #[arg(long)]
    audio: PathBuf,
    /// Output MP4 path.
    #[arg(long)]
    out: PathBuf,
    /// Output frame rate (24, 25 or 30).
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Sampling steps per clip: 1 (real time), 2 or 4 (higher quality).
    #[arg(long, default_value_t = 1)]
    quality: u32,
    /// Weights directory (see `osa weights`). Without it: the tiny preset
    /// with seeded random weights, which runs everything for real but does
    /// not make a real face.
    #[arg(long, env = "OSA_WEIGHTS")]
    weights: Option<PathBuf>,
    /// MTCNN weights for the face crop when --weights has none (default:
    /// $OSA_FACE_DETECTOR, else target/weights/face_detector.safetensors).
    #[arg(long)]
    face_detector: Option<PathBuf>,
    /// Noise seed, at least 1: the same seed and inputs give the same video,
    /// embedded or through --server. Default: a random one, printed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    seed: Option<u64>,
    /// Video bitrate in kbit/s (default: the encoder's choice for the size).
    #[arg(long)]
    bitrate_kbps: Option<u32>,
    /// Frame size WIDTHxHEIGHT (EchoMimic: 512x512, 512x896, 896x512);
    /// default: the preset's.
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// Longest audio accepted, in seconds.
    #[arg(long, default_value_t = 600)]
    max_audio_seconds: u64,
    /// Render through a running gateway (`http://HOST:PORT`, or `https://`)
    /// instead of in this process.
    #[arg(long, conflicts_with_all = ["face_detector", "size"])]
    server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "OSA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(server) = &args.server {
        return super::remote::run(&super::remote::Remote {
            server,
            api_key: args.api_key.as_deref(),
            image: &args.image,
            audio: &args.audio,
            out: &args.out,
            fps: args.fps,
            quality: args.quality,
            // 0 asks the server to pick one (it reports it).
            seed: args.seed.unwrap_or(0),
            bitrate_kbps: args.bitrate_kbps,
        });
    }
    for (what, path) in [("--image", &args.image), ("--audio", &args.audio)] {
        if !path.is_file() {
            return super::usage("render", format!("{what} {}: no such file", path.display()));
        }
    }
    let Ok(fps) = Fps::try_from(args.fps) else {
        return super::usage("render", format!("--fps {} is not one of 24, 25, 30", args.fps));
    };
    if !matches!(args.quality, 1 | 2 | 4) {
        return super::usage("render", format!("--quality {} is not one of 1, 2, 4", args.quality));
    }
    let image = match image::open(&args.image) {
        Ok(i) => i.to_rgb8(),
        Err(e) => return super::usage("render", format!("--image {}: {e}", args.image.display())),
    };
    let bytes = std::fs::read(&args.audio).with_context(|| args.audio.display().to_string())?;
    let hint = args.audio.extension().and_then(|e| e.to_str());
    let limits = osa_audio::DecodeLimits {
        max_duration: std::time::Duration::from_secs(args.max_audio_seconds),
    };
    let audio = match osa_audio::decode_file(&bytes, hint, &limits) {
        Ok(a) => a,
        Err(e) => return super::usage("render", format!("--audio {}: {e}", args.audio.display())),
    };

    let started = Instant::now();
    if args.weights.is_none() {
        eprintln!(
            "osa render: note: no --weights given: the tiny preset with seeded random weights \
             runs every stage for real, but random weights do not make a real face"
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        let seed = fastrand::u64(1..);
        eprintln!("osa render: seed {seed} (pass --seed {seed} to render the same video again)");
        seed
    });
    let embedded = Embedded::load(EmbeddedOptions {
        fps: args.fps,
        steps: args.quality,
        seed,
        weights: args.weights.clone(),
        face_detector: super::face_detector_path(args.face_detector.as_ref()),
        size: args.size,
        max_audio_seconds: args.max_audio_seconds,
    })?;
    if let Some(dir) = args.weights.as_ref().filter(|_| embedded.random_weights()) {
        eprintln!(
            "osa render: note: {} holds random weights: no real face comes out",
            dir.display()
        );
    }
    let pipe = embedded.pipeline();
    let preset = pipe.preset().clone();
    let avatar = embedded.prepare_avatar(&image)?;
    if !avatar.reference.face_found {
        eprintln!("osa render: no face found (or no face detector): using the whole image");
    } else if avatar.faces.len() > 1 {
        eprintln!("osa render: {} faces found; animating the largest", avatar.faces.len());
    }

    let seconds = audio.samples.len() as f64 / f64::from(audio.sample_rate());
    let clips = embedded.audio_clips(&audio.samples)?;
    let clip_len = preset.frames;

    let size = VideoSize::new(preset.width, preset.height)?;
    let mut config = OutputConfig::new(size, fps);
    if let Some(kbps) = args.bitrate_kbps {
        config.video.bitrate_bps = kbps * 1000;
    }
    let mut mp4 = Mp4Render::new(config)?;
    mp4.push_audio_f32(&audio.samples)?;

    let bar = ProgressBar::new(clips.len() as u64).with_style(
        ProgressStyle::with_template("{spinner} clip {pos}/{len} [{bar:30}] {elapsed} (eta {eta})")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut frame_index = 0u64;
    let generating = Instant::now();
    embedded.generate(&avatar, &clips, |clip| {
        let rgb = pipe.decode(&embedded.latents_tensor(&clip.latents))?;
        for f in 0..clip.real_frames as i64 {
            let data = Vec::<u8>::try_from(rgb.get(f).flatten(0, -1))?;
            mp4.push_frame(&RgbFrame::new(preset.width, preset.height, &data)?, frame_index)?;
            frame_index += 1;
        }
        bar.inc(1);
        Ok(())
    })?;
    let per_clip = generating.elapsed().as_secs_f64() / clips.len().max(1) as f64;
    let clips = clips.len();
    bar.finish_and_clear();
    let bytes = mp4.finish()?;
    write_atomically(&args.out, &bytes)?;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "osa render: {} frames ({seconds:.2} s at {} fps, {clips} clips of {clip_len}) in {took:.1} s \
         ({:.0} ms per clip generated and decoded; real-time factor {:.2}) -> {}",
        frame_index,
        args.fps,
        per_clip * 1000.0,
        took / seconds,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not WIDTHxHEIGHT with sides that are multiples of 64");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
    if w == 0 || h == 0 || w % 64 != 0 || h % 64 != 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Writes through a temporary file so a failed render leaves no half file.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let tmp = dir.join(format!(
        ".{}.partial",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("out.mp4")
    ));
    std::fs::write(&tmp, bytes).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}
