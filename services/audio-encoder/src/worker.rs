//! The model thread (TEI's BackendThread pattern): the [`WindowModel`] lives
//! on one OS thread fed by a bounded queue (the shared
//! [`osa_runtime::model_queue::ModelThread`], as the generator's and the
//! decoder's models); each request carries its windows, its tracing span
//! and a oneshot reply. Requests from several
//! streams that are waiting together (up to `max_batch` windows, waiting at
//! most `max_batch_wait` for more) run in one forward pass. A request whose
//! caller has gone (the reply receiver was dropped) is skipped.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use osa_runtime::{
    ServiceError,
    model_queue::{Inbox, ModelThread, QueueError, Ready, StreamSlot},
};
use tokio::sync::oneshot;

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

/// One caller's windows, queued for the model thread.
#[derive(Debug)]
struct Request {
    jobs: Vec<WindowJob>,
    reply: Reply,
    span: tracing::Span,
    queued: Instant,
}

/// Handle to the model thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The shared owner-thread plumbing (queue, depth gauge, readiness);
    /// readiness carries no geometry here, only loaded or why not.
    thread: ModelThread<Request, ()>,
    stats: Arc<Stats>,
}

impl Worker {
    /// Starts the thread, which loads the model and then serves requests.
    /// Requests sent before the model is ready wait in the queue.
    pub fn spawn(model: ModelConfig, batch: BatchConfig) -> std::io::Result<Self> {
        let stats = Arc::new(Stats::default());
        let thread = ModelThread::spawn(
            "audio-encoder-model",
            batch.queue_capacity,
            "osa_audio_encoder_queue_size",
            {
                let stats = stats.clone();
                move |inbox, ready| thread_main(&model, batch, &inbox, ready, &stats)
            },
        )?;
        Ok(Self { thread, stats })
    }

    /// Counts an encode call as open while the slot lives: the thread waits
    /// for a fuller batch only while other calls are open.
    pub fn open_stream(&self) -> StreamSlot {
        self.thread.open_stream()
    }

    /// Counters of the thread.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits until the model is loaded (or failed to).
    pub async fn loaded(&self) -> Result<(), String> {
        self.thread.ready().await
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
        self.thread.try_send(req).map_err(|e| match e {
            QueueError::Full(n) => ServiceError::ResourceExhausted {
                what: format!(
                    "the audio encoder queue is full ({n} requests waiting, \
                     audio_encoder.queue_capacity)"
                ),
                retry_after: Some(Duration::from_millis(100)),
            },
            QueueError::Closed => {
                ServiceError::NotServing("the audio encoder thread has stopped".into())
            }
        })?;
        match rx.await {
            Ok(Ok(states)) => Ok(states),
            Ok(Err(e)) => Err(ServiceError::internal(format!("audio encoder: {e}"))),
            Err(_) => Err(ServiceError::internal("the audio encoder thread dropped a request")),
        }
    }
}

/// The thread: loads the model, reports readiness, then serves until every
/// sender is gone. A model that failed to load keeps the thread answering
/// each request with the reason (the service is NOT_SERVING meanwhile).
fn thread_main(
    config: &ModelConfig,
    batch: BatchConfig,
    inbox: &Inbox<Request>,
    ready: Ready<()>,
    stats: &Stats,
) {
    let model = WindowModel::load(config).map_err(|e| e.to_string());
    match &model {
        Ok(_) => ready.set(Ok(())),
        Err(e) => {
            tracing::error!(error = %e, "audio encoder failed to load");
            ready.set(Err(e.clone()));
        }
    }
    while let Some(first) = inbox.recv() {
        let mut requests = vec![first];
        let mut windows = requests[0].jobs.len();
        let deadline = Instant::now() + batch.max_batch_wait;
        while windows < batch.max_batch {
            // Each stream has one request in flight at a time.
            match inbox.recv_timeout(inbox.batch_wait(requests.len(), deadline)) {
                Some(r) => {
                    windows += r.jobs.len();
                    requests.push(r);
                }
                None => break,
            }
        }
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
        match &model {
            Ok(m) => run_batch(m, live, batch.max_batch, stats),
            Err(e) => {
                for r in live {
                    let _ = r.reply.send(Err(format!("the model failed to load: {e}")));
                }
            }
        }
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
