//! Gateway settings: the common sections plus `[gateway]` (limits),
//! `[model]`, `[redis]`, `[stages]`, `[storage]`, `[webhooks]`, `[jobs]` and
//! `[live]`.

use std::{path::PathBuf, time::Duration};

use osa_runtime::{balance::StageEndpoints, client::ClientTlsSettings};

use crate::{blobs::StorageSettings, webhook::WebhookSettings};

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
    pub redis: RedisSettings,
    pub stages: StagesSettings,
    pub storage: StorageSettings,
    pub webhooks: WebhookSettings,
    pub jobs: JobSettings,
    pub live: LiveSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::on_port(50051),
            metrics: MetricsSettings::on_port(9091),
            telemetry: TelemetrySettings::default(),
            gateway: GatewaySettings::default(),
            model: ModelSettings::default(),
            redis: RedisSettings::default(),
            stages: StagesSettings::default(),
            storage: StorageSettings::default(),
            webhooks: WebhookSettings::default(),
            jobs: JobSettings::default(),
            live: LiveSettings::default(),
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

/// Redis: API keys, avatars, jobs and live-session slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://host:port/db` (or `rediss://` for TLS).
    pub url: String,
    /// Prefix of every key the gateway writes (the generator's context keys
    /// are its own).
    pub prefix: String,
    /// Bound on each Redis request and on connecting.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "osa:".into(),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Where the stages' replicas are. Each list holds static URLs or DNS
/// names (a Kubernetes headless Service), re-resolved periodically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StagesSettings {
    pub audio_encoder: StageEndpoints,
    pub generator: StageEndpoints,
    pub decoder: StageEndpoints,
    /// Bound on connecting to a replica.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// TLS for `https://` stage endpoints (CA, server name, client
    /// certificate for mutual TLS); absent: the web roots.
    pub tls: Option<ClientTlsSettings>,
}

impl Default for StagesSettings {
    fn default() -> Self {
        let at = |port: u16| StageEndpoints {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            ..StageEndpoints::default()
        };
        Self {
            audio_encoder: at(50061),
            generator: at(50062),
            decoder: at(50063),
            connect_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// The render-job runner of this gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// Jobs this gateway runs at once.
    pub workers: usize,
    /// A job whose gateway stopped heart-beating for this long is taken
    /// over by another gateway (heartbeats come every quarter of it).
    #[serde(with = "humantime_serde")]
    pub reclaim_after: Duration,
    /// How long one wait on the queue blocks.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Attempts at a clip (jobs) or a generator call (live) before failing.
    pub max_attempts: u32,
    /// Where finished MP4s are assembled before upload.
    pub work_dir: PathBuf,
    /// How long finished job records are kept.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Keep each finished job's clip latents (`jobs/<id>/clips/` in the
    /// object store) instead of deleting them with its other working files:
    /// for debugging and for comparing runs.
    pub keep_clips: bool,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            workers: 4,
            reclaim_after: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            max_attempts: 5,
            work_dir: std::env::temp_dir().join("osa-gateway"),
            retention: Duration::from_secs(7 * 24 * 3600),
            keep_clips: false,
        }
    }
}

/// Live sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveSettings {
    /// A session with no message for this long ends (DEADLINE_EXCEEDED).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A session's slot (for the per-key limit) expires this long after its
    /// gateway stops renewing it, e.g. because it died.
    #[serde(with = "humantime_serde")]
    pub slot_ttl: Duration,
    /// Decode with the fast (TAESD) decoder: lower latency, lower fidelity.
    pub fast_decoder: bool,
}

impl Default for LiveSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            slot_ttl: Duration::from_secs(30),
            fast_decoder: false,
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
        for (key, stage) in [
            ("stages.audio_encoder", &self.stages.audio_encoder),
            ("stages.generator", &self.stages.generator),
            ("stages.decoder", &self.stages.decoder),
        ] {
            stage.validate(key)?;
        }
        if let Some(tls) = &self.stages.tls {
            tls.validate("stages.tls")?;
        }
        if !self.redis.url.starts_with("redis://") && !self.redis.url.starts_with("rediss://") {
            return Err(SettingsError::invalid(
                "redis.url",
                "must start with redis:// or rediss://",
            ));
        }
        self.storage.validate().map_err(|e| SettingsError::invalid("storage", e))?;
        self.webhooks.validate().map_err(|e| SettingsError::invalid("webhooks", e))?;
        let j = &self.jobs;
        if j.workers == 0 || j.workers > 1024 {
            return Err(SettingsError::invalid("jobs.workers", "must be in 1..=1024"));
        }
        if j.reclaim_after < Duration::from_secs(1) {
            return Err(SettingsError::invalid("jobs.reclaim_after", "must be at least 1s"));
        }
        if j.max_attempts == 0 {
            return Err(SettingsError::invalid("jobs.max_attempts", "must be at least 1"));
        }
        if self.live.idle_timeout.is_zero() || self.live.slot_ttl < Duration::from_secs(1) {
            return Err(SettingsError::invalid(
                "live",
                "idle_timeout must be positive and slot_ttl at least 1s",
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
