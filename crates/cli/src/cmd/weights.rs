//! `osa weights ...`: the weights directory (see `osa_model::weights`).

use std::{path::PathBuf, process::ExitCode};

use osa_model::{preset::Preset, weights};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write seeded random weights (they exercise the whole pipeline but do
    /// not make a real face).
    Init(InitArgs),
    /// Convert EchoMimic v1's public checkpoints into a weights directory,
    /// then check every key and shape (every missing, unexpected or
    /// misshaped tensor is named).
    Convert(Box<ConvertArgs>),
    /// Check a weights directory against its preset.
    Validate(ValidateArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Output weights directory.
    #[arg(long)]
    out: PathBuf,
    /// `echomimic` (the public checkpoints) or `tiny`.
    #[arg(long, default_value = "echomimic")]
    preset: String,
    /// EchoMimic's `pretrained_weights/` folder (instead of the six files).
    #[arg(long, conflicts_with_all = ["denoising_unet", "motion_module", "reference_unet", "face_locator", "vae", "whisper"])]
    echomimic_dir: Option<PathBuf>,
    /// With --echomimic-dir: the accelerated `*_acc.pth` variants.
    #[arg(long, requires = "echomimic_dir")]
    acc: bool,
    #[arg(long)]
    denoising_unet: Option<PathBuf>,
    #[arg(long)]
    motion_module: Option<PathBuf>,
    #[arg(long)]
    reference_unet: Option<PathBuf>,
    #[arg(long)]
    face_locator: Option<PathBuf>,
    /// sd-vae-ft-mse folder or weights file (either attention key spelling).
    #[arg(long)]
    vae: Option<PathBuf>,
    /// openai-whisper's tiny.pt (only the encoder is kept).
    #[arg(long)]
    whisper: Option<PathBuf>,
    /// facenet-pytorch's data/ folder: adds the MTCNN face detector.
    #[arg(long)]
    mtcnn_data_dir: Option<PathBuf>,
    /// fp32 (default), fp16 or keep.
    #[arg(long, default_value = "fp32")]
    dtype: String,
    /// Allow a full unpickle where a weights-only load refuses (trusted
    /// files only: unpickling runs code from the file).
    #[arg(long)]
    unsafe_pickle: bool,
    /// Python with torch and safetensors (default: the workspace venv).
    #[arg(long)]
    python: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The weights directory.
    dir: PathBuf,
    /// The preset to check against (default: the one config.json names).
    #[arg(long)]
    preset: Option<String>,
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
        Command::Convert(args) => convert(args),
        Command::Validate(args) => validate(args),
    }
}

fn preset_named(cmd: &str, name: &str) -> Result<Preset, anyhow::Result<ExitCode>> {
    Preset::by_name(name).ok_or_else(|| {
        super::usage(
            cmd,
            format!(
                "--preset {name:?} is not one of {}",
                osa_model::preset::PRESET_NAMES.join(", ")
            ),
        )
    })
}

fn report(report: osa_model::convert::ValidationReport) -> anyhow::Result<ExitCode> {
    println!("{report}");
    Ok(if report.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn convert(args: &ConvertArgs) -> anyhow::Result<ExitCode> {
    use osa_model::convert::{ConvertInputs, OutputDtype};
    let preset = match preset_named("weights convert", &args.preset) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let Ok(dtype) = args.dtype.parse::<OutputDtype>() else {
        return super::usage(
            "weights convert",
            format!("--dtype {:?} is not one of fp32, fp16, keep", args.dtype),
        );
    };
    let mut inputs = if let Some(dir) = &args.echomimic_dir {
        ConvertInputs::from_pretrained_weights(dir, args.acc, preset)
    } else {
        let files = [
            ("--denoising-unet", &args.denoising_unet),
            ("--motion-module", &args.motion_module),
            ("--reference-unet", &args.reference_unet),
            ("--face-locator", &args.face_locator),
            ("--vae", &args.vae),
            ("--whisper", &args.whisper),
        ];
        if let Some((flag, _)) = files.iter().find(|(_, p)| p.is_none()) {
            return super::usage(
                "weights convert",
                format!("{flag} is required (or give --echomimic-dir)"),
            );
        }
        let [d, m, r, f, v, w] = files.map(|(_, p)| p.clone().unwrap_or_default());
        ConvertInputs::new(d, m, r, f, v, w, preset)
    };
    inputs.mtcnn_data_dir = args.mtcnn_data_dir.clone();
    inputs.dtype = dtype;
    inputs.unsafe_pickle = args.unsafe_pickle;
    inputs.python = args.python.clone();
    eprintln!(
        "osa weights convert: converting into {} (this reads several GB for the full model)",
        args.out.display()
    );
    report(osa_model::convert::convert(&inputs, &args.out)?)
}

fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.preset {
        Some(p) => p.clone(),
        None => weights::read_manifest(&args.dir)?.preset,
    };
    let preset = match preset_named("weights validate", &name) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    report(osa_model::convert::validate(&args.dir, &preset)?)
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let preset = match preset_named("weights init", &args.preset) {
        Ok(p) => p,
        Err(exit) => return exit,
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
