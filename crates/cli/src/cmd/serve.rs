//! `osa serve all`: a one-machine cluster. The audio-encoder, the
//! generator(s) and the decoder listen on free loopback ports; the gateway
//! listens on `--listen` and drives them, with Redis at `--redis`. Each is
//! served exactly as its own binary serves it. Ctrl-C (or SIGTERM) drains
//! and stops everything.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use osa_cluster::{Cluster, ClusterOptions};
use osa_runtime::Shutdown;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The gateway and the three stages, in this process.
    All(AllArgs),
}

#[derive(Debug, clap::Args)]
pub struct AllArgs {
    /// The gateway's address (the public API).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Redis for API keys, jobs, session slots and rolling contexts.
    #[arg(long, env = "OSA_REDIS_URL")]
    redis: String,
    /// Weights directory for the stages (see `osa weights`). Without it: the
    /// tiny preset with seeded random weights, which runs everything for
    /// real but does not make a real face.
    #[arg(long, env = "OSA_WEIGHTS")]
    weights: Option<PathBuf>,
    /// MTCNN weights for the face crop when --weights has none (default:
    /// $OSA_FACE_DETECTOR, else target/weights/face_detector.safetensors).
    #[arg(long)]
    face_detector: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device for the model stages: cpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Generator replicas.
    #[arg(long, default_value_t = 1)]
    generators: usize,
    /// Where uploads, results and work files go.
    #[arg(long, default_value = "osa-data")]
    data_dir: PathBuf,
}

pub fn run(command: &Command) -> anyhow::Result<ExitCode> {
    let Command::All(args) = command;
    if args.generators == 0 || args.generators > 16 {
        return super::usage("serve all", "--generators must be in 1..=16");
    }
    if let Err(e) = osa_model::device::Placement::parse(&args.device) {
        return super::usage("serve all", format!("--device {}: {e}", args.device));
    }
    let face_detector = super::face_detector_path(args.face_detector.as_ref());
    if args.weights.is_none() {
        eprintln!(
            "osa serve all: no --weights: the tiny preset with seeded random weights \
             (seed {}); videos are noise, not a face",
            args.seed
        );
    }
    let _telemetry =
        osa_runtime::telemetry::init("osa", &osa_runtime::settings::TelemetrySettings::default())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let mut options = ClusterOptions::new(args.listen, &args.redis, args.data_dir.clone());
        options.weights = args.weights.clone();
        options.face_detector = face_detector;
        options.seed = args.seed;
        options.device = args.device.clone();
        options.generators = args.generators;
        let cluster = Cluster::start(options).await?;
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals()?;
        tokio::select! {
            ready = cluster.wait_ready(Duration::from_secs(600)) => ready?,
            () = shutdown.triggered() => {}
        }
        if !shutdown.is_triggered() {
            eprintln!("osa serve all: serving on {} (Ctrl-C stops)", cluster.gateway.url);
            shutdown.triggered().await;
        }
        eprintln!("osa serve all: stopping");
        cluster.stop().await?;
        Ok(ExitCode::SUCCESS)
    })
}
