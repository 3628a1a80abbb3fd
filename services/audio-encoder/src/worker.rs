//! The model thread (TEI's BackendThread pattern): the [`WindowModel`] lives
//! on one OS thread fed by a bounded channel; each request carries its
//! windows, its tracing span and a oneshot reply. Requests from several
//! streams that are waiting together (up to `max_batch` windows, waiting at
//! most `max_batch_wait` for more) run in one forward pass. A request whose
//! caller has gone (the reply receiver was dropped) is skipped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use osa_runtime::ServiceError;
use tokio::sync::{oneshot, watch};

use crate::{
    model::{ModelConfig, WindowModel},
    recipe::WindowJob,
};

/// How the thread batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_batch: usize,
    pub max_batch_wait: Duration,
    pub queue_capacity: usize,
}

/// Counters for tests and logs (Prometheus gets the same through `metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Windows run through the encoder.
    pub windows_encoded: AtomicU64,
    /// Windows skipped because their caller had gone.
    pub windows_cancelled: AtomicU64,
    /// Forward passes.
    pub forwards: AtomicU64,
    /// Largest number of requests merged into one forward pass.
    pub max_requests_per_forward: AtomicU64,
}

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, String>>;

struct Request {
    jobs: Vec<WindowJob>,
    reply: Reply,
    span: tracing::Span,
    queued: Instant,
}

/// The model's state as the warm-up sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Load {
    Loading,
    Ready,
    Failed(String),
}

/// Handle to the model thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    tx: SyncSender<Request>,
    depth: Arc<AtomicUsize>,
    capacity: usize,
    stats: Arc<Stats>,
    load: watch::Receiver<Load>,
}

impl Worker {
    /// Starts the thread, which loads the model and then serves requests.
    /// Requests sent before the model is ready wait in the queue.
    pub fn spawn(model: ModelConfig, batch: BatchConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Request>(batch.queue_capacity);
        let depth = Arc::new(AtomicUsize::new(0));
        let stats = Arc::new(Stats::default());
        let (load_tx, load) = watch::channel(Load::Loading);
        {
            let depth = depth.clone();
            let stats = stats.clone();
            std::thread::Builder::new().name("audio-encoder-model".into()).spawn(move || {
                let model = match WindowModel::load(&model) {
                    Ok(m) => {
                        let _ = load_tx.send(Load::Ready);
                        Ok(m)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audio encoder failed to load");
                        let _ = load_tx.send(Load::Failed(e.to_string()));
                        Err(e.to_string())
                    }
                };
                serve(&model, &rx, batch, &depth, &stats);
            })?;
        }
        Ok(Self { tx, depth, capacity: batch.queue_capacity, stats, load })
    }

    /// Counters of the thread.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits until the model is loaded (or failed to).
    pub async fn loaded(&self) -> Result<(), String> {
        let mut load = self.load.clone();
        let state = load
            .wait_for(|l| *l != Load::Loading)
            .await
            .map_err(|_| "the model thread stopped".to_owned())?
            .clone();
        match state {
            Load::Failed(e) => Err(e),
            _ => Ok(()),
        }
    }

    /// Runs `jobs` through the encoder; the core hidden states per job.
    /// A full queue is RESOURCE_EXHAUSTED. Dropping the future cancels the
    /// request (the thread skips it if it has not started).
    pub async fn encode(&self, jobs: Vec<WindowJob>) -> Result<Vec<Vec<f32>>, ServiceError> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, rx) = oneshot::channel();
        let req = Request { jobs, reply, span: tracing::Span::current(), queued: Instant::now() };
        self.depth.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(req) {
            Ok(()) => {
                metrics::gauge!("osa_audio_encoder_queue_size")
                    .set(self.depth.load(Ordering::SeqCst) as f64);
            }
            Err(e) => {
                self.depth.fetch_sub(1, Ordering::SeqCst);
                return Err(match e {
                    TrySendError::Full(_) => ServiceError::ResourceExhausted {
                        what: format!(
                            "the audio encoder queue is full ({} requests waiting, \
                             audio_encoder.queue_capacity)",
                            self.capacity
                        ),
                        retry_after: Some(Duration::from_millis(100)),
                    },
                    TrySendError::Disconnected(_) => {
                        ServiceError::NotServing("the audio encoder thread has stopped".into())
                    }
                });
            }
        }
        match rx.await {
            Ok(Ok(states)) => Ok(states),
            Ok(Err(e)) => Err(ServiceError::internal(format!("audio encoder: {e}"))),
            Err(_) => Err(ServiceError::internal("the audio encoder thread dropped a request")),
        }
    }
}

/// The thread's loop: until every sender is gone.
fn serve(
    model: &Result<WindowModel, String>,
    rx: &mpsc::Receiver<Request>,
    batch: BatchConfig,
    depth: &AtomicUsize,
    stats: &Stats,
) {
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        let mut windows = requests[0].jobs.len();
        let deadline = Instant::now() + batch.max_batch_wait;
        while windows < batch.max_batch {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(r) => {
                    windows += r.jobs.len();
                    requests.push(r);
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        let left = depth.fetch_sub(requests.len(), Ordering::SeqCst) - requests.len();
        metrics::gauge!("osa_audio_encoder_queue_size").set(left as f64);
        let (live, gone): (Vec<_>, Vec<_>) =
            requests.into_iter().partition(|r| !r.reply.is_closed());
        let cancelled: usize = gone.iter().map(|r| r.jobs.len()).sum();
        if cancelled > 0 {
            stats.windows_cancelled.fetch_add(cancelled as u64, Ordering::Relaxed);
            metrics::counter!("osa_audio_encoder_windows_cancelled_total")
                .increment(cancelled as u64);
        }
        if live.is_empty() {
            continue;
        }
        for r in &live {
            metrics::histogram!("osa_audio_encoder_queue_seconds")
                .record(r.queued.elapsed().as_secs_f64());
        }
        let model = match model {
            Ok(m) => m,
            Err(e) => {
                for r in live {
                    let _ = r.reply.send(Err(format!("the model failed to load: {e}")));
                }
                continue;
            }
        };
        run_batch(model, live, batch.max_batch, stats);
    }
}

/// Runs every window of `requests` in forward passes of at most `max_batch`
/// windows and answers each request.
fn run_batch(model: &WindowModel, requests: Vec<Request>, max_batch: usize, stats: &Stats) {
    let jobs: Vec<&WindowJob> = requests.iter().flat_map(|r| r.jobs.iter()).collect();
    let started = Instant::now();
    let mut results: Result<Vec<Vec<f32>>, String> = Ok(Vec::with_capacity(jobs.len()));
    for chunk in jobs.chunks(max_batch.max(1)) {
        let t = Instant::now();
        match model.encode(chunk) {
            Ok(states) => {
                if let Ok(all) = &mut results {
                    all.extend(states);
                }
                metrics::histogram!("osa_audio_encoder_encode_seconds")
                    .record(t.elapsed().as_secs_f64());
                metrics::histogram!("osa_audio_encoder_batch_windows").record(chunk.len() as f64);
                stats.forwards.fetch_add(1, Ordering::Relaxed);
                stats.windows_encoded.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                results = Err(e.to_string());
                break;
            }
        }
    }
    stats.max_requests_per_forward.fetch_max(requests.len() as u64, Ordering::Relaxed);
    tracing::debug!(
        requests = requests.len(),
        windows = jobs.len(),
        ms = started.elapsed().as_millis() as u64,
        "encoded"
    );
    drop(jobs);
    match results {
        Ok(all) => {
            let mut all = all.into_iter();
            for r in requests {
                tracing::debug!(parent: &r.span, windows = r.jobs.len(), "windows encoded");
                let mine: Vec<Vec<f32>> = all.by_ref().take(r.jobs.len()).collect();
                let _ = r.reply.send(Ok(mine));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "audio encoder forward failed");
            for r in requests {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}
