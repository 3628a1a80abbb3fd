//! `osa-bench`: drives osa the way users do and prints one table.
//!
//! The same inputs (a portrait and an excerpt of speech) go through two
//! modes in one run:
//! - **embedded**: one process, the embedded pipeline clip by clip (the
//!   audio-encoder's streaming recipe, one-step generation, VAE decode,
//!   H.264 into fMP4 segments for live sessions or an MP4 for renders), as
//!   `osa render` runs it;
//! - **cluster**: a private `redis-server` and the four services on loopback,
//!   driven through the public API with the `osa-client` SDK. The services
//!   run as separate processes (the release binaries, [`Launch::Processes`])
//!   so each process's peak memory is its own, or as tasks of this process
//!   ([`Launch::InProcess`], `osa-cluster`: the smoke test).
//!
//! Workloads: N concurrent live sessions for each N of
//! [`BenchOptions::sessions`], a batch of render jobs, and optionally a
//! bounded load test (N sessions for T seconds against the gateway's
//! admission limit). Per-stage times of the cluster come from the services'
//! own Prometheus histograms (scraped before and after each workload);
//! those of the embedded mode are timed around the same calls.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

pub mod cluster;
pub mod embedded;
pub mod load;
pub mod metrics;
pub mod procs;
pub mod report;

pub use report::{Report, Row};

/// How the audio of a live session is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pace {
    /// As fast as the system takes it: the real-time factor then measures
    /// the cost of generation, not the speed of speech.
    Fast,
    /// In real time (100 ms chunks every 100 ms): the real-time factor is
    /// then at least 1.
    Realtime,
}

impl std::str::FromStr for Pace {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(Self::Fast),
            "realtime" => Ok(Self::Realtime),
            _ => Err(format!("{s:?} is not one of fast, realtime")),
        }
    }
}

/// How the cluster's services are started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// The service binaries in this directory (`osa-gateway`,
    /// `osa-audio-encoder`, `osa-generator`, `osa-decoder`), one process
    /// each, with a private `redis-server`.
    Processes { bin_dir: PathBuf },
    /// `osa-cluster`: the four services as tasks of this process (memory is
    /// then the one process's), with a private `redis-server`.
    InProcess,
}

/// A bounded load test against the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Concurrent sessions kept open.
    pub sessions: usize,
    /// How long new sessions are started.
    pub duration: Duration,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Run the embedded mode.
    pub embedded: bool,
    /// Run the cluster mode (how its services start).
    pub cluster: Option<Launch>,
    /// Concurrent live sessions, one workload each (e.g. 1, 4, 16).
    pub sessions: Vec<usize>,
    /// Rounds of each live workload, one after another: TTFS quantiles and
    /// RTF are over the sessions of all rounds (one session's TTFS is one
    /// sample; several rounds make its p50 mean something).
    pub rounds: usize,
    /// Render jobs in the batch workload (0: none).
    pub batch_jobs: usize,
    /// Portrait image.
    pub image: PathBuf,
    /// Speech; its first [`BenchOptions::seconds`] are used.
    pub audio: PathBuf,
    /// Seconds of the excerpt.
    pub seconds: f64,
    /// How live audio is sent.
    pub pace: Pace,
    /// libtorch intra-op threads per model process (0: libtorch's default).
    pub threads: usize,
    /// MTCNN weights (the setup script's); `None`: the whole image is the
    /// crop.
    pub face_detector: Option<PathBuf>,
    /// Frames per second of the video.
    pub fps: u32,
    /// The gateway's live sessions per key (the admission limit); `None`:
    /// the largest of [`BenchOptions::sessions`].
    pub capacity: Option<u32>,
    /// Bounded load tests, one after another (e.g. one level below the
    /// admission limit and one above it).
    pub load: Vec<LoadOptions>,
    /// Before the first load test: this long at its concurrency, not
    /// judged (zero: none). The processes' allocators take the working set
    /// of sustained concurrent sessions over the first minute or two; the
    /// verdicts are about what happens after.
    pub load_ramp: Duration,
    /// Where the services keep data and logs (a temporary directory when
    /// `None`).
    pub work_dir: Option<PathBuf>,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl BenchOptions {
    /// Both modes in-process-free defaults: sessions 1, 4, 16, 4 render
    /// jobs, 3 s of the sample speech, fast pace, one libtorch thread.
    pub fn new(image: PathBuf, audio: PathBuf) -> Self {
        Self {
            embedded: true,
            cluster: Some(Launch::InProcess),
            sessions: vec![1, 4, 16],
            rounds: 1,
            batch_jobs: 4,
            image,
            audio,
            seconds: 3.0,
            pace: Pace::Fast,
            threads: 1,
            face_detector: None,
            fps: 25,
            capacity: None,
            load: Vec::new(),
            load_ramp: Duration::ZERO,
            work_dir: None,
            verbose: false,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.embedded || self.cluster.is_some(), "no mode selected");
        anyhow::ensure!(
            self.sessions.iter().all(|&n| (1..=256).contains(&n)),
            "sessions {:?}: each must be in 1..=256",
            self.sessions
        );
        anyhow::ensure!((1..=100).contains(&self.rounds), "rounds {}: 1 to 100", self.rounds);
        anyhow::ensure!(self.batch_jobs <= 64, "batch of {} jobs: at most 64", self.batch_jobs);
        anyhow::ensure!(
            self.seconds.is_finite() && (0.5..=60.0).contains(&self.seconds),
            "--seconds {}: must be between 0.5 and 60",
            self.seconds
        );
        anyhow::ensure!(matches!(self.fps, 24 | 25 | 30), "fps {} is not 24, 25 or 30", self.fps);
        for (what, p) in [("image", &self.image), ("audio", &self.audio)] {
            anyhow::ensure!(p.is_file(), "{what} {}: no such file", p.display());
        }
        anyhow::ensure!(
            self.load_ramp <= Duration::from_secs(600),
            "load ramp {:?}: at most 10 minutes",
            self.load_ramp
        );
        for l in &self.load {
            anyhow::ensure!(self.cluster.is_some(), "the load test needs the cluster mode");
            anyhow::ensure!((1..=256).contains(&l.sessions), "load sessions must be in 1..=256");
            anyhow::ensure!(
                l.duration <= Duration::from_secs(600),
                "load duration {:?}: at most 10 minutes",
                l.duration
            );
        }
        Ok(())
    }

    /// The gateway's admission limit used.
    pub fn capacity(&self) -> u32 {
        self.capacity.unwrap_or_else(|| self.sessions.iter().copied().max().unwrap_or(1) as u32)
    }
}

/// The inputs shared by both modes.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub image: image::RgbImage,
    /// PNG (or the original) bytes of the image, as uploaded.
    pub image_bytes: Vec<u8>,
    /// 16 kHz mono excerpt.
    pub samples: Vec<f32>,
    /// The excerpt as a 16-bit WAV (what render jobs upload).
    pub wav: Vec<u8>,
    /// Seconds of the excerpt.
    pub seconds: f64,
}

impl Inputs {
    /// Reads the image and the first `seconds` of the audio.
    pub fn load(image: &Path, audio: &Path, seconds: f64) -> anyhow::Result<Self> {
        let image_bytes = std::fs::read(image).with_context(|| image.display().to_string())?;
        let decoded_image = image::load_from_memory(&image_bytes)
            .with_context(|| format!("image {}", image.display()))?
            .to_rgb8();
        let bytes = std::fs::read(audio).with_context(|| audio.display().to_string())?;
        let decoded = osa_audio::decode_file(&bytes, None, &osa_audio::DecodeLimits::default())
            .with_context(|| format!("audio {}", audio.display()))?;
        let rate = decoded.sample_rate() as usize;
        let want = ((seconds * rate as f64) as usize).min(decoded.samples.len());
        anyhow::ensure!(want >= rate / 2, "audio {}: shorter than 0.5 s", audio.display());
        let samples = decoded.samples[..want].to_vec();
        let seconds = samples.len() as f64 / rate as f64;
        let wav = wav_pcm16(&samples, rate as u32);
        Ok(Self { image: decoded_image, image_bytes, samples, wav, seconds })
    }

    /// The excerpt as PCM16.
    pub fn pcm16(&self) -> Vec<i16> {
        self.samples.iter().map(|s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16).collect()
    }
}

/// A mono 16-bit PCM WAV file.
fn wav_pcm16(samples: &[f32], rate: u32) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + data as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        w.extend_from_slice(&((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes());
    }
    w
}

/// Runs every selected mode and workload; returns the report (the caller
/// prints or writes it).
pub fn run(options: &BenchOptions, command: String) -> anyhow::Result<Report> {
    options.validate()?;
    let inputs = Inputs::load(&options.image, &options.audio, options.seconds)?;
    let mut report = Report::new(options, command, inputs.seconds);
    if options.threads > 0 {
        tch::set_num_threads(options.threads as i32);
    }
    if options.embedded {
        embedded::run(options, &inputs, &mut report)?;
    }
    if let Some(launch) = &options.cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(cluster::run(options, launch, &inputs, &mut report))?;
    }
    report.finish();
    Ok(report)
}

/// Prints a progress line when `verbose`.
pub(crate) fn say(options: &BenchOptions, line: impl AsRef<str>) {
    if options.verbose {
        eprintln!("osa-bench: {}", line.as_ref());
    }
}

/// The `p`-quantile (0..=1) of `v` by nearest rank; `None` when empty.
pub fn quantile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(10.0));
        assert_eq!(quantile(&v, 0.95), Some(19.0));
        assert_eq!(quantile(&[3.0], 0.95), Some(3.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn wav_header_says_what_follows() {
        let w = wav_pcm16(&[0.0, 1.0, -1.0], 16_000);
        assert_eq!(w.len(), 44 + 6);
        let d = osa_audio::decode_file(&w, Some("wav"), &osa_audio::DecodeLimits::default())
            .expect("a valid wav");
        assert_eq!(d.samples.len(), 3);
    }
}
