//! Generator settings: the common sections plus `[generator]`.

use std::time::Duration;

use osa_runtime::settings::{
    Common, GrpcSettings, MetricsSettings, ServiceSettings, SettingsError, TelemetrySettings,
    Validate, validate_common,
};
use serde::{Deserialize, Serialize};

/// Everything `osa-generator` reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub generator: GeneratorSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::on_port(50053),
            metrics: MetricsSettings::on_port(9093),
            telemetry: TelemetrySettings::default(),
            generator: GeneratorSettings::default(),
        }
    }
}

/// The model, the context store and the batching.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeneratorSettings {
    /// Weights directory (`osa weights`); empty: the tiny preset with seeded
    /// random weights (`seed`).
    pub weights: String,
    /// Seed of the random weights when `weights` is empty.
    pub seed: u64,
    /// MTCNN weights for the face crop when the weights directory has none;
    /// empty: no detector (the whole image is used).
    pub face_detector: String,
    /// Device: `auto` (CUDA fp16 when available), `cpu`, `cuda`.
    pub device: String,
    /// `redis://host:port/db` holding rolling contexts and prepared
    /// avatars; empty: an in-memory store (one replica, the embedded mode).
    pub redis_url: String,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// A stream idle this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long one Redis request may take.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Prepared avatars kept on the model's device (LRU).
    pub avatar_cache: usize,
    /// Clips waiting for the model; more are refused with RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Clips of different streams run through the UNet together, at most.
    pub max_batch: usize,
    /// How long the model waits for more clips to fill a batch; only while
    /// another stream is open that has nothing in the batch yet (a lone
    /// stream never waits).
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    /// Largest reference image accepted, in bytes.
    pub max_image_bytes: usize,
    /// Largest reference image side accepted, in pixels.
    pub max_image_side: u32,
    /// Concurrent streams held by the in-memory store.
    pub max_streams: usize,
}

impl Default for GeneratorSettings {
    fn default() -> Self {
        Self {
            weights: String::new(),
            seed: 0,
            face_detector: String::new(),
            device: "auto".into(),
            redis_url: String::new(),
            key_prefix: "osa:".into(),
            idle_timeout: Duration::from_secs(300),
            redis_timeout: Duration::from_secs(2),
            avatar_cache: 64,
            queue_capacity: 64,
            max_batch: 8,
            max_batch_wait: Duration::from_millis(2),
            max_image_bytes: 10 * 1024 * 1024,
            max_image_side: 4096,
            max_streams: 10_000,
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        validate_common(self.common())?;
        let g = &self.generator;
        let positive = [
            ("generator.avatar_cache", g.avatar_cache),
            ("generator.queue_capacity", g.queue_capacity),
            ("generator.max_batch", g.max_batch),
            ("generator.max_image_bytes", g.max_image_bytes),
            ("generator.max_streams", g.max_streams),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(SettingsError::invalid(key, "must be at least 1"));
            }
        }
        if !matches!(g.device.as_str(), "auto" | "cpu" | "cuda") {
            return Err(SettingsError::invalid(
                "generator.device",
                format!("{:?} is not one of auto, cpu, cuda", g.device),
            ));
        }
        if !g.redis_url.is_empty() && !g.redis_url.starts_with("redis://") {
            return Err(SettingsError::invalid(
                "generator.redis_url",
                format!("{:?} must start with redis://", g.redis_url),
            ));
        }
        if g.idle_timeout.is_zero() {
            return Err(SettingsError::invalid("generator.idle_timeout", "must be positive"));
        }
        Ok(())
    }
}

impl ServiceSettings for Settings {
    fn common(&self) -> Common<'_> {
        Common { grpc: &self.grpc, metrics: &self.metrics, telemetry: &self.telemetry }
    }
}
