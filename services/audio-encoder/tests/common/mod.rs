//! Test support: the stage on 127.0.0.1:0 with the tiny preset on CPU, a
//! client, speech files made with espeak-ng and ffmpeg.

#![allow(dead_code, unused_imports)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use osa_audio_encoder::{Settings, Stage, worker::Stats};
use osa_proto::{
    tensor::HostTensor,
    v1::{
        ClipFeatures, EncodeFileRequest, EncodeStreamRequest, FeatureOptions,
        audio_encoder_service_client::AudioEncoderServiceClient,
        encode_stream_request::Request as In,
    },
};
use osa_runtime::Shutdown;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Settings for tests: CPU, loopback port 0, no metrics endpoint.
pub fn settings() -> Settings {
    let mut s = Settings::default();
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.metrics.enabled = false;
    s.audio_encoder.device = "cpu".into();
    s
}

pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub join: JoinHandle<anyhow::Result<()>>,
    pub stats: Arc<Stats>,
}

impl Server {
    pub async fn start(settings: Settings) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stage = Stage::start(&settings)?;
        let stats = stage.stats();
        let shutdown = Shutdown::new();
        let join = tokio::spawn(stage.serve(settings, listener, shutdown.clone()));
        let server = Self { addr, shutdown, join, stats };
        server.wait_serving().await?;
        Ok(server)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(osa_runtime::client::connect(&format!("http://{}", self.addr), &Default::default())
            .await?)
    }

    pub async fn client(&self) -> anyhow::Result<AudioEncoderServiceClient<Channel>> {
        Ok(AudioEncoderServiceClient::new(self.channel().await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    async fn wait_serving(&self) -> anyhow::Result<()> {
        let ch = self.channel().await?;
        wait_until("SERVING", Duration::from_secs(60), || {
            let ch = ch.clone();
            async move {
                let r = HealthClient::new(ch)
                    .check(HealthCheckRequest { service: String::new() })
                    .await;
                matches!(r.map(|r| r.into_inner().status), Ok(s) if s == ServingStatus::Serving as i32)
            }
        })
        .await
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.join).await.context("stop")??
    }
}

/// Polls `cond` every 10 ms until it holds, failing after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn options(fps: u32) -> Option<FeatureOptions> {
    Some(FeatureOptions { fps, frames_per_clip: 0, normalize_loudness: false })
}

/// Every clip of an EncodeFile call.
pub async fn encode_file(
    client: &mut AudioEncoderServiceClient<Channel>,
    audio: Vec<u8>,
    hint: &str,
    fps: u32,
) -> Result<Vec<ClipFeatures>, tonic::Status> {
    let req = EncodeFileRequest { audio, format_hint: hint.into(), options: options(fps) };
    let mut stream = client.encode_file(req).await?.into_inner();
    let mut clips = Vec::new();
    while let Some(c) = stream.message().await? {
        clips.push(c);
    }
    Ok(clips)
}

pub fn msg(r: In) -> EncodeStreamRequest {
    EncodeStreamRequest { request: Some(r) }
}

pub fn pcm16(samples: &[f32]) -> Vec<u8> {
    samples
        .iter()
        .flat_map(|s| ((s * 32768.0).round().clamp(-32768.0, 32767.0) as i16).to_le_bytes())
        .collect()
}

/// Every clip of an EncodeStream call fed with `requests`.
pub async fn encode_stream(
    client: &mut AudioEncoderServiceClient<Channel>,
    requests: Vec<EncodeStreamRequest>,
) -> Result<Vec<ClipFeatures>, tonic::Status> {
    let mut stream = client.encode_stream(tokio_stream::iter(requests)).await?.into_inner();
    let mut clips = Vec::new();
    while let Some(c) = stream.message().await? {
        clips.push(c);
    }
    Ok(clips)
}

/// The features of all clips, frames concatenated (padding included).
pub fn features(clips: &[ClipFeatures]) -> Vec<f32> {
    clips
        .iter()
        .flat_map(|c| {
            HostTensor::try_from(c.features.clone().unwrap()).unwrap().to_f32_vec().unwrap()
        })
        .collect()
}

/// The features of the real frames only.
pub fn real_features(clips: &[ClipFeatures]) -> Vec<f32> {
    clips
        .iter()
        .flat_map(|c| {
            let t = HostTensor::try_from(c.features.clone().unwrap()).unwrap();
            let per_frame = t.numel() / t.shape()[0];
            let real = c.timing.unwrap().real_frames as usize;
            t.to_f32_vec().unwrap()[..real * per_frame].to_vec()
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ‖a - b‖ / ‖b‖ over the common prefix.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for i in 0..n {
        num += f64::from(a[i] - b[i]).powi(2);
        den += f64::from(b[i]).powi(2);
    }
    (num / den).sqrt()
}

/// A deterministic pseudo-random generator (xorshift) for chunk sizes.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Speech from espeak-ng as 16 kHz mono samples (written once per dir).
pub fn speech_wav(dir: &Path) -> anyhow::Result<PathBuf> {
    let wav = dir.join("speech.wav");
    if !wav.is_file() {
        let out = Command::new("espeak-ng")
            .args(["-v", "en", "-s", "170", "-w"])
            .arg(&wav)
            .arg("The quick brown fox jumps over the lazy dog, twice and quickly.")
            .output()
            .context("espeak-ng (scripts/setup.sh installs it)")?;
        if !out.status.success() {
            bail!("espeak-ng: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(wav)
}

/// `src` converted by ffmpeg with `args` into `dir/name`.
pub fn ffmpeg(src: &Path, dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<PathBuf> {
    let dst = dir.join(name);
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(src)
        .args(args)
        .arg(&dst)
        .output()
        .context("ffmpeg (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!("ffmpeg {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dst)
}

/// The 16 kHz samples of an audio file, decoded like the service does.
pub fn decode(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    osa_audio::decode_file(&bytes, path.extension().and_then(|e| e.to_str()), &Default::default())
        .unwrap()
        .samples
}

pub use osa_proto::v1::encode_stream_request::Request as Msg;
