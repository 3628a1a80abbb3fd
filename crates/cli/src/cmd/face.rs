//! `osa face --image FILE`: MTCNN detections and the reference crop, as JSON.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use osa_model::face::{crop, mtcnn::Mtcnn};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image (JPEG, PNG or WebP).
    #[arg(long)]
    image: PathBuf,
    /// MTCNN weights (safetensors; `scripts/convert_mtcnn.py` makes them).
    /// Default: $OSA_FACE_DETECTOR, else target/weights/face_detector.safetensors.
    #[arg(long)]
    face_detector: Option<PathBuf>,
    /// Side of the square crop the model sees (512 for the full preset).
    #[arg(long, default_value_t = crop::REFERENCE_SIZE)]
    size: u32,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let Some(weights) = super::face_detector_path(args.face_detector.as_ref()) else {
        return super::usage(
            "face",
            "no face detector weights: pass --face-detector FILE or set OSA_FACE_DETECTOR \
             (scripts/setup.sh writes target/weights/face_detector.safetensors)",
        );
    };
    let img = match image::open(&args.image) {
        Ok(img) => img.to_rgb8(),
        Err(e) => return super::usage("face", format!("--image {}: {e}", args.image.display())),
    };
    let detector = Mtcnn::load(&weights, tch::Device::Cpu)
        .with_context(|| format!("loading {}", weights.display()))?;
    let faces = detector.detect(&img)?;
    let prepared = crop::prepare_from_detections(&img, &faces, args.size)?;
    let selected =
        crop::select_face(&faces).and_then(|f| faces.iter().position(|g| std::ptr::eq(f, g)));
    let out = json!({
        "image": { "path": args.image, "width": img.width(), "height": img.height() },
        "faces": faces.iter().map(|f| json!({
            "box": f.bbox,
            "probability": f.probability,
            "landmarks": f.landmarks,
        })).collect::<Vec<_>>(),
        "selected": selected,
        "face_found": prepared.face_found,
        "crop_box": prepared.crop_box,
        "crop_size": args.size,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
