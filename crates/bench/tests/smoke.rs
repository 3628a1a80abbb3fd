//! The tool's library entry end to end on the tiny preset: both modes (the
//! cluster in-process), one live session and one render job of 1.5 s of the
//! sample speech, two rounds of the live workload; every column is there
//! and the values are sane. Then two short load tests against an admission
//! limit of one session, after a 1 s ramp: one at the limit (no errors) and
//! one above it (RESOURCE_EXHAUSTED only).

use std::{path::PathBuf, time::Duration};

use osa_bench::{BenchOptions, Launch, LoadOptions, Report};

fn sample(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::var_os("OSA_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/samples"));
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: run scripts/setup.sh", p.display());
    p
}

#[test]
fn one_session_and_one_job_in_both_modes_fill_every_column() {
    let mut o = BenchOptions::new(sample("portrait.png"), sample("speech.wav"));
    o.cluster = Some(Launch::InProcess);
    o.sessions = vec![1];
    o.batch_jobs = 1;
    o.seconds = 1.5;
    o.rounds = 2;
    o.capacity = Some(1);
    o.load =
        [1, 2].map(|sessions| LoadOptions { sessions, duration: Duration::from_secs(1) }).to_vec();
    o.load_ramp = Duration::from_secs(1);
    let report = osa_bench::run(&o, "smoke test".into()).expect("the bench runs");

    let table = report.table();
    let header = table.lines().next().expect("a header");
    for column in Report::COLUMNS {
        assert!(header.contains(column), "column {column:?} missing from {header}");
    }
    // Embedded and cluster, live x1 and batch x1.
    assert_eq!(report.rows.len(), 4, "{table}");
    for r in &report.rows {
        assert!(r.errors.is_empty(), "{} {}: errors {:?}", r.mode, r.workload, r.errors);
        // 1.5 s at 25 fps: 38 frames in 4 clips of 12 (per round).
        let rounds = if r.workload.starts_with("live") { 2 } else { 1 };
        assert_eq!(r.clips, 4 * rounds, "{} {}", r.mode, r.workload);
        assert!(r.rtf > 0.0 && r.rtf.is_finite(), "{} {}: rtf {}", r.mode, r.workload, r.rtf);
        assert!(r.fps > 0.0, "{} {}: fps {}", r.mode, r.workload, r.fps);
        assert!(r.unet_ms > 0.0 && r.vae_ms > 0.0 && r.audio_ms > 0.0, "{r:?}");
        if r.workload.starts_with("live") {
            let (p50, p95) = (r.ttfs_p50_ms.expect("ttfs"), r.ttfs_p95_ms.expect("ttfs"));
            assert!(p50 > 0.0 && p50 <= p95 && p95 < r.wall_s * 1e3, "{r:?}");
        }
    }
    let cluster_live =
        report.rows.iter().find(|r| r.mode == "cluster" && r.workload == "live x1").unwrap();
    assert!(
        cluster_live.redis_ms > 0.0,
        "the generator's context store was timed: {cluster_live:?}"
    );
    assert_eq!(report.overhead.len(), 2, "an overhead row per workload");
    assert!(report.overhead.iter().all(|o| o.rtf_ratio > 0.0));
    assert!(!report.memory.is_empty() && report.memory.iter().all(|m| m.peak_mib > 10.0));
    assert_eq!(report.load.len(), 2, "{:?}", report.load);
    let ramp = report.load_ramp.as_ref().expect("a ramp before the load tests");
    assert_eq!(ramp.sessions, 1);
    assert!(ramp.completed >= 1, "{ramp:?}");
    for l in &report.load {
        // Memory flatness is not asserted here: in-process, every stage's
        // first calls land in this one process during a 1 s test.
        let (what, held) = &l.verdict()[0];
        assert!(held, "load test of {} sessions: {what}: {:?}", l.sessions, l.errors);
        assert!(l.completed >= 1, "{l:?}");
    }
    let md = report.markdown();
    assert!(md.contains("smoke test") && md.contains("RTF ratio"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    assert_eq!(json["rows"].as_array().map(Vec::len), Some(4));
}
