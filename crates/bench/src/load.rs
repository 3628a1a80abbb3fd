//! The bounded load test: `sessions` workers each open live sessions one
//! after another (audio in real time) until `duration` has passed; every
//! error is counted by gRPC code, a session without an answer in time is a
//! `TIMEOUT`, and the resident memory of every process is sampled
//! throughout. Above the gateway's admission limit the extra sessions must
//! be refused with RESOURCE_EXHAUSTED at once, not time out.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use osa_client::Client;

use crate::{
    LoadOptions, Pace,
    cluster::{error_name, session},
    procs::status_mib,
    quantile,
    report::{LoadReport, RssTrace},
};

/// How often memory is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
struct Tally {
    completed: u64,
    clips: u64,
    errors: BTreeMap<String, u64>,
    ttfs_ms: Vec<f64>,
}

/// Runs the load test against `client`'s gateway.
pub async fn run(
    load: &LoadOptions,
    capacity: u32,
    client: &Client,
    avatar: &str,
    pcm: Arc<Vec<i16>>,
    fps: u32,
    pids: &[(String, u32)],
) -> LoadReport {
    let media = Duration::from_secs_f64(pcm.len() as f64 / 16_000.0);
    // A session in real time lasts its media plus processing; one that has
    // not ended after four times its media and 30 s is counted as timed out.
    let limit = media * 4 + Duration::from_secs(30);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let stop_at = start + load.duration;

    let traces: Arc<Mutex<Vec<Vec<f64>>>> = Arc::new(Mutex::new(vec![Vec::new(); pids.len()]));
    let done = Arc::new(AtomicBool::new(false));
    let sample = {
        let (pids, traces) = (pids.to_vec(), traces.clone());
        move || {
            let mut traces = traces.lock().expect("traces lock");
            for (i, (_, pid)) in pids.iter().enumerate() {
                if let Some(mib) = status_mib(*pid, "VmRSS") {
                    traces[i].push(mib);
                }
            }
        }
    };
    let sampler = {
        let (sample, done) = (sample.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                sample();
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    let workers = (0..load.sessions).map(|_| {
        let (client, avatar, pcm, tally) =
            (client.clone(), avatar.to_owned(), pcm.clone(), tally.clone());
        async move {
            while Instant::now() < stop_at {
                let run = tokio::time::timeout(
                    limit,
                    session(&client, &avatar, pcm.clone(), fps, Pace::Realtime),
                )
                .await;
                let backoff = match run {
                    Ok(Ok(r)) => {
                        let mut t = tally.lock().expect("tally lock");
                        t.completed += 1;
                        t.clips += r.clips;
                        t.ttfs_ms.extend(r.ttfs.map(|d| d.as_secs_f64() * 1e3));
                        None
                    }
                    Ok(Err(e)) => {
                        let mut t = tally.lock().expect("tally lock");
                        *t.errors.entry(error_name(&e)).or_insert(0) += 1;
                        // Back off as told (or 500 ms), but not past the end.
                        Some(e.retry_after().unwrap_or(Duration::from_millis(500)))
                    }
                    Err(_) => {
                        let mut t = tally.lock().expect("tally lock");
                        *t.errors.entry("TIMEOUT".into()).or_insert(0) += 1;
                        None
                    }
                };
                if let Some(wait) = backoff {
                    let until = (Instant::now() + wait).min(stop_at);
                    tokio::time::sleep_until(until.into()).await;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let wall = start.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    // One last sample after every session has ended.
    tokio::time::sleep(SAMPLE_EVERY).await;
    sample();
    let memory = pids
        .iter()
        .zip(traces.lock().expect("traces lock").iter())
        .map(|((name, pid), t)| RssTrace::new(name.clone(), *pid, t))
        .collect();
    let t = std::mem::take(&mut *tally.lock().expect("tally lock"));
    LoadReport {
        sessions: load.sessions,
        capacity,
        duration_s: load.duration.as_secs_f64(),
        wall_s: wall,
        completed: t.completed,
        clips: t.clips,
        errors: t.errors,
        ttfs_p50_ms: quantile(&t.ttfs_ms, 0.5),
        ttfs_p95_ms: quantile(&t.ttfs_ms, 0.95),
        memory,
    }
}
