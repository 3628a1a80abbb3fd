//! `osa weights convert`: EchoMimic v1's public checkpoints (antgroup/echomimic
//! `infer_audio2vid.py` loads them; see `keys/echomimic/README.md`, section
//! 2) turned into an osa weights directory ([`crate::weights`]), and a
//! validation that names every missing, unexpected or wrongly shaped key.
//!
//! The `.pth` pickles need torch to read, so [`convert`] runs
//! `scripts/convert_echomimic.py` (embedded in the binary as [`SCRIPT`]) with
//! the workspace venv's python; the script writes every tensor it found and
//! validation is done here, against the models osa actually builds:
//! [`validate`] compares each file's safetensors header (names and shapes,
//! without reading the data) with the component's variables, then loads
//! the file through the real loading path (`vae::load`,
//! `nn::load_safetensors`, `VarStore::load` for MTCNN) and checks that every
//! value is finite.
//!
//! Memory: components are built and checked one at a time (zero-filled fp32
//! variables plus the file's tensors), so validating the `echomimic` preset
//! peaks near twice the denoising UNet's size (about 10 GB) rather than
//! holding the whole network.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use tch::{Device, Kind, nn::VarStore};

use crate::{
    audio::whisper::WhisperEncoder,
    face::mtcnn::Mtcnn,
    face_locator::FaceLocator,
    preset::Preset,
    unet2d::UNet2DConditionModel,
    unet3d::UNet3DConditionModel,
    vae::AutoencoderKL,
    weights::{COMPONENTS, FACE_DETECTOR_FILE, Manifest},
};

/// The conversion script, run with `python -c` unless
/// [`ConvertInputs::script`] names a file.
pub const SCRIPT: &str = include_str!("../../../scripts/convert_echomimic.py");

/// Floating-point dtype of the converted files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputDtype {
    /// Everything as fp32 (whisper's fp16 is widened): the default.
    #[default]
    Fp32,
    /// Everything as fp16 (half the disk; values rounded).
    Fp16,
    /// As stored in the inputs (EchoMimic's .pth are fp32, whisper fp16).
    Keep,
}

impl OutputDtype {
    /// The script's `--dtype` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
            Self::Keep => "keep",
        }
    }
}

impl std::str::FromStr for OutputDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp16" => Ok(Self::Fp16),
            "keep" => Ok(Self::Keep),
            _ => Err(format!("dtype {s:?} is not fp32, fp16 or keep")),
        }
    }
}

/// EchoMimic v1's checkpoint files, as its release lays them out.
#[derive(Debug, Clone)]
pub struct ConvertInputs {
    /// `denoising_unet.pth` (no motion-module entries).
    pub denoising_unet: PathBuf,
    /// `motion_module.pth` (its entries override the denoising UNet's).
    pub motion_module: PathBuf,
    /// `reference_unet.pth`.
    pub reference_unet: PathBuf,
    /// `face_locator.pth`.
    pub face_locator: PathBuf,
    /// The `sd-vae-ft-mse` folder, or its `diffusion_pytorch_model`
    /// `.safetensors`/`.bin` file (legacy attention names accepted).
    pub vae: PathBuf,
    /// `whisper_tiny.pt` (openai-whisper: `dims` + `model_state_dict`).
    pub whisper: PathBuf,
    /// facenet-pytorch's `data/` folder (`pnet.pt`, `rnet.pt`, `onet.pt`):
    /// writes the optional face detector.
    pub mtcnn_data_dir: Option<PathBuf>,
    /// The preset the checkpoints are for (`echomimic` for the real ones).
    pub preset: Preset,
    pub dtype: OutputDtype,
    /// Allow a full unpickle where `torch.load(weights_only=True)` refuses a
    /// file (runs code from the file: trusted files only).
    pub unsafe_pickle: bool,
    /// Python interpreter with torch and safetensors; default
    /// [`default_python`].
    pub python: Option<PathBuf>,
    /// Run this script file instead of the embedded [`SCRIPT`].
    pub script: Option<PathBuf>,
}

impl ConvertInputs {
    /// The files of EchoMimic's `pretrained_weights/` folder `dir`:
    /// `denoising_unet.pth`, `motion_module.pth` (with `acc`: the
    /// accelerated `denoising_unet_acc.pth`, `motion_module_acc.pth`),
    /// `reference_unet.pth`, `face_locator.pth`, `sd-vae-ft-mse/` and
    /// `audio_processor/whisper_tiny.pt`; other fields as [`Self::new`].
    pub fn from_pretrained_weights(dir: &Path, acc: bool, preset: Preset) -> Self {
        let suffix = if acc { "_acc" } else { "" };
        Self::new(
            dir.join(format!("denoising_unet{suffix}.pth")),
            dir.join(format!("motion_module{suffix}.pth")),
            dir.join("reference_unet.pth"),
            dir.join("face_locator.pth"),
            dir.join("sd-vae-ft-mse"),
            dir.join("audio_processor/whisper_tiny.pt"),
            preset,
        )
    }

    /// Inputs with the defaults: fp32, no face detector, weights-only
    /// pickles, the default python and the embedded script.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        denoising_unet: impl Into<PathBuf>,
        motion_module: impl Into<PathBuf>,
        reference_unet: impl Into<PathBuf>,
        face_locator: impl Into<PathBuf>,
        vae: impl Into<PathBuf>,
        whisper: impl Into<PathBuf>,
        preset: Preset,
    ) -> Self {
        Self {
            denoising_unet: denoising_unet.into(),
            motion_module: motion_module.into(),
            reference_unet: reference_unet.into(),
            face_locator: face_locator.into(),
            vae: vae.into(),
            whisper: whisper.into(),
            mtcnn_data_dir: None,
            preset,
            dtype: OutputDtype::default(),
            unsafe_pickle: false,
            python: None,
            script: None,
        }
    }
}

/// Why a conversion or validation could not run, or what it found wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{input}: {} does not exist", path.display())]
    MissingInput { input: &'static str, path: PathBuf },
    #[error("no python interpreter: {0}")]
    NoPython(String),
    #[error("run {}: {source}", python.display())]
    Spawn { python: PathBuf, source: std::io::Error },
    #[error("convert_echomimic.py failed ({status}):\n{stderr}")]
    Script { status: String, stdout: String, stderr: String },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}", invalid_message(.0))]
    Invalid(Box<ValidationReport>),
}

fn invalid_message(report: &ValidationReport) -> String {
    format!(
        "{}: the weights do not match preset {}:\n  {}",
        report.dir.display(),
        report.preset,
        report.problems().join("\n  ")
    )
}

/// A file tensor whose shape differs from its variable's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub key: String,
    pub variable: Vec<i64>,
    pub file: Vec<i64>,
}

/// What [`validate`] found for one component file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ComponentReport {
    /// `vae`, `reference_unet`, ..., `face_detector`.
    pub component: &'static str,
    pub file: PathBuf,
    /// The file does not exist (every other field is then empty).
    pub file_missing: bool,
    /// Tensors in the file, and their count per dtype (`F32`, `F16`, ...).
    pub tensors: usize,
    pub dtypes: BTreeMap<String, usize>,
    /// Variables of the component osa builds.
    pub variables: usize,
    /// Variables with no tensor in the file.
    pub missing: Vec<String>,
    /// File keys (after the VAE's legacy rename) that match no variable.
    pub unexpected: Vec<String>,
    pub shape_mismatches: Vec<ShapeMismatch>,
    /// Keys loaded under another name (the VAE's legacy attention names).
    pub renamed: usize,
    /// Variables filled by the real loader (0 when it was not run because
    /// of the problems above).
    pub loaded: usize,
    /// The real loader's or the header reader's error.
    pub load_error: Option<String>,
    /// Variables holding NaN or infinity after loading.
    pub non_finite: Vec<String>,
}

impl ComponentReport {
    /// Each problem as one line naming the component and the key.
    pub fn problems(&self) -> Vec<String> {
        let c = self.component;
        let mut out = Vec::new();
        if self.file_missing {
            out.push(format!("{c}: file {} missing", self.file.display()));
        }
        out.extend(self.missing.iter().map(|k| format!("{c}: missing key {k}")));
        out.extend(self.unexpected.iter().map(|k| format!("{c}: unexpected key {k}")));
        out.extend(self.shape_mismatches.iter().map(|m| {
            format!("{c}: shape mismatch {}: model {:?}, file {:?}", m.key, m.variable, m.file)
        }));
        out.extend(self.load_error.iter().map(|e| format!("{c}: load failed: {e}")));
        out.extend(self.non_finite.iter().map(|k| format!("{c}: non-finite values in {k}")));
        out
    }
}

/// What [`validate`] (or [`convert`]) found for a weights directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationReport {
    pub dir: PathBuf,
    /// The preset validated against.
    pub preset: String,
    /// `config.json`, when it reads and checks.
    pub manifest: Option<Manifest>,
    /// Why `config.json` is unusable or names another preset.
    pub manifest_error: Option<String>,
    /// The five components in [`COMPONENTS`] order, then the face detector
    /// when its file exists.
    pub components: Vec<ComponentReport>,
    /// The conversion script's output (empty for a plain [`validate`]).
    pub script_output: String,
}

impl ValidationReport {
    /// No problem anywhere: the directory loads with `Pipeline::load`.
    pub fn is_ok(&self) -> bool {
        self.problems().is_empty()
    }

    /// Every problem, one line each, naming the component and key.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> =
            self.manifest_error.iter().map(|e| format!("config.json: {e}")).collect();
        for c in &self.components {
            out.extend(c.problems());
        }
        out
    }

    /// `Ok(self)` when clean, else [`ConvertError::Invalid`] listing every
    /// problem.
    pub fn into_result(self) -> Result<Self, ConvertError> {
        if self.is_ok() { Ok(self) } else { Err(ConvertError::Invalid(Box::new(self))) }
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} (preset {}):", self.dir.display(), self.preset)?;
        for c in &self.components {
            if c.file_missing {
                writeln!(f, "  {:<15} missing", c.component)?;
                continue;
            }
            let dtypes: Vec<String> = c.dtypes.iter().map(|(d, n)| format!("{n} {d}")).collect();
            writeln!(
                f,
                "  {:<15} {}/{} variables loaded from {} tensors ({}){}",
                c.component,
                c.loaded,
                c.variables,
                c.tensors,
                dtypes.join(", "),
                if c.renamed > 0 { format!(", {} renamed", c.renamed) } else { String::new() }
            )?;
        }
        let problems = self.problems();
        if problems.is_empty() {
            write!(f, "  ok")
        } else {
            write!(f, "  {} problems:\n    {}", problems.len(), problems.join("\n    "))
        }
    }
}

/// The workspace venv's python: `$OSA_VENV/bin/python`, else
/// `<workspace>/.venv/bin/python` (the workspace this crate was built in).
pub fn default_python() -> Result<PathBuf, ConvertError> {
    let venv = std::env::var_os("OSA_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv"));
    let python = venv.join("bin/python");
    if python.is_file() {
        Ok(python)
    } else {
        Err(ConvertError::NoPython(format!(
            "{} missing (set OSA_VENV or pass a python with torch and safetensors)",
            python.display()
        )))
    }
}

/// Converts EchoMimic v1's checkpoints into the weights directory `out`
/// (created if needed) with [`run_script`], then [`validate`]s it against
/// `inputs.preset`. The report may hold problems: check
/// [`ValidationReport::is_ok`] or call [`ValidationReport::into_result`].
pub fn convert(inputs: &ConvertInputs, out: &Path) -> Result<ValidationReport, ConvertError> {
    let output = run_script(inputs, out)?;
    let mut report = validate(out, &inputs.preset)?;
    report.script_output = output;
    Ok(report)
}

/// Runs `scripts/convert_echomimic.py` on `inputs`, writing `out`, without
/// validating; returns what the script printed (stdout, then stderr's
/// warnings). Inputs are checked to exist first.
pub fn run_script(inputs: &ConvertInputs, out: &Path) -> Result<String, ConvertError> {
    let files = [
        ("denoising_unet", &inputs.denoising_unet, "--denoising-unet"),
        ("motion_module", &inputs.motion_module, "--motion-module"),
        ("reference_unet", &inputs.reference_unet, "--reference-unet"),
        ("face_locator", &inputs.face_locator, "--face-locator"),
        ("vae", &inputs.vae, "--vae"),
        ("whisper", &inputs.whisper, "--whisper"),
    ];
    for (input, path, _) in files {
        if !path.exists() {
            return Err(ConvertError::MissingInput { input, path: path.clone() });
        }
    }
    if let Some(dir) = &inputs.mtcnn_data_dir
        && !dir.is_dir()
    {
        return Err(ConvertError::MissingInput { input: "mtcnn_data_dir", path: dir.clone() });
    }
    let python = match &inputs.python {
        Some(p) => p.clone(),
        None => default_python()?,
    };
    let mut cmd = Command::new(&python);
    match &inputs.script {
        Some(script) => cmd.arg(script),
        None => cmd.arg("-c").arg(SCRIPT),
    };
    for (_, path, flag) in files {
        cmd.arg(flag).arg(path);
    }
    if let Some(dir) = &inputs.mtcnn_data_dir {
        cmd.arg("--mtcnn-data-dir").arg(dir);
    }
    if inputs.unsafe_pickle {
        cmd.arg("--unsafe-pickle");
    }
    cmd.args(["--preset", inputs.preset.name, "--dtype", inputs.dtype.as_str()])
        .arg("--out")
        .arg(out);
    let output = cmd.output().map_err(|source| ConvertError::Spawn { python, source })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(ConvertError::Script { status: output.status.to_string(), stdout, stderr });
    }
    Ok(stdout + &stderr)
}

/// Checks every component file of the weights directory `dir` against the
/// models `preset` builds: names every missing, unexpected and wrongly
/// shaped key, loads each file through the real loading path, and checks
/// `config.json`. Only an unreadable directory is an error; problems are in
/// the report.
pub fn validate(dir: &Path, preset: &Preset) -> Result<ValidationReport, ConvertError> {
    if !dir.is_dir() {
        return Err(ConvertError::Io {
            path: dir.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        });
    }
    let mut report = ValidationReport {
        dir: dir.into(),
        preset: preset.name.into(),
        ..ValidationReport::default()
    };
    match crate::weights::read_manifest(dir) {
        Ok(m) if m.preset != preset.name => {
            report.manifest_error =
                Some(format!("preset {:?}, validated against {:?}", m.preset, preset.name));
            report.manifest = Some(m);
        }
        Ok(m) => report.manifest = Some(m),
        Err(e) => report.manifest_error = Some(e.to_string()),
    }
    for (component, file) in COMPONENTS {
        report.components.push(validate_component(component, &dir.join(file), preset));
    }
    let detector = dir.join(FACE_DETECTOR_FILE);
    if detector.is_file() {
        report.components.push(validate_component("face_detector", &detector, preset));
    }
    Ok(report)
}

/// One component in its own VarStore on the CPU, built exactly as
/// [`crate::weights::Components::build`] (and `Mtcnn::load`) build it; the
/// module itself is dropped, its variables stay in the store.
pub fn build_component(component: &str, preset: &Preset) -> Option<VarStore> {
    let vs = VarStore::new(Device::Cpu);
    match component {
        "vae" => drop(AutoencoderKL::new(vs.root(), &preset.vae)),
        "reference_unet" => drop(UNet2DConditionModel::new(vs.root(), &preset.reference_unet)),
        "denoising_unet" => drop(UNet3DConditionModel::new(vs.root(), &preset.denoising_unet)),
        "face_locator" => drop(FaceLocator::new(vs.root(), &preset.face_locator)),
        "audio_encoder" => drop(WhisperEncoder::new(vs.root() / "encoder", &preset.audio_encoder)),
        "face_detector" => drop(Mtcnn::new(vs.root())),
        _ => return None,
    }
    Some(vs)
}

fn validate_component(component: &'static str, path: &Path, preset: &Preset) -> ComponentReport {
    let mut r = ComponentReport { component, file: path.into(), ..ComponentReport::default() };
    if !path.is_file() {
        r.file_missing = true;
        return r;
    }
    let mut vs = build_component(component, preset).expect("a known component");
    let header = match read_header(path) {
        Ok(h) => h,
        Err(e) => {
            r.load_error = Some(format!("unreadable safetensors header: {e}"));
            return r;
        }
    };
    r.tensors = header.len();
    let mut file: HashMap<String, Vec<i64>> = HashMap::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    for (key, (dtype, shape)) in header {
        *r.dtypes.entry(dtype).or_default() += 1;
        let name = match component {
            "vae" => crate::vae::legacy_key_rename(&key).inspect(|_| r.renamed += 1),
            _ => None,
        };
        let target = name.unwrap_or_else(|| key.clone());
        if let Some(other) = origin.get(&target) {
            // Both spellings of one VAE key: the loader would keep either.
            r.unexpected.push(format!("{key} (stored twice: also as {other})"));
        } else {
            origin.insert(target.clone(), key);
            file.insert(target, shape);
        }
    }
    let variables: BTreeMap<String, Vec<i64>> =
        vs.variables().into_iter().map(|(n, t)| (n, t.size())).collect();
    r.variables = variables.len();
    for (name, want) in &variables {
        match file.get(name) {
            None => r.missing.push(name.clone()),
            Some(got) if !same_shape(want, got) => r.shape_mismatches.push(ShapeMismatch {
                key: name.clone(),
                variable: want.clone(),
                file: got.clone(),
            }),
            Some(_) => {}
        }
    }
    r.unexpected.extend(file.into_keys().filter(|k| !variables.contains_key(k)));
    r.unexpected.sort();
    if !r.missing.is_empty() || !r.shape_mismatches.is_empty() {
        return r;
    }
    let loaded = match component {
        "vae" => crate::vae::load(&mut vs, path).map(|l| l.loaded).map_err(|e| e.to_string()),
        "face_detector" => vs.load(path).map(|()| variables.len()).map_err(|e| e.to_string()),
        _ => crate::nn::load_safetensors(&mut vs, path, None)
            .map(|l| l.loaded)
            .map_err(|e| e.to_string()),
    };
    match loaded {
        Ok(n) => r.loaded = n,
        Err(e) => {
            r.load_error = Some(e);
            return r;
        }
    }
    let _guard = tch::no_grad_guard();
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        let bad = t.is_floating_point()
            && !bool::try_from(t.to_kind(Kind::Float).isfinite().all()).unwrap_or(false);
        if bad {
            r.non_finite.push(name);
        }
    }
    r
}

/// Equal, or equal once trailing 1s are dropped (the loaders accept a 1x1
/// convolution stored as a linear weight and the reverse).
fn same_shape(a: &[i64], b: &[i64]) -> bool {
    let trim = |d: &[i64]| d.iter().rposition(|&x| x != 1).map_or(0, |p| p + 1);
    a == b || a[..trim(a)] == b[..trim(b)]
}

/// Names, dtypes and shapes of a safetensors file from its JSON header,
/// without reading the data: 8 bytes little-endian header length, then the
/// header `{name: {"dtype", "shape", "data_offsets"}, "__metadata__": ..}`.
fn read_header(path: &Path) -> Result<BTreeMap<String, (String, Vec<i64>)>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > size.saturating_sub(8) || len > 1 << 30 {
        return Err(format!("header length {len} does not fit a {size}-byte file"));
    }
    let mut text = vec![0u8; len as usize];
    f.read_exact(&mut text).map_err(|e| e.to_string())?;
    #[derive(serde::Deserialize)]
    struct Entry {
        dtype: String,
        shape: Vec<i64>,
    }
    let mut raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    raw.remove("__metadata__");
    raw.into_iter()
        .map(|(k, v)| {
            let e: Entry = serde_json::from_value(v).map_err(|e| format!("{k}: {e}"))?;
            Ok((k, (e.dtype, e.shape)))
        })
        .collect()
}
