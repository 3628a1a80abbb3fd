//! The embedded mode: every stage in this process, on this thread.
//!
//! Live sessions run as one process would serve them: one model thread
//! takes the sessions round-robin, one unit of work each turn (the
//! audio-encoder windows whose audio has arrived, then at most one clip:
//! one-step generation, VAE decode, H.264 into an fMP4 segment). The
//! audio goes through the audio-encoder's own streaming recipe
//! ([`Segment`]) with its window model, the rolling state stays in memory,
//! latents go to the decoder without leaving the device. Render jobs run
//! one after another exactly as `osa render` runs them
//! ([`osa_cli::embedded::Embedded`], MP4 with the speech as Opus).

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use osa_audio_encoder::{
    file::FILE_BATCH,
    model::{ModelConfig, WindowModel},
    recipe::{Clip, Layout, Segment, WindowPlan},
};
use osa_cli::embedded::{Embedded, EmbeddedOptions, RANDOM_WEIGHTS_SEED};
use osa_media::{
    frame::{Fps, RgbFrame, VideoSize},
    output::{LiveChunk, LiveStream, Mp4Render, OutputConfig},
};
use osa_model::{
    device::Placement,
    pipeline::{Avatar, ClipJob},
    rolling::RollingState,
};
use tch::Tensor;

use crate::{BenchOptions, Inputs, Pace, Report, Row, quantile, report::ProcMem, say};

/// Audio chunk of a live session: 100 ms at 16 kHz.
pub const CHUNK: usize = 1600;

/// Seconds spent per stage.
#[derive(Debug, Default, Clone, Copy)]
struct Stages {
    audio: f64,
    unet: f64,
    vae: f64,
    video: f64,
}

/// The models, loaded once.
struct Models {
    embedded: Embedded,
    audio: WindowModel,
    avatar: Avatar,
    fps: u32,
}

impl Models {
    fn load(options: &BenchOptions, inputs: &Inputs) -> anyhow::Result<Self> {
        let embedded = Embedded::load(EmbeddedOptions {
            face_detector: options.face_detector.clone(),
            ..EmbeddedOptions::new(options.fps)
        })?;
        let audio = WindowModel::load(&ModelConfig {
            weights: None,
            preset: "tiny".into(),
            seed: RANDOM_WEIGHTS_SEED,
            placement: Placement::auto(),
            plan: WindowPlan::default(),
        })
        .context("the audio encoder's window model")?;
        let avatar = embedded.prepare_avatar(&inputs.image)?;
        Ok(Self { embedded, audio, avatar, fps: options.fps })
    }

    fn frames_per_clip(&self) -> usize {
        self.embedded.latent_shape()[0]
    }

    fn output_config(&self, with_audio: bool) -> anyhow::Result<OutputConfig> {
        let p = self.embedded.pipeline().preset();
        let mut c = OutputConfig::new(
            VideoSize::new(p.width, p.height)?,
            Fps::try_from(self.fps).map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        if !with_audio {
            c.audio = None;
        }
        Ok(c)
    }
}

/// One live session's state.
struct Session {
    seg: Segment,
    pushed: usize,
    finished: bool,
    state: RollingState,
    pending: VecDeque<Clip>,
    live: Option<LiveStream>,
    clips: u64,
    frames: u64,
    first_segment: Option<Duration>,
    ended: Option<Duration>,
}

impl Session {
    /// Samples that have arrived `at` after the start.
    fn arrived(pace: Pace, total: usize, at: Duration) -> usize {
        match pace {
            Pace::Fast => total,
            Pace::Realtime => {
                let chunks = (at.as_secs_f64() / 0.1).floor() as usize + 1;
                (chunks * CHUNK).min(total)
            }
        }
    }

    /// One unit of work; returns whether anything was done.
    fn step(
        &mut self,
        m: &Models,
        samples: &[f32],
        pace: Pace,
        start: Instant,
        t: &mut Stages,
    ) -> anyhow::Result<bool> {
        if self.ended.is_some() {
            return Ok(false);
        }
        let now = start.elapsed();
        let arrived = Self::arrived(pace, samples.len(), now);
        if arrived > self.pushed {
            self.seg.push(&samples[self.pushed..arrived]);
            self.pushed = arrived;
        }
        if self.pushed == samples.len() && !self.finished {
            self.seg.finish()?;
            self.finished = true;
        }
        let mut worked = false;
        let jobs = self.seg.ready_windows(FILE_BATCH);
        if !jobs.is_empty() {
            let at = Instant::now();
            for states in m.audio.encode(&jobs.iter().collect::<Vec<_>>())? {
                self.seg.accept(&states);
            }
            t.audio += at.elapsed().as_secs_f64();
            worked = true;
        }
        self.pending.extend(self.seg.ready_clips());
        let Some(clip) = self.pending.pop_front() else { return Ok(worked) };
        self.clip(m, clip, start, t)?;
        Ok(true)
    }

    fn clip(
        &mut self,
        m: &Models,
        clip: Clip,
        start: Instant,
        t: &mut Stages,
    ) -> anyhow::Result<()> {
        let frames = m.frames_per_clip();
        let width = m.audio.width();
        let per_frame = clip.features.len() / frames;
        let at = Instant::now();
        let audio = Tensor::from_slice(&clip.features).view([
            frames as i64,
            (per_frame / width) as i64,
            width as i64,
        ]);
        let pipe = m.embedded.pipeline();
        let mut out = pipe
            .generate_clips(&[ClipJob { avatar: &m.avatar, state: &self.state, audio: &audio }])
            .with_context(|| format!("generating clip {}", clip.index))?;
        let generated = out.remove(0);
        self.state = generated.next;
        t.unet += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let rgb = pipe.decode(&generated.latents)?;
        let real = clip.real_frames.min(frames);
        let data: Vec<u8> = Vec::<u8>::try_from(rgb.narrow(0, 0, real as i64).flatten(0, -1))?;
        t.vae += at.elapsed().as_secs_f64();

        let at = Instant::now();
        let p = pipe.preset();
        let frame_len = (p.width * p.height * 3) as usize;
        let rgb_frames = data
            .chunks_exact(frame_len)
            .map(|f| RgbFrame::new(p.width, p.height, f))
            .collect::<osa_media::Result<Vec<_>>>()?;
        let first = clip.index * frames as u64;
        let chunks = if clip.last {
            let live = self.live.take().context("the stream ended already")?;
            live.push_final_clip(first, &rgb_frames)?
        } else {
            self.live.as_mut().context("the stream ended already")?.push_clip(first, &rgb_frames)?
        };
        t.video += at.elapsed().as_secs_f64();
        if chunks.iter().any(|c| matches!(c, LiveChunk::Segment(_))) && self.first_segment.is_none()
        {
            self.first_segment = Some(start.elapsed());
        }
        self.clips += 1;
        self.frames += real as u64;
        if clip.last {
            self.ended = Some(start.elapsed());
        }
        Ok(())
    }
}

/// Runs the embedded workloads and adds their rows (and this process's
/// peak memory) to `report`.
pub fn run(options: &BenchOptions, inputs: &Inputs, report: &mut Report) -> anyhow::Result<()> {
    say(options, "embedded: loading the models");
    let m = Models::load(options, inputs)?;
    // One untimed clip so that first-call costs (allocations, lazy init) are
    // not charged to the first workload; the cluster's warm-up does the same.
    live(&m, options, inputs, 1)?;
    for &n in &options.sessions {
        say(options, format!("embedded: {n} live session(s)"));
        report.rows.push(live(&m, options, inputs, n)?);
    }
    if options.batch_jobs > 0 {
        say(options, format!("embedded: {} render job(s)", options.batch_jobs));
        report.rows.push(batch(&m, options, inputs)?);
    }
    let pid = std::process::id();
    report.memory.push(ProcMem {
        name: "bench (embedded: all stages)".into(),
        pid,
        peak_mib: crate::procs::status_mib(pid, "VmHWM").unwrap_or(f64::NAN),
    });
    Ok(())
}

fn live(m: &Models, options: &BenchOptions, inputs: &Inputs, n: usize) -> anyhow::Result<Row> {
    let layout = Layout { fps: options.fps, frames_per_clip: m.frames_per_clip() };
    let mut t = Stages::default();
    let (mut ttfs, mut rtfs, mut clips, mut frames, mut wall) = (Vec::new(), Vec::new(), 0, 0, 0.0);
    for _ in 0..options.rounds.max(1) {
        let mut sessions = (0..n)
            .map(|_| {
                Ok(Session {
                    seg: Segment::new(m.audio.plan(), layout, m.audio.stride(), 0),
                    pushed: 0,
                    finished: false,
                    state: RollingState::new(0, 1),
                    pending: VecDeque::new(),
                    live: Some(LiveStream::new(m.output_config(false)?, 1)?),
                    clips: 0,
                    frames: 0,
                    first_segment: None,
                    ended: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let start = Instant::now();
        while sessions.iter().any(|s| s.ended.is_none()) {
            let mut worked = false;
            for s in &mut sessions {
                worked |= s.step(m, &inputs.samples, options.pace, start, &mut t)?;
            }
            if !worked {
                // Real-time pacing: nothing to do until the next chunk arrives.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        wall += start.elapsed().as_secs_f64();
        ttfs.extend(sessions.iter().filter_map(|s| s.first_segment).map(|d| d.as_secs_f64() * 1e3));
        rtfs.extend(
            sessions.iter().filter_map(|s| s.ended).map(|d| d.as_secs_f64() / inputs.seconds),
        );
        clips += sessions.iter().map(|s| s.clips).sum::<u64>();
        frames += sessions.iter().map(|s| s.frames).sum::<u64>();
    }
    let rtf = rtfs.iter().sum::<f64>() / rtfs.len().max(1) as f64;
    Ok(row("embedded", format!("live x{n}"), n, clips, frames, ttfs, rtf, wall, t))
}

#[allow(clippy::too_many_arguments)]
fn row(
    mode: &str,
    workload: String,
    concurrency: usize,
    clips: u64,
    frames: u64,
    ttfs: Vec<f64>,
    rtf: f64,
    wall: f64,
    t: Stages,
) -> Row {
    let per = |s: f64| if clips == 0 { 0.0 } else { s * 1e3 / clips as f64 };
    let stages = per(t.audio) + per(t.unet) + per(t.vae) + per(t.video);
    Row {
        mode: mode.into(),
        workload,
        concurrency,
        clips,
        frames,
        ttfs_p50_ms: quantile(&ttfs, 0.5),
        ttfs_p95_ms: quantile(&ttfs, 0.95),
        open_p50_ms: None,
        gateway_ttfs_ms: None,
        rtf,
        fps: frames as f64 / wall,
        audio_ms: per(t.audio),
        unet_ms: per(t.unet),
        vae_ms: per(t.vae),
        video_ms: per(t.video),
        redis_ms: 0.0,
        queue_ms: 0.0,
        other_ms: per(wall) - stages,
        errors: BTreeMap::new(),
        wall_s: wall,
    }
}

/// Render jobs one after another, as `osa render` does each.
fn batch(m: &Models, options: &BenchOptions, inputs: &Inputs) -> anyhow::Result<Row> {
    let mut t = Stages::default();
    let (mut clips, mut frames) = (0u64, 0u64);
    let start = Instant::now();
    let e = &m.embedded;
    let pipe = e.pipeline();
    let p = pipe.preset().clone();
    for _ in 0..options.batch_jobs {
        let at = Instant::now();
        let decoded =
            osa_audio::decode_file(&inputs.wav, Some("wav"), &osa_audio::DecodeLimits::default())?;
        let clip_features = e.audio_clips(&decoded.samples)?;
        t.audio += at.elapsed().as_secs_f64();
        let avatar = &m.avatar;
        let mut mp4 = Mp4Render::new(m.output_config(true)?)?;
        let at = Instant::now();
        mp4.push_audio_f32(&decoded.samples)?;
        t.video += at.elapsed().as_secs_f64();
        let mut frame_index = 0u64;
        let generating = Instant::now();
        let mut in_callback = 0.0;
        e.generate(avatar, &clip_features, |clip| {
            let at = Instant::now();
            let rgb = pipe.decode(&e.latents_tensor(&clip.latents))?;
            let mut data = Vec::with_capacity(clip.real_frames);
            for f in 0..clip.real_frames as i64 {
                data.push(Vec::<u8>::try_from(rgb.get(f).flatten(0, -1))?);
            }
            let decoded_at = at.elapsed().as_secs_f64();
            t.vae += decoded_at;
            let at = Instant::now();
            for d in &data {
                mp4.push_frame(&RgbFrame::new(p.width, p.height, d)?, frame_index)?;
                frame_index += 1;
            }
            let encoded_at = at.elapsed().as_secs_f64();
            t.video += encoded_at;
            in_callback += decoded_at + encoded_at;
            clips += 1;
            Ok(())
        })?;
        t.unet += generating.elapsed().as_secs_f64() - in_callback;
        let at = Instant::now();
        let bytes = mp4.finish()?;
        anyhow::ensure!(!bytes.is_empty(), "an empty MP4");
        t.video += at.elapsed().as_secs_f64();
        frames += frame_index;
    }
    let wall = start.elapsed().as_secs_f64();
    let rtf = wall / (inputs.seconds * options.batch_jobs as f64);
    Ok(row(
        "embedded",
        format!("batch x{}", options.batch_jobs),
        options.batch_jobs,
        clips,
        frames,
        Vec::new(),
        rtf,
        wall,
        t,
    ))
}
