//! Gateway settings: the common sections plus `[gateway]` and `[model]`.

use std::time::Duration;

use osa_runtime::settings::{
    Common, GrpcSettings, MetricsSettings, ServiceSettings, SettingsError, TelemetrySettings,
    Validate, validate_common,
};
use serde::{Deserialize, Serialize};

/// Everything `osa-gateway` reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub gateway: GatewaySettings,
    pub model: ModelSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::on_port(50051),
            metrics: MetricsSettings::on_port(9091),
            telemetry: TelemetrySettings::default(),
            gateway: GatewaySettings::default(),
            model: ModelSettings::default(),
        }
    }
}

/// Limits applied to every request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySettings {
    /// Largest reference image accepted, in bytes.
    pub max_image_bytes: u64,
    /// Largest reference image side accepted, in pixels.
    pub max_image_side: u32,
    /// Longest audio accepted.
    #[serde(with = "humantime_serde")]
    pub max_audio_duration: Duration,
    /// Concurrent live sessions per API key.
    pub max_live_sessions_per_key: u32,
    /// Concurrent running jobs per API key.
    pub max_running_jobs_per_key: u32,
    /// Requests per second per API key.
    pub requests_per_second_per_key: f64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            max_image_bytes: 10 * 1024 * 1024,
            max_image_side: 4096,
            max_audio_duration: Duration::from_secs(600),
            max_live_sessions_per_key: 4,
            max_running_jobs_per_key: 8,
            requests_per_second_per_key: 20.0,
        }
    }
}

/// What the stages run, as reported by InfoService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// Size preset: `tiny` or `echomimic`.
    pub preset: String,
    /// True when the stages run seeded random weights.
    pub random_weights: bool,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self { preset: "tiny".into(), random_weights: true }
    }
}

impl ModelSettings {
    /// Output frame size and clip length of the preset.
    pub fn geometry(&self) -> (u32, u32, u32) {
        match self.preset.as_str() {
            "echomimic" => (512, 512, 12),
            _ => (64, 64, 12),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        validate_common(self.common())?;
        let g = &self.gateway;
        if g.max_image_bytes == 0 || g.max_image_bytes > self.grpc.max_message_bytes as u64 {
            return Err(SettingsError::invalid(
                "gateway.max_image_bytes",
                format!(
                    "{} must be between 1 and grpc.max_message_bytes ({})",
                    g.max_image_bytes, self.grpc.max_message_bytes
                ),
            ));
        }
        if g.max_audio_duration.is_zero() {
            return Err(SettingsError::invalid("gateway.max_audio_duration", "must be positive"));
        }
        if !g.requests_per_second_per_key.is_finite() || g.requests_per_second_per_key <= 0.0 {
            return Err(SettingsError::invalid(
                "gateway.requests_per_second_per_key",
                "must be positive",
            ));
        }
        if !matches!(self.model.preset.as_str(), "tiny" | "echomimic") {
            return Err(SettingsError::invalid(
                "model.preset",
                format!("{:?} is not one of tiny, echomimic", self.model.preset),
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
