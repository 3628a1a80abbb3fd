//! `osa`: the command-line entry point. Each subcommand lives in `cmd/`.

mod cmd;

use std::process::ExitCode;

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
    Render(cmd::render::Args),
    /// Detect faces in an image and print them as JSON, with the crop the
    /// pipeline would use.
    Face(cmd::face::Args),
    /// Audio features, as the audio-encoder computes them.
    #[command(subcommand)]
    Audio(cmd::audio::Command),
    /// The gateway's API keys (stored hashed in Redis, one tenant each).
    Keys(cmd::keys::Args),
    /// Run services: `osa serve all` starts the gateway and the three stages
    /// in this process (a one-machine cluster).
    #[command(subcommand)]
    Serve(cmd::serve::Command),
    /// Create, convert and inspect weights directories.
    #[command(subcommand)]
    Weights(cmd::weights::Command),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Render(args) => cmd::render::run(&args),
        Command::Face(args) => cmd::face::run(&args),
        Command::Weights(c) => cmd::weights::run(&c),
        Command::Audio(c) => cmd::audio::run(&c),
        Command::Keys(args) => cmd::keys::run(&args),
        Command::Serve(c) => cmd::serve::run(&c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("osa: {e:#}");
            ExitCode::FAILURE
        }
    }
}
