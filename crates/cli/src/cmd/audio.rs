//! `osa audio features`: the audio-encoder's features of a file, written as
//! safetensors for inspection and comparison with other implementations.

use std::{path::PathBuf, process::ExitCode};

use osa_audio_encoder::{FeaturesOptions, Recipe, features_file, write_safetensors};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write `mel` (80 x T, whisper's log-mel of the whole 16 kHz signal)
    /// and `features` (frames x 50 x C) of an audio file to a safetensors
    /// file.
    Features(FeaturesArgs),
}

#[derive(Debug, clap::Args)]
pub struct FeaturesArgs {
    /// Audio file (WAV, MP3, FLAC, Ogg Vorbis/Opus, M4A).
    #[arg(long)]
    audio: PathBuf,
    /// Video frame rate the features are aligned to (24, 25 or 30).
    #[arg(long, default_value_t = 25)]
    fps: u32,
    /// Weights directory (its audio encoder); default: seeded random
    /// weights of --preset.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Preset of the random weights: tiny or echomimic (whisper-tiny shapes).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// `service` (the streaming recipe the audio-encoder serves) or
    /// `echomimic` (EchoMimic's offline recipe).
    #[arg(long, default_value = "service")]
    recipe: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: &Command) -> anyhow::Result<ExitCode> {
    let Command::Features(args) = cmd;
    let recipe: Recipe = match args.recipe.parse() {
        Ok(r) => r,
        Err(e) => return super::usage("audio features", format!("--recipe {e}")),
    };
    if !matches!(args.fps, 24 | 25 | 30) {
        return super::usage(
            "audio features",
            format!("--fps {} is not one of 24, 25, 30", args.fps),
        );
    }
    if osa_model::preset::Preset::by_name(&args.preset).is_none() {
        return super::usage(
            "audio features",
            format!("--preset {:?} is not one of tiny, echomimic", args.preset),
        );
    }
    if !args.audio.is_file() {
        return super::usage(
            "audio features",
            format!("--audio {}: no such file", args.audio.display()),
        );
    }
    let options = FeaturesOptions {
        weights: args.weights.clone(),
        preset: args.preset.clone(),
        recipe,
        ..FeaturesOptions::new(args.fps)
    };
    let f = match features_file(&args.audio, &options) {
        Ok(f) => f,
        Err(e) => return super::usage("audio features", e),
    };
    write_safetensors(&args.out, &f)?;
    eprintln!(
        "wrote {}: mel {:?}, features {:?} ({} real frames, {:.2} s)",
        args.out.display(),
        f.mel.size(),
        f.features.size(),
        f.real_frames,
        f.samples as f64 / 16_000.0
    );
    Ok(ExitCode::SUCCESS)
}
