//! Audio-encoder settings: the common sections plus `[audio_encoder]`.

use std::{path::PathBuf, time::Duration};

use osa_runtime::settings::{
    Common, GrpcSettings, MetricsSettings, ServiceSettings, SettingsError, TelemetrySettings,
    Validate, validate_common,
};
use serde::{Deserialize, Serialize};

use crate::recipe::{POSITION_SECONDS, WindowPlan};

/// Everything `osa-audio-encoder` reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub audio_encoder: AudioEncoderSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::on_port(50052),
            metrics: MetricsSettings::on_port(9092),
            telemetry: TelemetrySettings::default(),
            audio_encoder: AudioEncoderSettings::default(),
        }
    }
}

/// Wire element type of the features sent out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WireDType {
    /// IEEE binary32 (exact).
    #[default]
    F32,
    /// IEEE binary16 (half the bytes; ~1e-3 relative rounding).
    F16,
}

/// The model, its thread and the limits of the stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AudioEncoderSettings {
    /// Weights directory (`osa weights init` / `osa weights convert`); only
    /// its `audio_encoder.safetensors` and `config.json` are read. Empty:
    /// seeded random weights of `preset`.
    pub weights: PathBuf,
    /// Size of the random weights when `weights` is empty: `tiny` (the
    /// width the tiny denoiser reads, 16) or `echomimic` (whisper-tiny, 384).
    pub preset: String,
    /// Seed of the random weights (the audio encoder of `osa weights init
    /// --seed S` uses `S + 4`; this is `S`).
    pub seed: u64,
    /// `auto` (CUDA in fp16 when visible, else CPU fp32), `cpu`, `cuda` or
    /// `cuda:N`.
    pub device: String,
    /// Element type of the features on the wire: `f32` or `f16`.
    pub dtype: WireDType,
    /// Longest audio accepted, per file and per live stream.
    #[serde(with = "humantime_serde")]
    pub max_audio_duration: Duration,
    /// Concurrent EncodeFile + EncodeStream calls; more get RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Encode requests waiting for the model thread; more get
    /// RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Most encoder windows in one forward pass.
    pub max_batch: usize,
    /// How long the model thread waits for more windows to fill a batch;
    /// only while another stream or file call is open that has nothing in
    /// the batch yet (a lone stream never waits).
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    /// Encoder window core: the span of positions each window produces
    /// (a multiple of 20 ms). See [`crate::recipe`].
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Audio before the core that each window's attention also sees.
    #[serde(with = "humantime_serde")]
    pub left_context: Duration,
    /// Audio after the core that each window waits for (look-ahead).
    #[serde(with = "humantime_serde")]
    pub right_context: Duration,
}

impl Default for AudioEncoderSettings {
    fn default() -> Self {
        let plan = WindowPlan::default();
        let d = |p: usize| Duration::from_millis(p as u64 * 20);
        Self {
            weights: PathBuf::new(),
            preset: "tiny".into(),
            seed: 0,
            device: "auto".into(),
            dtype: WireDType::F32,
            max_audio_duration: Duration::from_secs(600),
            max_streams: 64,
            queue_capacity: 64,
            max_batch: 16,
            max_batch_wait: Duration::from_millis(2),
            window: d(plan.core),
            left_context: d(plan.left),
            right_context: d(plan.right),
        }
    }
}

impl AudioEncoderSettings {
    /// The encoder window plan in positions (validated by [`Validate`]).
    pub fn plan(&self) -> WindowPlan {
        let p = |d: Duration| (d.as_secs_f64() / POSITION_SECONDS).round() as usize;
        WindowPlan {
            left: p(self.left_context),
            core: p(self.window),
            right: p(self.right_context),
        }
    }

    /// The weights directory, `None` for random weights.
    pub fn weights_dir(&self) -> Option<&std::path::Path> {
        (!self.weights.as_os_str().is_empty()).then_some(self.weights.as_path())
    }
}

/// `d` as a whole number of 20 ms positions, or an error naming `key`.
fn positions(key: &str, d: Duration) -> Result<usize, Box<SettingsError>> {
    let us = d.as_micros();
    if !us.is_multiple_of(20_000) {
        return Err(Box::new(SettingsError::invalid(
            key,
            format!("{d:?} is not a multiple of 20ms"),
        )));
    }
    Ok((us / 20_000) as usize)
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        validate_common(self.common())?;
        let a = &self.audio_encoder;
        if a.weights_dir().is_none() && osa_model::preset::Preset::by_name(&a.preset).is_none() {
            return Err(SettingsError::invalid(
                "audio_encoder.preset",
                format!("{:?} is not one of tiny, echomimic", a.preset),
            ));
        }
        if let Some(dir) = a.weights_dir()
            && !dir.join("audio_encoder.safetensors").is_file()
        {
            return Err(SettingsError::invalid(
                "audio_encoder.weights",
                format!("{} holds no audio_encoder.safetensors", dir.display()),
            ));
        }
        crate::model::parse_device(&a.device)
            .map_err(|e| SettingsError::invalid("audio_encoder.device", e))?;
        if a.max_audio_duration.is_zero() || a.max_audio_duration > Duration::from_secs(6 * 3600) {
            return Err(SettingsError::invalid(
                "audio_encoder.max_audio_duration",
                "must be positive and at most 6h",
            ));
        }
        for (key, v) in [
            ("audio_encoder.max_streams", a.max_streams),
            ("audio_encoder.queue_capacity", a.queue_capacity),
            ("audio_encoder.max_batch", a.max_batch),
        ] {
            if !(1..=4096).contains(&v) {
                return Err(SettingsError::invalid(key, format!("{v} is outside 1..=4096")));
            }
        }
        if a.max_batch_wait > Duration::from_secs(1) {
            return Err(SettingsError::invalid(
                "audio_encoder.max_batch_wait",
                "must be at most 1s",
            ));
        }
        let core = positions("audio_encoder.window", a.window).map_err(|e| *e)?;
        let left = positions("audio_encoder.left_context", a.left_context).map_err(|e| *e)?;
        let right = positions("audio_encoder.right_context", a.right_context).map_err(|e| *e)?;
        if core == 0 {
            return Err(SettingsError::invalid("audio_encoder.window", "must be at least 20ms"));
        }
        if left + core + right > 1500 {
            return Err(SettingsError::invalid(
                "audio_encoder.window",
                "window plus both contexts must be at most 30s (whisper's context)",
            ));
        }
        Ok(())
    }
}

impl ServiceSettings for Settings {
    fn common(&self) -> Common<'_> {
        Common { grpc: &self.grpc, metrics: &self.metrics, telemetry: &self.telemetry }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        let env: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        osa_runtime::settings::load_with_env(None, Some(env)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_validate_and_env_overrides() {
        let s = load(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.audio_encoder.plan(), WindowPlan::default());
        let s = load(&[
            ("OSA__AUDIO_ENCODER__DTYPE", "f16"),
            ("OSA__AUDIO_ENCODER__WINDOW", "1s"),
            ("OSA__AUDIO_ENCODER__MAX_BATCH", "4"),
        ])
        .unwrap();
        assert_eq!(s.audio_encoder.dtype, WireDType::F16);
        assert_eq!(s.audio_encoder.plan().core, 50);
        assert_eq!(s.audio_encoder.max_batch, 4);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value, needle) in [
            ("OSA__AUDIO_ENCODER__MAX_BATCH", "0", "audio_encoder.max_batch"),
            ("OSA__AUDIO_ENCODER__PRESET", "huge", "audio_encoder.preset"),
            ("OSA__AUDIO_ENCODER__DEVICE", "tpu", "audio_encoder.device"),
            ("OSA__AUDIO_ENCODER__WINDOW", "30ms", "audio_encoder.window"),
            ("OSA__AUDIO_ENCODER__RIGHT_CONTEXT", "31s", "audio_encoder.window"),
            ("OSA__AUDIO_ENCODER__MAX_AUDIO_DURATION", "0s", "audio_encoder.max_audio_duration"),
            ("OSA__AUDIO_ENCODER__WEIGHTS", "/nonexistent", "audio_encoder.weights"),
            ("OSA__AUDIO_ENCODER__DTYPE", "f64", "audio_encoder.dtype"),
            ("OSA__AUDIO_ENCODER__MAX_STREEMS", "3", "max_streems"),
        ] {
            let e = load(&[(key, value)]).unwrap_err();
            assert!(e.contains(needle), "{key}={value}: {e}");
        }
    }
}
