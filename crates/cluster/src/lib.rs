//! A one-machine osa cluster: the audio-encoder, generator(s) and decoder
//! on free loopback ports and the gateway in front, each served exactly as
//! its own binary serves it (same `run`, same settings types), as tasks of
//! one process. `osa serve all` runs it; the end-to-end tests and the
//! benchmarks start it with their own settings and kill replicas in it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use osa_runtime::Shutdown;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The gateway's address (port 0: any free port).
    pub listen: SocketAddr,
    /// Redis for keys, jobs, session slots and the generators' contexts.
    pub redis_url: String,
    /// Weights directory for the stages; `None`: the tiny preset's seeded
    /// random weights (`seed`).
    pub weights: Option<PathBuf>,
    /// Seed of the random weights.
    pub seed: u64,
    /// MTCNN weights for the generator's face crop when `weights` has none.
    pub face_detector: Option<PathBuf>,
    /// Device for the model stages: `cpu`, `cuda` or `auto`.
    pub device: String,
    /// Generator replicas.
    pub generators: usize,
    /// Generator addresses reserved and given to the gateway but not
    /// started: the gateway's balancer skips them (connection refused) until
    /// [`Cluster::start_standby`] starts a replica there (tests of a replica
    /// taking over).
    pub standby_generators: usize,
    /// Where the gateway keeps uploads and results (its local object store)
    /// and assembles MP4s.
    pub data_dir: PathBuf,
    /// The gateway's settings; stage addresses, Redis, storage and the
    /// listen address are filled in.
    pub gateway: osa_gateway::Settings,
    /// Stop replicas without a drain: in-flight calls are cut at once, as
    /// when a process dies (tests).
    pub hard_stop: bool,
    /// The CA (PEM) that signed the gateway's certificate, when
    /// `gateway.grpc.tls` is set: readiness is checked over TLS with it.
    pub gateway_ca: Option<PathBuf>,
}

impl ClusterOptions {
    /// Defaults for `listen` and `redis_url`: tiny random weights on the CPU,
    /// one generator, data under `data_dir`.
    pub fn new(listen: SocketAddr, redis_url: &str, data_dir: PathBuf) -> Self {
        Self {
            listen,
            redis_url: redis_url.to_owned(),
            weights: None,
            seed: 0,
            face_detector: None,
            device: "cpu".into(),
            generators: 1,
            standby_generators: 0,
            data_dir,
            gateway: osa_gateway::Settings::default(),
            hard_stop: false,
            gateway_ca: None,
        }
    }
}

/// One running service.
#[derive(Debug)]
pub struct Replica {
    /// Its gRPC URL (`http://127.0.0.1:PORT`).
    pub url: String,
    pub addr: SocketAddr,
    shutdown: Shutdown,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// Starts its shutdown (cut at once with `hard_stop`) and waits for it.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.task.await?
    }

    /// Whether its task has ended (a failed start, or stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

/// The running cluster.
#[derive(Debug)]
pub struct Cluster {
    pub audio_encoder: Replica,
    pub generators: Vec<Replica>,
    pub decoder: Replica,
    pub gateway: Replica,
    /// Reserved generator addresses not started yet.
    pub standby: Vec<SocketAddr>,
    options: ClusterOptions,
}

fn grpc_on(addr: SocketAddr, hard_stop: bool) -> osa_runtime::settings::GrpcSettings {
    let mut g = osa_runtime::settings::GrpcSettings::on_port(addr.port());
    g.listen = addr;
    if hard_stop {
        g.drain_timeout = Duration::ZERO;
    }
    g
}

fn no_metrics() -> osa_runtime::settings::MetricsSettings {
    osa_runtime::settings::MetricsSettings { enabled: false, ..Default::default() }
}

fn path_string(p: &Option<PathBuf>) -> String {
    p.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
}

async fn loopback() -> anyhow::Result<(TcpListener, SocketAddr)> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    Ok((l, addr))
}

fn spawn<F>(addr: SocketAddr, shutdown: Shutdown, run: F) -> Replica
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    Replica { url: format!("http://{addr}"), addr, shutdown, task: tokio::spawn(run) }
}

impl Cluster {
    /// Starts every service; returns once they are listening (see
    /// [`Cluster::wait_ready`] for serving).
    pub async fn start(options: ClusterOptions) -> anyhow::Result<Self> {
        let o = &options;
        let (l, addr) = loopback().await?;
        let mut s = osa_audio_encoder::Settings {
            grpc: grpc_on(addr, o.hard_stop),
            metrics: no_metrics(),
            ..Default::default()
        };
        if let Some(w) = &o.weights {
            s.audio_encoder.weights = w.clone();
        }
        s.audio_encoder.seed = o.seed;
        s.audio_encoder.device = o.device.clone();
        s.audio_encoder.max_audio_duration = o.gateway.gateway.max_audio_duration;
        let sd = Shutdown::new();
        let audio_encoder = spawn(addr, sd.clone(), osa_audio_encoder::run(s, l, sd));

        let mut generators = Vec::new();
        for _ in 0..o.generators.max(1) {
            let (l, addr) = loopback().await?;
            generators.push(Self::start_generator(o, l, addr));
        }
        let mut standby = Vec::new();
        for _ in 0..o.standby_generators {
            // Reserve a port: nothing listens there until it is started.
            standby.push(loopback().await?.1);
        }

        let (l, addr) = loopback().await?;
        let mut s = osa_decoder::Settings {
            grpc: grpc_on(addr, o.hard_stop),
            metrics: no_metrics(),
            ..Default::default()
        };
        s.decoder.weights = path_string(&o.weights);
        s.decoder.seed = o.seed;
        s.decoder.device = o.device.clone();
        let sd = Shutdown::new();
        let decoder = spawn(addr, sd.clone(), osa_decoder::run(s, l, sd));

        let mut cluster = Self {
            audio_encoder,
            generators,
            decoder,
            gateway: spawn(o.listen, Shutdown::new(), async { Ok(()) }),
            standby,
            options,
        };
        cluster.gateway = cluster.start_gateway(cluster.options.listen).await?;
        Ok(cluster)
    }

    fn start_generator(o: &ClusterOptions, l: TcpListener, addr: SocketAddr) -> Replica {
        let mut s = osa_generator::Settings {
            grpc: grpc_on(addr, o.hard_stop),
            metrics: no_metrics(),
            ..Default::default()
        };
        s.generator.weights = path_string(&o.weights);
        s.generator.seed = o.seed;
        s.generator.face_detector = path_string(&o.face_detector);
        s.generator.device = o.device.clone();
        s.generator.redis_url = o.redis_url.clone();
        let sd = Shutdown::new();
        spawn(addr, sd.clone(), osa_generator::run(s, l, sd))
    }

    /// The gateway's settings for this cluster.
    pub fn gateway_settings(&self, listen: SocketAddr) -> osa_gateway::Settings {
        let o = &self.options;
        let mut s = o.gateway.clone();
        // The gateway keeps its own TLS (the public API); stages are plain.
        let tls = s.grpc.tls.clone();
        s.grpc = grpc_on(listen, o.hard_stop);
        s.grpc.tls = tls;
        s.metrics = no_metrics();
        s.redis.url = o.redis_url.clone();
        let template = s.stages.generator.clone();
        let endpoints = |urls: Vec<String>| osa_runtime::balance::StageEndpoints {
            endpoints: urls,
            ..template.clone()
        };
        s.stages.audio_encoder = endpoints(vec![self.audio_encoder.url.clone()]);
        let mut generators: Vec<String> = self.generators.iter().map(|g| g.url.clone()).collect();
        generators.extend(self.standby.iter().map(|a| format!("http://{a}")));
        s.stages.generator = endpoints(generators);
        s.stages.decoder = endpoints(vec![self.decoder.url.clone()]);
        s.storage.url = o.data_dir.join("objects").display().to_string();
        s.jobs.work_dir = o.data_dir.join("work");
        s.model.random_weights = o.weights.is_none();
        s
    }

    async fn start_gateway(&self, listen: SocketAddr) -> anyhow::Result<Replica> {
        let l = TcpListener::bind(listen).await?;
        let addr = l.local_addr()?;
        let s = self.gateway_settings(addr);
        let https = s.grpc.tls.enabled();
        let sd = Shutdown::new();
        let mut replica = spawn(addr, sd.clone(), osa_gateway::run(s, l, sd));
        if https {
            replica.url = format!("https://{addr}");
        }
        Ok(replica)
    }

    /// Stops the gateway and starts a new one on the same address (a
    /// restart: jobs it was running are reclaimed after
    /// `jobs.reclaim_after`).
    pub async fn restart_gateway(&mut self) -> anyhow::Result<()> {
        let addr = self.gateway.addr;
        let old =
            std::mem::replace(&mut self.gateway, spawn(addr, Shutdown::new(), async { Ok(()) }));
        old.stop().await?;
        self.gateway = self.start_gateway(addr).await?;
        Ok(())
    }

    /// Starts a generator on reserved address `i` of
    /// [`ClusterOptions::standby_generators`]; returns its index in
    /// `generators`.
    pub async fn start_standby(&mut self, i: usize) -> anyhow::Result<usize> {
        let addr = self.standby[i];
        let l = TcpListener::bind(addr).await?;
        self.generators.push(Self::start_generator(&self.options, l, addr));
        Ok(self.generators.len() - 1)
    }

    /// Waits until every service reports SERVING (models loaded, Redis up).
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut all: Vec<&Replica> = vec![&self.audio_encoder, &self.decoder, &self.gateway];
        all.extend(self.generators.iter());
        for r in all {
            loop {
                if r.is_finished() {
                    anyhow::bail!("the service at {} stopped while starting", r.url);
                }
                if serving_with(&r.url, self.options.gateway_ca.as_deref()).await {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    anyhow::bail!("the service at {} was not serving after {timeout:?}", r.url);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Stops everything (gateway first).
    pub async fn stop(self) -> anyhow::Result<()> {
        self.gateway.stop().await?;
        for g in self.generators {
            g.stop().await?;
        }
        self.decoder.stop().await?;
        self.audio_encoder.stop().await?;
        Ok(())
    }
}

/// Whether the gRPC health service at `url` says SERVING.
pub async fn serving(url: &str) -> bool {
    serving_with(url, None).await
}

/// [`serving`], trusting the PEM CA at `ca` for an `https://` URL.
pub async fn serving_with(url: &str, ca: Option<&std::path::Path>) -> bool {
    let Ok(mut channel) = tonic::transport::Endpoint::from_shared(url.to_owned()) else {
        return false;
    };
    if url.starts_with("https://") {
        let tls = osa_runtime::client::ClientTlsSettings {
            ca_path: ca.map(std::path::Path::to_path_buf),
            ..Default::default()
        };
        let Ok(config) = tls.to_tls_config() else { return false };
        let Ok(with_tls) = channel.tls_config(config) else { return false };
        channel = with_tls;
    }
    let Ok(channel) = channel.connect_timeout(Duration::from_millis(500)).connect().await else {
        return false;
    };
    let reply =
        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    matches!(
        reply.map(|r| ServingStatus::try_from(r.into_inner().status)),
        Ok(Ok(ServingStatus::Serving))
    )
}
