//! `osa`: the command-line entry point.
//!
//! `osa render` runs every stage in one process (the embedded mode); the
//! stages are being built, so for now it explains that and exits non-zero
//! instead of pretending.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "osa", version, about = "Real-time one-step diffusion talking portraits")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render a talking-portrait MP4 from a reference image and audio.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// Reference portrait (JPEG, PNG or WebP).
    #[arg(long)]
    image: PathBuf,
    /// Speech or song (WAV, MP3, FLAC, Ogg, M4A).
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Render(args) => render(&args),
    }
}

fn render(args: &RenderArgs) -> ExitCode {
    for (what, path) in [("--image", &args.image), ("--audio", &args.audio)] {
        if !path.is_file() {
            eprintln!("osa render: {what} {}: no such file", path.display());
            return ExitCode::from(2);
        }
    }
    if !matches!(args.fps, 24 | 25 | 30) {
        eprintln!("osa render: --fps {} is not one of 24, 25, 30", args.fps);
        return ExitCode::from(2);
    }
    if !matches!(args.quality, 1 | 2 | 4) {
        eprintln!("osa render: --quality {} is not one of 1, 2, 4", args.quality);
        return ExitCode::from(2);
    }
    eprintln!(
        "osa render: the embedded render path is not built yet (it needs the model, \
         audio-encoder, generator and decoder stages; see the open issues). \
         Nothing was written to {}.",
        args.out.display()
    );
    ExitCode::from(3)
}
