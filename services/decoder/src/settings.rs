//! Decoder settings: the common sections plus `[decoder]`.

use std::time::Duration;

use osa_runtime::settings::{
    Common, GrpcSettings, MetricsSettings, ServiceSettings, SettingsError, TelemetrySettings,
    Validate, validate_common,
};
use serde::{Deserialize, Serialize};

/// Everything `osa-decoder` reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub metrics: MetricsSettings,
    pub telemetry: TelemetrySettings,
    pub decoder: DecoderSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::on_port(50054),
            metrics: MetricsSettings::on_port(9094),
            telemetry: TelemetrySettings::default(),
            decoder: DecoderSettings::default(),
        }
    }
}

/// The VAE decoder, its batching and the encoder defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderSettings {
    /// Weights directory (`osa weights`; only `vae.safetensors` and
    /// `config.json` are read); empty: the tiny preset with seeded random
    /// weights (`seed`), the same VAE `Pipeline::random` builds.
    pub weights: String,
    /// Seed of the random weights when `weights` is empty.
    pub seed: u64,
    /// TAESD decoder weights (`taesd_decoder.safetensors`, keys
    /// `decoder.N.*` or `N.*`) for `fast_decoder` requests; empty: seeded
    /// random weights (`seed`) when `weights` is empty, else no fast
    /// decoder (such requests are refused).
    pub fast_decoder: String,
    /// Device: `auto` (CUDA fp16 when available), `cpu`, `cuda`.
    pub device: String,
    /// Clips waiting for the model; more are refused with RESOURCE_EXHAUSTED.
    pub queue_capacity: usize,
    /// Clips of different streams decoded together, at most.
    pub max_batch: usize,
    /// How long the model waits for more clips to fill a batch; only while
    /// another stream is open that has nothing in the batch yet (a lone
    /// stream never waits).
    #[serde(with = "humantime_serde")]
    pub max_batch_wait: Duration,
    /// H.264 bitrate when a request leaves it at 0, in kbit/s; 0: scaled
    /// to the picture (2 Mbit/s at 512x512, at least 100 kbit/s).
    pub default_bitrate_kbps: u32,
    /// Highest bitrate a request may ask for, in kbit/s.
    pub max_bitrate_kbps: u32,
    /// Concurrent Decode streams; more are refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Clips one stream may send (bounds the memory an MP4 file holds).
    pub max_clips_per_stream: u64,
    /// Size of the ByteChunks a finished MP4 is streamed back in.
    pub file_chunk_bytes: usize,
}

impl Default for DecoderSettings {
    fn default() -> Self {
        Self {
            weights: String::new(),
            seed: 0,
            fast_decoder: String::new(),
            device: "auto".into(),
            queue_capacity: 64,
            max_batch: 8,
            max_batch_wait: Duration::from_millis(2),
            default_bitrate_kbps: 0,
            max_bitrate_kbps: 50_000,
            max_streams: 256,
            max_clips_per_stream: 100_000,
            file_chunk_bytes: 1 << 20,
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        validate_common(self.common())?;
        let d = &self.decoder;
        let positive = [
            ("decoder.queue_capacity", d.queue_capacity),
            ("decoder.max_batch", d.max_batch),
            ("decoder.max_streams", d.max_streams),
            ("decoder.file_chunk_bytes", d.file_chunk_bytes),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(SettingsError::invalid(key, "must be at least 1"));
            }
        }
        if d.max_clips_per_stream == 0 {
            return Err(SettingsError::invalid(
                "decoder.max_clips_per_stream",
                "must be at least 1",
            ));
        }
        if !matches!(d.device.as_str(), "auto" | "cpu" | "cuda") {
            return Err(SettingsError::invalid(
                "decoder.device",
                format!("{:?} is not one of auto, cpu, cuda", d.device),
            ));
        }
        if d.max_bitrate_kbps < 10 {
            return Err(SettingsError::invalid("decoder.max_bitrate_kbps", "must be at least 10"));
        }
        if d.default_bitrate_kbps > d.max_bitrate_kbps {
            return Err(SettingsError::invalid(
                "decoder.default_bitrate_kbps",
                format!(
                    "{} is over max_bitrate_kbps ({})",
                    d.default_bitrate_kbps, d.max_bitrate_kbps
                ),
            ));
        }
        if d.file_chunk_bytes > self.grpc.max_message_bytes / 2 {
            return Err(SettingsError::invalid(
                "decoder.file_chunk_bytes",
                "must be at most half of grpc.max_message_bytes",
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
    use super::*;

    #[test]
    fn defaults_validate() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.decoder.max_batch = 0;
        assert!(s.validate().unwrap_err().to_string().contains("decoder.max_batch"));
        let mut s = Settings::default();
        s.decoder.device = "tpu".into();
        assert!(s.validate().unwrap_err().to_string().contains("decoder.device"));
        let mut s = Settings::default();
        s.decoder.default_bitrate_kbps = 60_000;
        assert!(s.validate().unwrap_err().to_string().contains("decoder.default_bitrate_kbps"));
    }
}
