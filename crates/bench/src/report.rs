//! The report: one table of workloads, the cluster's overhead over the
//! embedded mode, per-process memory, the load test, and where it ran.
//! Rendered as markdown (the table printed and written to docs) and JSON.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{BenchOptions, Pace};

/// One workload in one mode.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Row {
    /// `embedded` or `cluster`.
    pub mode: String,
    /// `live xN` or `batch xN`.
    pub workload: String,
    /// Concurrent sessions or jobs.
    pub concurrency: usize,
    /// Clips produced (all sessions or jobs).
    pub clips: u64,
    /// Frames produced (backed by audio).
    pub frames: u64,
    /// Time to first segment, ms (live only): p50 and p95 over sessions.
    pub ttfs_p50_ms: Option<f64>,
    pub ttfs_p95_ms: Option<f64>,
    /// Opening a live session, ms, p50 over sessions: the client's call to
    /// the `Started` event (cluster only: key check, admission slot, stage
    /// streams).
    pub open_p50_ms: Option<f64>,
    /// The gateway's own time to first segment (first audio at the gateway
    /// to the first segment sent), mean, ms (cluster only).
    pub gateway_ttfs_ms: Option<f64>,
    /// Mean over sessions/jobs of (wall time / media time).
    pub rtf: f64,
    /// Frames produced per second of wall time, all sessions together.
    pub fps: f64,
    /// Per clip, ms: audio encoder forward passes.
    pub audio_ms: f64,
    /// Per clip, ms: denoising UNet (amortised over a batch).
    pub unet_ms: f64,
    /// Per clip, ms: VAE decode.
    pub vae_ms: f64,
    /// Per clip, ms: H.264 + (f)MP4 muxing.
    pub video_ms: f64,
    /// Per clip, ms: the generator's context-store (Redis) calls.
    pub redis_ms: f64,
    /// Per clip, ms: waits in the stages' model queues.
    pub queue_ms: f64,
    /// Per clip, ms: wall time per clip (all sessions' clips over the
    /// workload's wall time x concurrency) minus the stage times above:
    /// gRPC hops, serialisation, copies, scheduling. Negative when stages
    /// overlap (the cluster pipelines its stages).
    pub other_ms: f64,
    /// Errors by gRPC code name.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the workload, s.
    pub wall_s: f64,
}

/// A process's memory.
#[derive(Debug, Clone, Serialize)]
pub struct ProcMem {
    pub name: String,
    pub pid: u32,
    /// Peak resident set (VmHWM), MiB.
    pub peak_mib: f64,
}

/// The cluster over the embedded mode, one workload.
#[derive(Debug, Clone, Serialize)]
pub struct Overhead {
    pub workload: String,
    /// cluster RTF / embedded RTF.
    pub rtf_ratio: f64,
    /// cluster TTFS p50 - embedded TTFS p50, ms.
    pub ttfs_p50_diff_ms: Option<f64>,
    /// Per clip, ms, cluster minus embedded, by stage.
    pub stage_diff_ms: BTreeMap<String, f64>,
}

/// Memory of one process over the load test.
#[derive(Debug, Clone, Serialize)]
pub struct RssTrace {
    pub name: String,
    pub pid: u32,
    /// The first sample, as the load test starts.
    pub start_mib: f64,
    /// Lowest sample of the second quarter: after the ramp (every
    /// concurrent session has run a clip through every stage), between
    /// model batches. A sample taken during a batch also holds that batch's
    /// buffers (the decoder's VAE on 8 clips: hundreds of MiB on the CPU),
    /// so single samples swing; the floor is what the process keeps.
    pub ramped_mib: f64,
    /// Lowest sample of the last quarter.
    pub last_quarter_mib: f64,
    /// The last sample, after every session has ended.
    pub end_mib: f64,
    pub max_mib: f64,
    pub samples: usize,
}

impl RssTrace {
    /// Summarises `samples` (VmRSS, MiB, in order).
    pub fn new(name: String, pid: u32, samples: &[f64]) -> Self {
        let q = samples.len() / 4;
        let floor = |s: &[f64]| s.iter().copied().fold(f64::NAN, f64::min);
        let (ramped, last) = if q == 0 {
            (
                samples.first().copied().unwrap_or(f64::NAN),
                samples.last().copied().unwrap_or(f64::NAN),
            )
        } else {
            (floor(&samples[q..2 * q]), floor(&samples[samples.len() - q..]))
        };
        Self {
            name,
            pid,
            start_mib: samples.first().copied().unwrap_or(f64::NAN),
            ramped_mib: ramped,
            last_quarter_mib: last,
            end_mib: samples.last().copied().unwrap_or(f64::NAN),
            max_mib: samples.iter().copied().fold(f64::NAN, f64::max),
            samples: samples.len(),
        }
    }
}

/// The bounded load test.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Concurrent sessions attempted.
    pub sessions: usize,
    /// The gateway's admission limit (live sessions per key).
    pub capacity: u32,
    /// Seconds new sessions were started.
    pub duration_s: f64,
    /// Wall time until the last session ended.
    pub wall_s: f64,
    /// Sessions that ran to their end.
    pub completed: u64,
    /// Clips received.
    pub clips: u64,
    /// Errors by gRPC code name (`TIMEOUT`: no answer in time).
    pub errors: BTreeMap<String, u64>,
    /// Time to first segment of completed sessions.
    pub ttfs_p50_ms: Option<f64>,
    pub ttfs_p95_ms: Option<f64>,
    /// VmRSS of every process, sampled over the run.
    pub memory: Vec<RssTrace>,
}

/// Memory counts as flat over a load test when no process's floor in the
/// last quarter is more than this many MiB above its floor in the second
/// quarter...
pub const FLAT_MIB: f64 = 16.0;
/// ...or more than this fraction above it.
pub const FLAT_FRACTION: f64 = 0.05;

impl RssTrace {
    /// Growth in steady state, MiB: the last quarter's floor minus the
    /// second quarter's. The first quarter is the ramp, where the
    /// allocators take the working set of N concurrent sessions (glibc
    /// keeps freed model buffers; see docs/benchmarks.md); a leak keeps
    /// growing after it.
    pub fn growth_mib(&self) -> f64 {
        self.last_quarter_mib - self.ramped_mib
    }

    /// Whether the steady-state growth is within [`FLAT_MIB`] or
    /// [`FLAT_FRACTION`].
    pub fn flat(&self) -> bool {
        self.growth_mib() <= FLAT_MIB.max(self.ramped_mib * FLAT_FRACTION)
    }
}

impl LoadReport {
    /// What the issue asks of a load test, checked: below the admission
    /// limit no errors at all; above it, every error RESOURCE_EXHAUSTED
    /// (no timeouts, nothing else); every process's memory flat. Each
    /// entry is (criterion, held).
    pub fn verdict(&self) -> Vec<(String, bool)> {
        let mut v = Vec::new();
        if self.sessions as u64 <= u64::from(self.capacity) {
            v.push(("no errors below capacity".to_owned(), self.errors.is_empty()));
        } else {
            let only = self.errors.keys().all(|k| k == "RESOURCE_EXHAUSTED");
            v.push((
                "above capacity every refusal is RESOURCE_EXHAUSTED (no timeouts, no other \
                 errors)"
                    .to_owned(),
                only && !self.errors.is_empty(),
            ));
        }
        let grew: Vec<String> = self
            .memory
            .iter()
            .filter(|t| !t.flat())
            .map(|t| format!("{} {:+.0} MiB", t.name, t.growth_mib()))
            .collect();
        v.push((
            if grew.is_empty() {
                format!(
                    "memory of every process flat after the ramp (the last quarter's lowest \
                     VmRSS within {FLAT_MIB:.0} MiB or {:.0}% of the second quarter's)",
                    FLAT_FRACTION * 100.0
                )
            } else {
                format!("memory flat: grew: {}", grew.join(", "))
            },
            grew.is_empty(),
        ));
        v
    }
}

/// Where and how it ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub gpu: String,
    pub load_average_start: String,
    pub load_average_end: String,
    pub kernel: String,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub git_commit: String,
    pub started_utc: String,
    pub machine: Machine,
    pub preset: String,
    pub audio_seconds: f64,
    pub pace: Pace,
    pub threads: usize,
    pub cluster_launch: String,
    pub rows: Vec<Row>,
    pub overhead: Vec<Overhead>,
    pub memory: Vec<ProcMem>,
    pub load: Vec<LoadReport>,
    /// The untimed ramp before the load tests, if any (not judged).
    pub load_ramp: Option<LoadReport>,
    pub notes: Vec<String>,
}

/// Marks where [`splice`] puts the report in a markdown file.
pub const BEGIN: &str = "<!-- osa-bench:begin -->";
/// End of the report in a markdown file.
pub const END: &str = "<!-- osa-bench:end -->";

/// `doc` with the text between [`BEGIN`] and [`END`] replaced by `md`, so
/// the documented figures are always the tool's own output.
pub fn splice(doc: &str, md: &str) -> Result<String, String> {
    let begin = doc.find(BEGIN).ok_or_else(|| format!("no {BEGIN} marker"))?;
    let end = doc[begin..].find(END).ok_or_else(|| format!("no {END} marker after {BEGIN}"))?;
    let end = begin + end;
    Ok(format!(
        "{}{BEGIN}\n<!-- generated by osa-bench; do not edit -->\n\n{}\n{}",
        &doc[..begin],
        md.trim_end(),
        &doc[end..]
    ))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "unknown (no model name in /proc/cpuinfo)".into());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|k| k.parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let gpu = if tch::Cuda::is_available() {
            let name = sh("nvidia-smi", &["--query-gpu=name", "--format=csv,noheader"]);
            format!("CUDA ({})", if name.is_empty() { "nvidia-smi absent" } else { &name })
        } else {
            "none (libtorch sees no CUDA device)".into()
        };
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            gpu,
            load_average_start: loadavg(),
            load_average_end: String::new(),
            kernel: sh("uname", &["-sr"]),
        }
    }
}

impl Report {
    /// An empty report for `options`.
    pub fn new(options: &BenchOptions, command: String, audio_seconds: f64) -> Self {
        let mut commit = sh("git", &["rev-parse", "--short=12", "HEAD"]);
        if commit.is_empty() {
            commit = "unknown (not a git checkout)".into();
        } else if !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" (with uncommitted changes)");
        }
        Self {
            command,
            git_commit: commit,
            started_utc: sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            machine: Machine::detect(),
            preset: "tiny (seeded random weights)".into(),
            audio_seconds,
            pace: options.pace,
            threads: options.threads,
            cluster_launch: match &options.cluster {
                None => "not run".into(),
                Some(crate::Launch::InProcess) => {
                    "in-process (osa-cluster; memory is this one process's)".into()
                }
                Some(crate::Launch::Processes { .. }) => {
                    "processes (redis-server and the four service binaries)".into()
                }
            },
            rows: Vec::new(),
            overhead: Vec::new(),
            memory: Vec::new(),
            load: Vec::new(),
            load_ramp: None,
            notes: Vec::new(),
        }
    }

    /// Computes the overhead rows and the end load average.
    pub fn finish(&mut self) {
        self.machine.load_average_end = loadavg();
        self.overhead.clear();
        for c in self.rows.iter().filter(|r| r.mode == "cluster") {
            let Some(e) =
                self.rows.iter().find(|r| r.mode == "embedded" && r.workload == c.workload)
            else {
                continue;
            };
            let mut stage_diff_ms = BTreeMap::new();
            for (name, cv, ev) in [
                ("audio", c.audio_ms, e.audio_ms),
                ("unet", c.unet_ms, e.unet_ms),
                ("vae", c.vae_ms, e.vae_ms),
                ("video", c.video_ms, e.video_ms),
                ("redis", c.redis_ms, e.redis_ms),
                ("queue", c.queue_ms, e.queue_ms),
                ("other", c.other_ms, e.other_ms),
            ] {
                stage_diff_ms.insert(name.to_owned(), cv - ev);
            }
            if let (Some(t), Some(open), Some(gw), Some(et)) =
                (c.ttfs_p50_ms, c.open_p50_ms, c.gateway_ttfs_ms, e.ttfs_p50_ms)
            {
                self.notes.push(format!(
                    "cluster {}: TTFS p50 {t:.0} ms = opening the session {open:.0} ms (p50) + \
                     first audio at the gateway to its first segment {gw:.0} ms (mean) + {:.0} ms \
                     of client-side gRPC and audio upload; the embedded mode's TTFS p50 is \
                     {et:.0} ms.",
                    c.workload,
                    t - open - gw
                ));
            }
            self.overhead.push(Overhead {
                workload: c.workload.clone(),
                rtf_ratio: if e.rtf > 0.0 { c.rtf / e.rtf } else { f64::NAN },
                ttfs_p50_diff_ms: c.ttfs_p50_ms.zip(e.ttfs_p50_ms).map(|(c, e)| c - e),
                stage_diff_ms,
            });
        }
    }

    /// The columns of the table, in order.
    pub const COLUMNS: [&'static str; 19] = [
        "mode",
        "workload",
        "clips",
        "TTFS p50 ms",
        "TTFS p95 ms",
        "open p50 ms",
        "gateway TTFS ms",
        "RTF",
        "fps",
        "audio enc ms/clip",
        "UNet ms/clip",
        "VAE dec ms/clip",
        "video enc ms/clip",
        "Redis ms/clip",
        "queues ms/clip",
        "gRPC+other ms/clip",
        "errors",
        "wall s",
        "peak MiB",
    ];

    /// The peak memory column: the bench process for the embedded rows;
    /// every cluster process (in [`Report::memory`]'s order) for the
    /// cluster's.
    fn peak_for(&self, mode: &str) -> String {
        let embedded = |m: &&ProcMem| m.name.starts_with("bench (embedded");
        let procs: Vec<&ProcMem> = if mode == "embedded" {
            self.memory.iter().filter(embedded).collect()
        } else {
            self.memory.iter().filter(|m| !embedded(m)).collect()
        };
        if procs.is_empty() {
            return "-".into();
        }
        procs.iter().map(|m| format!("{:.0}", m.peak_mib)).collect::<Vec<_>>().join(" / ")
    }

    /// The table alone (markdown).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| {} |", Self::COLUMNS.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(Self::COLUMNS.len()));
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        for r in &self.rows {
            let errors = if r.errors.is_empty() {
                "0".to_owned()
            } else {
                r.errors.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |",
                r.mode,
                r.workload,
                r.clips,
                opt(r.ttfs_p50_ms),
                opt(r.ttfs_p95_ms),
                opt(r.open_p50_ms),
                opt(r.gateway_ttfs_ms),
                r.rtf,
                r.fps,
                r.audio_ms,
                r.unet_ms,
                r.vae_ms,
                r.video_ms,
                r.redis_ms,
                r.queue_ms,
                r.other_ms,
                errors,
                r.wall_s,
                self.peak_for(&r.mode),
            );
        }
        s
    }

    /// The whole report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "Run {} at commit {}. Machine: {}, {} cores, {:.1} GiB RAM, GPU: {}, {}; load \
             average {} at the start, {} at the end. Preset {}, {:.2} s of speech per session \
             or job, audio sent {}, libtorch threads per model process {}. Cluster: {}.\n",
            self.started_utc,
            self.git_commit,
            m.cpu,
            m.cores,
            m.memory_gib,
            m.gpu,
            m.kernel,
            m.load_average_start,
            m.load_average_end,
            self.preset,
            self.audio_seconds,
            match self.pace {
                Pace::Fast => "as fast as the system takes it",
                Pace::Realtime => "in real time",
            },
            if self.threads == 0 { "default".to_owned() } else { self.threads.to_string() },
            self.cluster_launch,
        );
        s.push_str(&self.table());
        if !self.memory.is_empty() {
            let _ = writeln!(s, "\nPeak memory per process (VmHWM):\n");
            let _ = writeln!(s, "| process | pid | peak MiB |\n|---|---|---|");
            for p in &self.memory {
                let _ = writeln!(s, "| {} | {} | {:.0} |", p.name, p.pid, p.peak_mib);
            }
        }
        if !self.overhead.is_empty() {
            let _ = writeln!(
                s,
                "\nCluster over embedded (target: RTF ratio < 1.10, TTFS difference < 20 ms; \
                 per-clip stage differences in ms, cluster minus embedded):\n"
            );
            let names: Vec<String> = self.overhead[0].stage_diff_ms.keys().cloned().collect();
            let _ = writeln!(
                s,
                "| workload | RTF ratio | TTFS p50 diff ms | {} |",
                names.iter().map(|n| format!("{n} ms")).collect::<Vec<_>>().join(" | ")
            );
            let _ = writeln!(s, "|{}", "---|".repeat(3 + names.len()));
            for o in &self.overhead {
                let _ = writeln!(
                    s,
                    "| {} | {:.2} | {} | {} |",
                    o.workload,
                    o.rtf_ratio,
                    o.ttfs_p50_diff_ms.map_or("-".into(), |d| format!("{d:+.0}")),
                    o.stage_diff_ms
                        .values()
                        .map(|v| format!("{v:+.1}"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        if let Some(r) = &self.load_ramp {
            let _ = writeln!(
                s,
                "\nLoad ramp (not judged): {} concurrent sessions for {:.0} s before the load \
                 tests, so that they measure the processes after their allocators have taken \
                 the working set of sustained load. Completed sessions {}, errors {}. VmRSS \
                 start to end MiB: {}.",
                r.sessions,
                r.duration_s,
                r.completed,
                r.errors.values().sum::<u64>(),
                r.memory
                    .iter()
                    .map(|t| format!("{} {:.0} to {:.0}", t.name, t.start_mib, t.end_mib))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for l in &self.load {
            let errors = if l.errors.is_empty() {
                "none".to_owned()
            } else {
                l.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
            };
            let _ = writeln!(
                s,
                "\nLoad test: {} concurrent sessions (audio in real time) for {:.0} s against an \
                 admission limit of {} live sessions per key; {:.1} s until the last ended. \
                 Completed sessions {}, clips {}, TTFS p50/p95 {}/{} ms. Errors by code: {}.\n",
                l.sessions,
                l.duration_s,
                l.capacity,
                l.wall_s,
                l.completed,
                l.clips,
                l.ttfs_p50_ms.map_or("-".into(), |v| format!("{v:.0}")),
                l.ttfs_p95_ms.map_or("-".into(), |v| format!("{v:.0}")),
                errors
            );
            let _ = writeln!(
                s,
                "| process | pid | VmRSS start MiB | 2nd quarter floor MiB | last quarter floor \
                 MiB | growth MiB | end MiB | max MiB | samples |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
            for t in &l.memory {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.0} | {:.0} | {:+.0} | {:.0} | {:.0} | {} |",
                    t.name,
                    t.pid,
                    t.start_mib,
                    t.ramped_mib,
                    t.last_quarter_mib,
                    t.growth_mib(),
                    t.end_mib,
                    t.max_mib,
                    t.samples
                );
            }
            let _ = writeln!(s);
            for (what, held) in l.verdict() {
                let _ = writeln!(s, "- {}: {what}", if held { "held" } else { "NOT held" });
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s);
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// The report as pretty JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sessions: usize, errors: &[(&str, u64)], growth: f64) -> LoadReport {
        LoadReport {
            sessions,
            capacity: 16,
            duration_s: 10.0,
            wall_s: 11.0,
            completed: 3,
            clips: 15,
            errors: errors.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            ttfs_p50_ms: None,
            ttfs_p95_ms: None,
            // A ramp from 300 to 400 MiB in the first quarter, then
            // `growth` spread over the rest.
            memory: vec![RssTrace::new(
                "osa-decoder".into(),
                1,
                &(0..40)
                    .map(|i| match i {
                        0..10 => 300.0 + 10.0 * f64::from(i),
                        10..20 => 400.0,
                        20..30 => 400.0 + growth / 2.0,
                        _ => 400.0 + growth,
                    })
                    .collect::<Vec<_>>(),
            )],
        }
    }

    #[test]
    fn load_verdicts_follow_the_issue() {
        let held = |l: &LoadReport| l.verdict().iter().map(|(_, h)| *h).collect::<Vec<_>>();
        assert_eq!(held(&load(12, &[], 3.0)), [true, true]);
        assert_eq!(held(&load(12, &[("UNAVAILABLE", 1)], 3.0)), [false, true]);
        assert_eq!(held(&load(24, &[("RESOURCE_EXHAUSTED", 9)], 3.0)), [true, true]);
        assert_eq!(
            held(&load(24, &[("RESOURCE_EXHAUSTED", 9), ("TIMEOUT", 1)], 3.0)),
            [false, true]
        );
        // Above capacity with nothing refused: the limit did not act.
        assert_eq!(held(&load(24, &[], 3.0)), [false, true]);
        // The ramp (300 -> 400) does not count; after it 400 MiB may grow
        // by 20 (5%), not by 21.
        assert_eq!(held(&load(12, &[], 20.0)), [true, true]);
        assert_eq!(held(&load(12, &[], 21.0)), [true, false]);
        assert!(load(12, &[], 21.0).verdict()[1].0.contains("osa-decoder +21 MiB"));
        let t = &load(12, &[], 0.0).memory[0];
        assert_eq!(
            (t.start_mib, t.ramped_mib, t.last_quarter_mib, t.max_mib),
            (300.0, 400.0, 400.0, 400.0)
        );
        // Swings above a flat floor (batches in flight) are not growth.
        let swings: Vec<f64> =
            (0..40).map(|i| if i % 3 == 0 { 500.0 + f64::from(i) * 5.0 } else { 400.0 }).collect();
        let t = RssTrace::new("d".into(), 1, &swings);
        assert!(t.flat() && t.growth_mib() == 0.0, "{t:?}");
        // A rising floor is.
        let rising: Vec<f64> = (0..40).map(|i| 400.0 + f64::from(i) * 2.0).collect();
        let t = RssTrace::new("d".into(), 1, &rising);
        assert!(!t.flat() && t.growth_mib() == 40.0, "{t:?}");
        // Too few samples for quarters: first and last.
        let short = RssTrace::new("x".into(), 1, &[10.0, 12.0, 40.0]);
        assert_eq!((short.ramped_mib, short.last_quarter_mib), (10.0, 40.0));
    }

    #[test]
    fn the_report_replaces_only_the_marked_section() {
        let doc = format!("# T\nkeep\n{BEGIN}\nold\n{END}\nafter\n");
        let out = splice(&doc, "| a |\n").unwrap();
        assert!(out.starts_with("# T\nkeep\n"), "{out}");
        assert!(out.contains("| a |") && !out.contains("old"), "{out}");
        assert!(out.ends_with(&format!("{END}\nafter\n")), "{out}");
        // Idempotent: splicing again gives the same file.
        assert_eq!(splice(&out, "| a |\n").unwrap(), out);
        assert!(splice("no markers", "x").is_err());
    }
}
