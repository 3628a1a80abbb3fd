//! `osa weights ...`: the weights directory (see `osa_model::weights`).

use std::{path::PathBuf, process::ExitCode};

use osa_model::{preset::Preset, weights};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write seeded random weights (they exercise the whole pipeline but do
    /// not make a real face).
    Init(InitArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// `tiny` or `echomimic`.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// MTCNN weights to include as the face detector (default: as `osa face`).
    #[arg(long)]
    face_detector: Option<PathBuf>,
}

pub fn run(cmd: &Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init(args) => init(args),
    }
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let Some(preset) = Preset::by_name(&args.preset) else {
        return super::usage(
            "weights init",
            format!(
                "--preset {:?} is not one of {}",
                args.preset,
                osa_model::preset::PRESET_NAMES.join(", ")
            ),
        );
    };
    let detector = super::face_detector_path(args.face_detector.as_ref());
    let manifest = weights::init_random(&preset, args.seed, &args.out, detector.as_deref())?;
    eprintln!(
        "wrote {} preset weights (seed {}) to {}{}",
        manifest.preset,
        args.seed,
        args.out.display(),
        if detector.is_some() { " with the MTCNN face detector" } else { " (no face detector)" }
    );
    Ok(ExitCode::SUCCESS)
}
