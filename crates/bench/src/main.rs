//! `osa-bench`: see the crate docs. Prints the table on stdout and writes
//! the report as markdown and JSON when `--out` is given.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use osa_bench::{BenchOptions, Launch, LoadOptions, Pace};

/// Drives osa as users do (live sessions, render jobs, a bounded load test)
/// in the embedded mode and through a loopback cluster; prints one table.
#[derive(Debug, Parser)]
#[command(name = "osa-bench")]
struct Args {
    /// Modes: embedded, cluster (comma-separated).
    #[arg(long, default_value = "embedded,cluster", value_delimiter = ',')]
    modes: Vec<String>,
    /// How the cluster starts: processes (the service binaries in
    /// --bin-dir, one process each) or in-process (osa-cluster).
    #[arg(long, default_value = "processes")]
    launch: String,
    /// Directory of osa-gateway, osa-audio-encoder, osa-generator and
    /// osa-decoder (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Concurrent live sessions, one workload each.
    #[arg(long, default_value = "1,4,16", value_delimiter = ',')]
    sessions: Vec<usize>,
    /// Render jobs in the batch workload (0: none).
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value = "target/samples/portrait.png")]
    image: PathBuf,
    #[arg(long, default_value = "target/samples/speech.wav")]
    audio: PathBuf,
    /// Seconds of the audio used per session or job.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Live audio: fast (as fast as taken) or realtime.
    #[arg(long, default_value = "fast")]
    pace: Pace,
    /// libtorch intra-op threads per model process (0: libtorch's default).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// MTCNN weights (default: target/weights/face_detector.safetensors
    /// when present).
    #[arg(long)]
    face_detector: Option<PathBuf>,
    /// The gateway's live sessions per key (default: the largest --sessions).
    #[arg(long)]
    capacity: Option<u32>,
    /// Load tests: concurrent sessions, one test per value, e.g. 12,24 for
    /// one level below the admission limit (--capacity) and one above it
    /// (empty or 0: no load test).
    #[arg(long, value_delimiter = ',')]
    load_sessions: Vec<usize>,
    /// Load tests: seconds at the first level's concurrency before the
    /// first level, not judged (the allocators' ramp).
    #[arg(long, default_value_t = 0)]
    load_ramp_seconds: u64,
    /// Rounds of each live workload (TTFS quantiles over all of them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Load test: seconds new sessions are started.
    #[arg(long, default_value_t = 20)]
    load_seconds: u64,
    /// Where the services keep data and logs (default: a temporary directory).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Write the report to FILE.md and FILE.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the text between `<!-- osa-bench:begin -->` and
    /// `<!-- osa-bench:end -->` in this markdown file with the report.
    #[arg(long)]
    update_doc: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("osa-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut o = BenchOptions::new(args.image, args.audio);
    o.embedded = args.modes.iter().any(|m| m == "embedded");
    o.cluster = if args.modes.iter().any(|m| m == "cluster") {
        Some(match args.launch.as_str() {
            "processes" => Launch::Processes {
                bin_dir: match args.bin_dir {
                    Some(d) => d,
                    None => {
                        std::env::current_exe()?.parent().map(PathBuf::from).unwrap_or_default()
                    }
                },
            },
            "in-process" => Launch::InProcess,
            other => anyhow::bail!("--launch {other:?} is not one of processes, in-process"),
        })
    } else {
        None
    };
    if let Some(bad) = args.modes.iter().find(|m| !matches!(m.as_str(), "embedded" | "cluster")) {
        anyhow::bail!("--modes: {bad:?} is not one of embedded, cluster");
    }
    o.sessions = args.sessions;
    o.batch_jobs = args.batch;
    o.seconds = args.seconds;
    o.pace = args.pace;
    o.threads = args.threads;
    o.face_detector = args.face_detector.or_else(|| {
        let p = PathBuf::from("target/weights/face_detector.safetensors");
        p.is_file().then_some(p)
    });
    o.capacity = args.capacity;
    o.load = args
        .load_sessions
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| LoadOptions { sessions: n, duration: Duration::from_secs(args.load_seconds) })
        .collect();
    o.rounds = args.rounds;
    o.load_ramp = Duration::from_secs(args.load_ramp_seconds);
    o.work_dir = args.work_dir;
    o.verbose = !args.quiet;
    let report = osa_bench::run(&o, command)?;
    let md = report.markdown();
    println!("{md}");
    if let Some(out) = args.out {
        let md_path = out.with_extension("md");
        let json_path = out.with_extension("json");
        std::fs::write(&md_path, &md)?;
        std::fs::write(&json_path, report.json())?;
        eprintln!("osa-bench: wrote {} and {}", md_path.display(), json_path.display());
    }
    if let Some(doc) = args.update_doc {
        let text = std::fs::read_to_string(&doc)?;
        let updated = osa_bench::report::splice(&text, &md)
            .map_err(|e| anyhow::anyhow!("{}: {e}", doc.display()))?;
        std::fs::write(&doc, updated)?;
        eprintln!("osa-bench: updated {}", doc.display());
    }
    Ok(())
}
