//! The cluster mode: a private `redis-server`, the four services on
//! loopback (separate processes or tasks of this one), and the public API
//! driven through `osa-client` as users drive it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use osa_client::{Client, ClientConfig, Error, LiveEvent, RenderOptions, code_name, v1};
use osa_runtime::{
    balance::StageEndpoints,
    settings::{GrpcSettings, MetricsSettings},
};

use crate::{
    BenchOptions, Inputs, Launch, LoadOptions, Pace, Report, Row,
    embedded::CHUNK,
    metrics::{Samples, scrape},
    procs::{Proc, Redis, free_port, status_mib},
    quantile,
    report::ProcMem,
    say,
};

/// Where the services' metrics come from.
enum Scraper {
    /// `/metrics` of each service process.
    Http(Vec<SocketAddr>),
    /// This process's recorder (in-process services).
    Local,
}

impl Scraper {
    async fn scrape(&self) -> anyhow::Result<Samples> {
        match self {
            Self::Http(addrs) => {
                let mut all = Samples::default();
                for a in addrs {
                    all.merge(scrape(*a).await.with_context(|| format!("metrics at {a}"))?);
                }
                Ok(all)
            }
            Self::Local => Ok(Samples::parse(&osa_runtime::metrics::install().render())),
        }
    }
}

/// A running cluster.
pub struct Running {
    /// The gateway's URL.
    pub url: String,
    /// The redis URL.
    pub redis_url: String,
    /// Processes to watch (name, pid): this one for in-process services.
    pub pids: Vec<(String, u32)>,
    scraper: Scraper,
    // Dropped last to first: services, then Redis.
    procs: Vec<Proc>,
    in_process: Option<osa_cluster::Cluster>,
    _redis: Redis,
}

/// The decoder's environment in the deployment (deploy/base/decoder.yaml),
/// which the bench's decoder process gets too: glibc's malloc with at most
/// two arenas (see docs/benchmarks.md, memory).
pub const DECODER_ENV: (&str, &str) = ("MALLOC_ARENA_MAX", "2");

fn grpc(port: u16) -> GrpcSettings {
    let mut g = GrpcSettings::on_port(port);
    g.listen = SocketAddr::from(([127, 0, 0, 1], port));
    g
}

/// The gateway's settings for the bench: admission limit `capacity`, a
/// rate limit no workload reaches, jobs in `data`.
fn gateway_settings(options: &BenchOptions, data: &Path) -> osa_gateway::Settings {
    let mut s = osa_gateway::Settings::default();
    s.gateway.max_live_sessions_per_key = options.capacity();
    s.gateway.requests_per_second_per_key = 10_000.0;
    s.gateway.max_running_jobs_per_key = options.batch_jobs.max(8) as u32;
    s.jobs.workers = options.batch_jobs.max(4);
    s.storage.url = data.join("objects").display().to_string();
    s.jobs.work_dir = data.join("work");
    s.model.random_weights = true;
    s
}

fn write_config<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    settings: &T,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    let text = toml::to_string(settings).with_context(|| format!("{name} settings as TOML"))?;
    std::fs::write(&path, text).with_context(|| path.display().to_string())?;
    Ok(path)
}

impl Running {
    /// Starts Redis and the services and waits until every one serves.
    pub async fn start(
        options: &BenchOptions,
        launch: &Launch,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let redis = Redis::start(dir)?;
        let mut gw = gateway_settings(options, dir);
        gw.redis.url = redis.url();
        match launch {
            Launch::InProcess => {
                // Installed before the services record anything.
                let _ = osa_runtime::metrics::install();
                let mut o = osa_cluster::ClusterOptions::new(
                    "127.0.0.1:0".parse().expect("static address"),
                    &redis.url(),
                    dir.to_path_buf(),
                );
                o.face_detector = options.face_detector.clone();
                o.gateway = gw;
                let cluster = osa_cluster::Cluster::start(o).await?;
                cluster.wait_ready(Duration::from_secs(300)).await?;
                Ok(Self {
                    url: cluster.gateway.url.clone(),
                    redis_url: redis.url(),
                    pids: vec![
                        ("bench (all four services)".into(), std::process::id()),
                        ("redis-server".into(), redis.proc.pid()),
                    ],
                    scraper: Scraper::Local,
                    procs: Vec::new(),
                    in_process: Some(cluster),
                    _redis: redis,
                })
            }
            Launch::Processes { bin_dir } => {
                Self::start_processes(options, bin_dir, dir, redis, gw).await
            }
        }
    }

    async fn start_processes(
        options: &BenchOptions,
        bin_dir: &Path,
        dir: &Path,
        redis: Redis,
        mut gw: osa_gateway::Settings,
    ) -> anyhow::Result<Self> {
        let device = "cpu".to_owned();
        let face =
            options.face_detector.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let (ae_port, gen_port, dec_port, gw_port) =
            (free_port()?, free_port()?, free_port()?, free_port()?);
        let metrics: Vec<u16> = (0..4).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
        let on = |port: u16| MetricsSettings::on_port(port);

        let mut ae = osa_audio_encoder::Settings {
            grpc: grpc(ae_port),
            metrics: on(metrics[0]),
            ..Default::default()
        };
        ae.audio_encoder.device = device.clone();
        ae.audio_encoder.max_audio_duration = gw.gateway.max_audio_duration;

        let mut generator = osa_generator::Settings {
            grpc: grpc(gen_port),
            metrics: on(metrics[1]),
            ..Default::default()
        };
        generator.generator.device = device.clone();
        generator.generator.face_detector = face;
        generator.generator.redis_url = redis.url();

        let mut decoder = osa_decoder::Settings {
            grpc: grpc(dec_port),
            metrics: on(metrics[2]),
            ..Default::default()
        };
        decoder.decoder.device = device;

        gw.grpc = grpc(gw_port);
        gw.metrics = on(metrics[3]);
        let template = gw.stages.generator.clone();
        let at = |port: u16| StageEndpoints {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            ..template.clone()
        };
        gw.stages.audio_encoder = at(ae_port);
        gw.stages.generator = at(gen_port);
        gw.stages.decoder = at(dec_port);

        let configs = [
            ("osa-audio-encoder", write_config(dir, "audio-encoder", &ae)?, ae_port),
            ("osa-generator", write_config(dir, "generator", &generator)?, gen_port),
            ("osa-decoder", write_config(dir, "decoder", &decoder)?, dec_port),
            ("osa-gateway", write_config(dir, "gateway", &gw)?, gw_port),
        ];
        let mut procs = Vec::new();
        for (bin, config, _) in &configs {
            let path = bin_dir.join(bin);
            anyhow::ensure!(
                path.is_file(),
                "{} is missing: build it (cargo build --release -p {bin}) or pass --bin-dir",
                path.display()
            );
            let mut cmd = Command::new(&path);
            cmd.arg("--config").arg(config);
            if *bin == "osa-decoder" {
                // As the deployment starts it (deploy/base/decoder.yaml).
                cmd.env(DECODER_ENV.0, DECODER_ENV.1);
            }
            if options.threads > 0 {
                // libtorch takes its intra-op thread count from these.
                cmd.env("OMP_NUM_THREADS", options.threads.to_string());
                cmd.env("MKL_NUM_THREADS", options.threads.to_string());
            }
            procs.push(Proc::spawn(bin, cmd, &dir.join(format!("{bin}.log")))?);
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        for (i, (bin, _, port)) in configs.iter().enumerate() {
            let url = format!("http://127.0.0.1:{port}");
            while !osa_cluster::serving(&url).await {
                procs[i]
                    .check_running()
                    .with_context(|| format!("see {}", dir.join(format!("{bin}.log")).display()))?;
                anyhow::ensure!(Instant::now() < deadline, "{bin} was not serving after 300 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let mut pids: Vec<(String, u32)> =
            procs.iter().map(|p| (p.name.clone(), p.pid())).collect();
        pids.push(("redis-server".into(), redis.proc.pid()));
        Ok(Self {
            url: format!("http://127.0.0.1:{gw_port}"),
            redis_url: redis.url(),
            pids,
            scraper: Scraper::Http(
                metrics.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect(),
            ),
            procs,
            in_process: None,
            _redis: redis,
        })
    }

    /// Stops the services (in-process ones drained; processes killed).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(c) = self.in_process.take() {
            c.stop().await?;
        }
        self.procs.reverse();
        self.procs.clear();
        Ok(())
    }

    /// Every process's peak memory now.
    pub fn peaks(&self) -> Vec<ProcMem> {
        self.pids
            .iter()
            .map(|(name, pid)| ProcMem {
                name: name.clone(),
                pid: *pid,
                peak_mib: status_mib(*pid, "VmHWM").unwrap_or(f64::NAN),
            })
            .collect()
    }
}

/// A client of the bench's key.
pub async fn client(url: &str, key: &str, retries: bool) -> anyhow::Result<Client> {
    let mut c = ClientConfig::new(url).api_key(key);
    if !retries {
        c.retry.max_attempts = 1;
    }
    Ok(Client::with_config(c).await?)
}

/// What one live session saw.
#[derive(Debug, Clone, Default)]
pub struct SessionResult {
    /// The opening call to the `Started` event.
    pub opened: Option<Duration>,
    pub ttfs: Option<Duration>,
    pub wall: Duration,
    pub clips: u64,
    pub frames: u64,
}

/// One live session: `pcm` sent in 100 ms chunks at `pace`, every event
/// read; the time to first segment counts from the session's opening call.
pub async fn session(
    client: &Client,
    avatar: &str,
    pcm: Arc<Vec<i16>>,
    fps: u32,
    pace: Pace,
) -> Result<SessionResult, Error> {
    let t0 = Instant::now();
    let start = v1::LiveStart {
        avatar_id: avatar.to_owned(),
        fps,
        sampling: Some(v1::SamplingOptions { steps: 1, seed: 0 }),
        output: v1::VideoOutput::Fmp4Segments as i32,
        clips_per_segment: 1,
        encoding: None,
    };
    let (tx, mut rx) = client.live(start).await?;
    let sender = tokio::spawn(async move {
        for (k, chunk) in pcm.chunks(CHUNK).enumerate() {
            if pace == Pace::Realtime {
                tokio::time::sleep_until((t0 + Duration::from_millis(100 * k as u64)).into()).await;
            }
            tx.send_pcm16(chunk).await?;
        }
        tx.end().await
    });
    let mut r = SessionResult::default();
    let mut ended = false;
    while let Some(event) = rx.next().await {
        match event {
            Ok(LiveEvent::Clip(c)) => {
                r.ttfs.get_or_insert_with(|| t0.elapsed());
                r.clips += 1;
                r.frames += c.timing.map_or(0, |t| u64::from(t.real_frames));
            }
            Ok(LiveEvent::Started(_)) => {
                r.opened.get_or_insert_with(|| t0.elapsed());
            }
            Ok(LiveEvent::Ended(_)) => ended = true,
            Ok(_) => {}
            Err(e) => {
                sender.abort();
                return Err(e);
            }
        }
    }
    r.wall = t0.elapsed();
    match sender.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(Error::SessionClosed),
    }
    if !ended {
        return Err(Error::SessionClosed);
    }
    Ok(r)
}

/// The gRPC code name of a client error (`OTHER` when it has none).
pub fn error_name(e: &Error) -> String {
    e.code().map_or_else(|| "OTHER".to_owned(), |c| code_name(c).to_owned())
}

/// The per-clip stage columns from the services' histograms over a
/// workload.
fn stage_row(mut row: Row, d: &Samples) -> Row {
    let clips = row.clips.max(1) as f64;
    let ms = |s: f64| s * 1e3 / clips;
    let sum = |name: &str| d.total(name, &[]);
    let vae = sum("osa_decoder_decode_seconds_sum");
    let decoder_queue = sum("osa_decoder_queue_wait_seconds_sum");
    // The decoder records clip arrival -> segment (or file) sent; what is
    // not queue or VAE decode is the H.264 encoding and muxing.
    let video = (sum("osa_decoder_latency_seconds_sum") - vae - decoder_queue).max(0.0);
    row.audio_ms = ms(sum("osa_audio_encoder_encode_seconds_sum"));
    row.unet_ms = ms(sum("osa_generator_unet_seconds_sum"));
    row.vae_ms = ms(vae);
    row.video_ms = ms(video);
    row.redis_ms = ms(sum("osa_generator_store_seconds_sum"));
    row.queue_ms = ms(sum("osa_generator_queue_wait_seconds_sum")
        + decoder_queue
        + sum("osa_audio_encoder_queue_seconds_sum"));
    let stages =
        row.audio_ms + row.unet_ms + row.vae_ms + row.video_ms + row.redis_ms + row.queue_ms;
    row.other_ms = row.wall_s * 1e3 / clips - stages;
    row
}

/// Runs the cluster workloads (and the load test) and adds their rows,
/// memory and load report to `report`.
pub async fn run(
    options: &BenchOptions,
    launch: &Launch,
    inputs: &Inputs,
    report: &mut Report,
) -> anyhow::Result<()> {
    let tmp;
    let dir = match &options.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    say(options, format!("cluster: starting ({launch:?}) in {}", dir.display()));
    let cluster = Running::start(options, launch, &dir).await?;
    let result = workloads(options, inputs, report, &cluster, &dir).await;
    cluster.stop().await?;
    result
}

async fn workloads(
    options: &BenchOptions,
    inputs: &Inputs,
    report: &mut Report,
    cluster: &Running,
    dir: &Path,
) -> anyhow::Result<()> {
    let keys =
        osa_gateway::keys::ApiKeys::connect(&cluster.redis_url, "osa:", Duration::from_secs(2))
            .await
            .context("connecting to the bench's Redis for an API key")?;
    let (_, key) = keys.create("bench").await?;
    let client = client(&cluster.url, &key, true).await?;
    let avatar = client.create_avatar(inputs.image_bytes.clone(), "bench").await?.avatar_id;
    let pcm = Arc::new(inputs.pcm16());
    // Untimed warm-up: first-call costs of every stage.
    session(&client, &avatar, pcm.clone(), options.fps, options.pace).await?;

    for &n in &options.sessions {
        say(options, format!("cluster: {n} live session(s)"));
        let before = cluster.scraper.scrape().await?;
        let (mut runs, mut wall) = (Vec::new(), 0.0);
        for _ in 0..options.rounds.max(1) {
            let start = Instant::now();
            runs.extend(
                futures::future::join_all((0..n).map(|_| {
                    let (client, avatar, pcm) = (client.clone(), avatar.clone(), pcm.clone());
                    async move { session(&client, &avatar, pcm, options.fps, options.pace).await }
                }))
                .await,
            );
            wall += start.elapsed().as_secs_f64();
        }
        let d = cluster.scraper.scrape().await?.since(&before);
        let mut errors = BTreeMap::new();
        let ok: Vec<SessionResult> = runs
            .into_iter()
            .filter_map(|r| r.map_err(|e| *errors.entry(error_name(&e)).or_insert(0) += 1).ok())
            .collect();
        let ttfs: Vec<f64> =
            ok.iter().filter_map(|r| r.ttfs).map(|t| t.as_secs_f64() * 1e3).collect();
        let opened: Vec<f64> =
            ok.iter().filter_map(|r| r.opened).map(|t| t.as_secs_f64() * 1e3).collect();
        let gateway_count = d.total("osa_gateway_time_to_first_segment_seconds_count", &[]);
        let gateway_ttfs_ms = (gateway_count > 0.0).then(|| {
            d.total("osa_gateway_time_to_first_segment_seconds_sum", &[]) * 1e3 / gateway_count
        });
        let clips = ok.iter().map(|r| r.clips).sum();
        let frames: u64 = ok.iter().map(|r| r.frames).sum();
        let rtf = ok.iter().map(|r| r.wall.as_secs_f64() / inputs.seconds).sum::<f64>()
            / ok.len().max(1) as f64;
        let row = Row {
            mode: "cluster".into(),
            workload: format!("live x{n}"),
            concurrency: n,
            clips,
            frames,
            ttfs_p50_ms: quantile(&ttfs, 0.5),
            ttfs_p95_ms: quantile(&ttfs, 0.95),
            open_p50_ms: quantile(&opened, 0.5),
            gateway_ttfs_ms,
            rtf,
            fps: frames as f64 / wall,
            errors,
            wall_s: wall,
            ..Row::default()
        };
        report.rows.push(stage_row(row, &d));
    }

    if options.batch_jobs > 0 {
        say(options, format!("cluster: {} render job(s)", options.batch_jobs));
        let audio = dir.join("excerpt.wav");
        std::fs::write(&audio, &inputs.wav)?;
        let before = cluster.scraper.scrape().await?;
        let start = Instant::now();
        let runs = futures::future::join_all((0..options.batch_jobs).map(|i| {
            let (client, avatar, audio) = (client.clone(), avatar.clone(), audio.clone());
            let out = dir.join(format!("render-{i}.mp4"));
            async move {
                let opts = RenderOptions { seed: Some(0), ..RenderOptions::default() };
                client.render_file(&avatar, &audio, &out, opts, |_| {}).await
            }
        }))
        .await;
        let wall = start.elapsed().as_secs_f64();
        let d = cluster.scraper.scrape().await?.since(&before);
        let mut errors = BTreeMap::new();
        let mut clips = 0;
        let mut ok = 0usize;
        for r in runs {
            match r {
                Ok(job) => {
                    ok += 1;
                    clips += job.progress.as_ref().map_or(0, |p| p.clips_done);
                }
                Err(e) => *errors.entry(error_name(&e)).or_insert(0) += 1,
            }
        }
        let frames = (inputs.seconds * f64::from(options.fps)).round() as u64 * ok as u64;
        let row = Row {
            mode: "cluster".into(),
            workload: format!("batch x{}", options.batch_jobs),
            concurrency: options.batch_jobs,
            clips,
            frames,
            rtf: wall / (inputs.seconds * ok.max(1) as f64),
            fps: frames as f64 / wall,
            errors,
            wall_s: wall,
            ..Row::default()
        };
        report.rows.push(stage_row(row, &d));
    }
    report.memory.extend(cluster.peaks());

    if !options.load.is_empty() {
        // No retries: every refusal must reach the tally.
        let strict = crate::cluster::client(&cluster.url, &key, false).await?;
        let ramp = options
            .load
            .first()
            .filter(|_| !options.load_ramp.is_zero())
            .map(|first| LoadOptions { sessions: first.sessions, duration: options.load_ramp });
        let runs = ramp.iter().map(|r| (true, r)).chain(options.load.iter().map(|l| (false, l)));
        for (is_ramp, load) in runs {
            let what = if is_ramp { "ramp" } else { "test" };
            say(
                options,
                format!("cluster: load {what}, {} sessions for {:?}", load.sessions, load.duration),
            );
            let result = crate::load::run(
                load,
                options.capacity(),
                &strict,
                &avatar,
                pcm.clone(),
                options.fps,
                &cluster.pids,
            )
            .await;
            if is_ramp {
                report.load_ramp = Some(result);
            } else {
                report.load.push(result);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_starts_its_decoder_as_the_deployment_does() {
        let manifest = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/base/decoder.yaml"),
        )
        .expect("deploy/base/decoder.yaml");
        let want = format!("- name: {}\n              value: \"{}\"", DECODER_ENV.0, DECODER_ENV.1);
        assert!(manifest.contains(&want), "deploy/base/decoder.yaml lacks {want:?}");
    }
}
