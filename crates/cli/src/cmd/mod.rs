//! The `osa` subcommands.

pub mod audio;
pub mod face;
pub mod keys;
pub mod remote;
pub mod render;
pub mod serve;
pub mod weights;

use std::{path::PathBuf, process::ExitCode};

/// A usage error: printed as `osa <cmd>: <msg>`, exit status 2.
pub fn usage(cmd: &str, msg: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("osa {cmd}: {msg}");
    Ok(ExitCode::from(2))
}

/// `--face-detector`, else `$OSA_FACE_DETECTOR`, else the setup script's
/// `target/weights/face_detector.safetensors` when it exists.
pub fn face_detector_path(flag: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.clone());
    }
    if let Some(p) = std::env::var_os("OSA_FACE_DETECTOR") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from("target/weights/face_detector.safetensors");
    default.is_file().then_some(default)
}
