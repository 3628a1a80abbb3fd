//! Loading checkpoint tensors into a `VarStore`, with an optional key rename
//! (for example the VAE's legacy attention names, see `vae::legacy_key_rename`).

use std::path::Path;

use tch::{Tensor, nn::VarStore};

use super::{Error, Result};

/// A checkpoint-key rename: `Some(new)` renames, `None` keeps the key.
pub type KeyRename<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What a load did besides filling every variable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Variables filled.
    pub loaded: usize,
    /// Checkpoint keys (after renaming) that match no variable.
    pub unexpected: Vec<String>,
    /// Keys that were renamed, as (checkpoint key, variable name).
    pub renamed: Vec<(String, String)>,
}

/// Reads a safetensors file and fills `vs` through [`load_tensors`].
pub fn load_safetensors(
    vs: &mut VarStore,
    path: &Path,
    rename: Option<KeyRename<'_>>,
) -> Result<LoadReport> {
    let tensors = Tensor::read_safetensors(path).map_err(|e| load_error(path.display(), e))?;
    load_tensors(vs, tensors, rename).map_err(|e| match e {
        Error::Load { msg, .. } => load_error(path.display(), msg),
        e => e,
    })
}

/// Fills every variable of `vs` from `tensors`, renaming checkpoint keys
/// with `rename` first (`None` from it keeps the key). Values are cast to
/// each variable's kind and device. A missing variable or a shape mismatch
/// is an error; a source shaped `[o, i, 1, 1]` fills an `[o, i]` variable and
/// vice versa (1x1 convolutions stored as linear layers). Unused keys are
/// reported, not rejected.
pub fn load_tensors(
    vs: &mut VarStore,
    tensors: impl IntoIterator<Item = (String, Tensor)>,
    rename: Option<KeyRename<'_>>,
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut source = std::collections::HashMap::new();
    for (key, t) in tensors {
        let name = match rename.and_then(|r| r(&key)) {
            Some(new) => {
                report.renamed.push((key, new.clone()));
                new
            }
            None => key,
        };
        source.insert(name, t);
    }
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let missing: Vec<&str> = variables
        .iter()
        .filter(|(n, _)| !source.contains_key(n))
        .map(|(n, _)| n.as_str())
        .collect();
    if !missing.is_empty() {
        let shown = missing.iter().take(8).copied().collect::<Vec<_>>().join(", ");
        return Err(load_error("tensors", format!("{} variables missing: {shown}", missing.len())));
    }
    for (name, mut var) in variables {
        let src = source.remove(&name).expect("checked above");
        let (want, got) = (var.size(), src.size());
        let src = if want == got {
            src
        } else if trim_ones(&want) == trim_ones(&got) {
            src.reshape(&want)
        } else {
            return Err(load_error(
                "tensors",
                format!("{name}: variable {want:?}, checkpoint {got:?}"),
            ));
        };
        tch::no_grad(|| var.f_copy_(&src.to_device(var.device()).to_kind(var.kind())))?;
        report.loaded += 1;
    }
    report.unexpected = source.into_keys().collect();
    report.unexpected.sort();
    Ok(report)
}

fn trim_ones(dims: &[i64]) -> &[i64] {
    let end = dims.iter().rposition(|&d| d != 1).map_or(0, |p| p + 1);
    &dims[..end]
}

fn load_error(path: impl std::fmt::Display, msg: impl std::fmt::Display) -> Error {
    Error::Load { path: path.to_string(), msg: msg.to_string() }
}
