//! Support for the end-to-end tests: a private Redis, the four services
//! as `osa serve all` starts them, an API key, sample media and ffprobe.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use osa_cluster::{Cluster, ClusterOptions};
use osa_gateway::keys::ApiKeys;
use osa_runtime::testkit::RedisServer;

/// The workspace root (for the setup script's samples and weights).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// A sample file from `scripts/setup.sh` (`portrait.png`, `speech.wav`).
pub fn sample(name: &str) -> PathBuf {
    let dir = std::env::var_os("OSA_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/samples"));
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

/// The real MTCNN weights `scripts/setup.sh` converts.
pub fn face_detector() -> PathBuf {
    let dir = std::env::var_os("OSA_WEIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/weights"));
    let p = dir.join("face_detector.safetensors");
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

/// The first `seconds` of the sample speech as a 16 kHz mono WAV in `dir`
/// (cut by ffmpeg).
pub fn speech_excerpt(dir: &Path, seconds: f64) -> PathBuf {
    let out = dir.join(format!("speech-{seconds}.wav"));
    let status = Command::new("ffmpeg")
        .args(["-y", "-v", "error", "-t", &seconds.to_string(), "-i"])
        .arg(sample("speech.wav"))
        .args(["-ar", "16000", "-ac", "1"])
        .arg(&out)
        .status()
        .expect("ffmpeg (scripts/setup.sh installs it)");
    assert!(status.success(), "ffmpeg could not cut the sample");
    out
}

/// What ffprobe says about a video file.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub video_frames: u64,
    pub duration: f64,
    pub has_audio: bool,
    pub width: u32,
    pub height: u32,
}

/// Probes `path` with ffprobe (an independent decoder), counting frames by
/// decoding them; panics with ffprobe's message when it rejects the file.
pub fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args(["stream=codec_type,nb_read_frames,width,height:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe");
    assert!(
        out.status.success(),
        "ffprobe rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe json");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    let video = streams.iter().find(|s| s["codec_type"] == "video").expect("a video stream");
    Probe {
        video_frames: video["nb_read_frames"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0),
        duration: v["format"]["duration"].as_str().and_then(|d| d.parse().ok()).unwrap_or(0.0),
        has_audio: streams.iter().any(|s| s["codec_type"] == "audio"),
        width: video["width"].as_u64().unwrap_or(0) as u32,
        height: video["height"].as_u64().unwrap_or(0) as u32,
    }
}

/// Per-frame MD5s of the video stream (ffmpeg's framemd5), to compare two
/// renders frame by frame.
pub fn frame_md5s(path: &Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

/// The audio file at `path` as 16 kHz mono samples.
fn samples(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("audio");
    osa_audio::decode_file(&bytes, None, &osa_audio::DecodeLimits::default())
        .expect("decode")
        .samples
}

/// The audio file at `path` as live PCM16 (16 kHz mono), as a client sends it.
pub fn pcm16(path: &Path) -> Vec<i16> {
    samples(path).iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16).collect()
}

/// Frames the audio-encoder makes of `path` at `fps` (what a render shows).
pub fn expected_frames(path: &Path, fps: u32) -> u64 {
    ((samples(path).len() as u64 * u64::from(fps) * 2 + 16_000) / 32_000).max(1)
}

/// A running test deployment.
pub struct Env {
    pub redis: RedisServer,
    pub cluster: Cluster,
    pub keys: ApiKeys,
    /// An API key of tenant "acme".
    pub key: String,
    pub data: tempfile::TempDir,
}

impl Env {
    /// Redis, the four services (tiny preset, seeded random weights, the
    /// real face detector) and a key; `configure` adjusts the options.
    pub async fn start(configure: impl FnOnce(&mut ClusterOptions)) -> Self {
        Self::start_with(RedisServer::start().expect("redis-server"), configure).await
    }

    pub async fn start_with(
        redis: RedisServer,
        configure: impl FnOnce(&mut ClusterOptions),
    ) -> Self {
        let data = tempfile::tempdir().expect("tempdir");
        let mut o = ClusterOptions::new(
            "127.0.0.1:0".parse().expect("addr"),
            &redis.url(),
            data.path().to_path_buf(),
        );
        o.face_detector = Some(face_detector());
        o.gateway.jobs.reclaim_after = Duration::from_secs(2);
        o.gateway.jobs.poll_interval = Duration::from_millis(200);
        configure(&mut o);
        let cluster = Cluster::start(o).await.expect("cluster");
        cluster.wait_ready(Duration::from_secs(180)).await.expect("cluster ready");
        let keys =
            ApiKeys::connect(&redis.url(), "osa:", Duration::from_secs(2)).await.expect("keys");
        let (_, key) = keys.create("acme").await.expect("key");
        Self { redis, cluster, keys, key, data }
    }

    /// The gateway's URL.
    pub fn url(&self) -> String {
        self.cluster.gateway.url.clone()
    }

    /// A client with the "acme" key.
    pub async fn client(&self) -> osa_client::Client {
        osa_client::Client::connect(&self.url(), Some(&self.key)).await.expect("client")
    }

    /// A client with `key` that never retries, to see every answer as sent.
    pub async fn strict_client(&self, key: Option<&str>) -> osa_client::Client {
        let mut c = osa_client::ClientConfig::new(self.url());
        c.api_key = key.map(str::to_owned);
        c.retry.max_attempts = 1;
        osa_client::Client::with_config(c).await.expect("client")
    }

    /// Files under the gateway's object store whose key starts with `prefix`.
    pub fn stored(&self, prefix: &str) -> Vec<PathBuf> {
        let dir = self.data.path().join("objects").join(prefix);
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() { stack.push(p) } else { out.push(p) }
            }
        }
        out
    }
}
