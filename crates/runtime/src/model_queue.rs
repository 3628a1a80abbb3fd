//! The bounded queue in front of a model's owner thread.
//!
//! tch tensors are `Send` but not `Sync`, so each model lives on one OS
//! thread and async handlers talk to it through this queue: `try_send`
//! never blocks a tokio worker (a full queue is an immediate
//! [`QueueError::Full`], which services answer with RESOURCE_EXHAUSTED), the
//! thread blocks on [`Inbox::recv`] and gathers batches with
//! [`Inbox::recv_timeout`], and the queue depth is published as a gauge.
//! Each client stream holds a [`StreamSlot`] while it is open, so the thread
//! knows whether waiting for a fuller batch can pay off at all
//! ([`Inbox::batch_wait`]): with one open stream, or once every open stream
//! has something in the batch, nobody else is coming and the batch runs at
//! once instead of idling for `max_batch_wait`.
//! [`ModelThread`] adds the thread itself and its readiness (a service is
//! NOT_SERVING until its model has loaded and warmed up).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

/// Why a command was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the model queue is full ({0} waiting)")]
    Full(usize),
    #[error("the model thread has stopped")]
    Closed,
}

/// The async side: cheap to clone.
#[derive(Debug)]
pub struct ModelQueue<C> {
    tx: SyncSender<C>,
    depth: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
    capacity: usize,
    gauge: &'static str,
}

impl<C> Clone for ModelQueue<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            depth: self.depth.clone(),
            streams: self.streams.clone(),
            capacity: self.capacity,
            gauge: self.gauge,
        }
    }
}

/// The model thread's side.
#[derive(Debug)]
pub struct Inbox<C> {
    rx: Receiver<C>,
    depth: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
    gauge: &'static str,
}

/// A client stream open on a model: counted by [`Inbox::open_streams`]
/// until dropped.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A queue of `capacity` commands whose depth is published as the gauge
/// named `gauge`.
pub fn model_queue<C>(capacity: usize, gauge: &'static str) -> (ModelQueue<C>, Inbox<C>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    let streams = Arc::new(AtomicUsize::new(0));
    (
        ModelQueue { tx, depth: depth.clone(), streams: streams.clone(), capacity, gauge },
        Inbox { rx, depth, streams, gauge },
    )
}

impl<C> ModelQueue<C> {
    /// Queues `cmd` without waiting.
    pub fn try_send(&self, cmd: C) -> Result<(), QueueError> {
        let n = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!(self.gauge).set(n as f64);
        self.tx.try_send(cmd).map_err(|e| {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => QueueError::Full(self.capacity),
                TrySendError::Disconnected(_) => QueueError::Closed,
            }
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Counts a client stream as open until the slot is dropped.
    pub fn open_stream(&self) -> StreamSlot {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamSlot(self.streams.clone())
    }
}

impl<C> Inbox<C> {
    fn took(&self, cmd: C) -> C {
        let n = self.depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        metrics::gauge!(self.gauge).set(n as f64);
        cmd
    }

    /// The next command; `None` once every sender is gone.
    pub fn recv(&self) -> Option<C> {
        self.rx.recv().ok().map(|c| self.took(c))
    }

    /// The next command if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<C> {
        match self.rx.recv_timeout(timeout) {
            Ok(c) => Some(self.took(c)),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Client streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// How long a batch whose commands come from `streams_in_batch`
    /// streams may still wait for more, until `deadline`: zero when no
    /// other stream is open (what is already queued is still taken, by
    /// `recv_timeout(ZERO)`), so a lone stream never idles for a batch
    /// that cannot fill.
    pub fn batch_wait(&self, streams_in_batch: usize, deadline: Instant) -> Duration {
        if streams_in_batch >= self.open_streams() {
            Duration::ZERO
        } else {
            deadline.saturating_duration_since(Instant::now())
        }
    }
}

/// Sets a model thread's readiness once: its geometry, or why it failed.
#[derive(Debug)]
pub struct Ready<G>(tokio::sync::watch::Sender<Option<Result<G, String>>>);

impl<G> Ready<G> {
    pub fn set(self, result: Result<G, String>) {
        // Nobody waiting (the service is gone) is fine.
        let _ = self.0.send(Some(result));
    }
}

/// Handle to a model's owner thread: its queue and its readiness. Cheap to
/// clone.
#[derive(Debug)]
pub struct ModelThread<C, G> {
    queue: ModelQueue<C>,
    ready: tokio::sync::watch::Receiver<Option<Result<G, String>>>,
}

impl<C, G> Clone for ModelThread<C, G> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone(), ready: self.ready.clone() }
    }
}

impl<C: Send + 'static, G: Clone + Send + Sync + 'static> ModelThread<C, G> {
    /// Spawns `body` on an OS thread named `name`, fed by a queue of
    /// `capacity` commands (depth published as `gauge`); `body` reports
    /// through its [`Ready`] once the model is loaded (or failed to).
    pub fn spawn(
        name: &str,
        capacity: usize,
        gauge: &'static str,
        body: impl FnOnce(Inbox<C>, Ready<G>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (queue, inbox) = model_queue(capacity, gauge);
        let (tx, ready) = tokio::sync::watch::channel(None);
        std::thread::Builder::new().name(name.to_owned()).spawn(move || body(inbox, Ready(tx)))?;
        Ok(Self { queue, ready })
    }

    /// Queues `cmd` without waiting.
    pub fn try_send(&self, cmd: C) -> Result<(), QueueError> {
        self.queue.try_send(cmd)
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Counts a client stream as open until the slot is dropped (see
    /// [`Inbox::batch_wait`]).
    pub fn open_stream(&self) -> StreamSlot {
        self.queue.open_stream()
    }

    /// Waits until the model is loaded and warm: its geometry, or why not.
    pub async fn ready(&self) -> Result<G, String> {
        let mut rx = self.ready.clone();
        let state =
            rx.wait_for(Option::is_some).await.map_err(|_| "model thread died".to_owned())?;
        state.clone().unwrap_or_else(|| Err("not ready".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_is_refused_at_once_and_depth_follows() {
        let (q, inbox) = model_queue::<u32>(2, "test_queue_depth");
        q.try_send(1).unwrap();
        q.clone().try_send(2).unwrap();
        assert_eq!(q.try_send(3), Err(QueueError::Full(2)));
        assert_eq!(q.depth.load(Ordering::Relaxed), 2);
        assert_eq!(inbox.recv(), Some(1));
        assert_eq!(inbox.recv_timeout(Duration::from_millis(10)), Some(2));
        assert_eq!(inbox.recv_timeout(Duration::from_millis(10)), None);
        assert_eq!(q.depth.load(Ordering::Relaxed), 0);
        drop(inbox);
        assert_eq!(q.try_send(4), Err(QueueError::Closed));
    }

    #[test]
    fn batches_wait_only_for_streams_that_are_open_and_not_in_them() {
        let (q, inbox) = model_queue::<u32>(4, "test_batch_wait");
        let deadline = Instant::now() + Duration::from_secs(5);
        // No stream open, or the only one already in the batch: no wait.
        assert_eq!(inbox.batch_wait(1, deadline), Duration::ZERO);
        let a = q.open_stream();
        assert_eq!(inbox.open_streams(), 1);
        assert_eq!(inbox.batch_wait(1, deadline), Duration::ZERO);
        // A second stream might still send: wait up to the deadline.
        let b = q.clone().open_stream();
        assert!(inbox.batch_wait(1, deadline) > Duration::from_secs(4));
        assert_eq!(inbox.batch_wait(2, deadline), Duration::ZERO);
        assert_eq!(inbox.batch_wait(1, Instant::now()), Duration::ZERO);
        drop(b);
        assert_eq!(inbox.open_streams(), 1);
        assert_eq!(inbox.batch_wait(1, deadline), Duration::ZERO);
        drop(a);
        assert_eq!(inbox.open_streams(), 0);
    }

    #[tokio::test]
    async fn a_model_thread_reports_ready_then_serves() {
        let t = ModelThread::<u32, &'static str>::spawn(
            "test-model",
            4,
            "test_depth",
            |inbox, ready| {
                ready.set(Ok("warm"));
                while let Some(n) = inbox.recv() {
                    if n == 0 {
                        break;
                    }
                }
            },
        )
        .unwrap();
        assert_eq!(t.ready().await, Ok("warm"));
        t.try_send(1).unwrap();
        let failed = ModelThread::<u32, ()>::spawn("test-fail", 1, "test_depth2", |_, ready| {
            ready.set(Err("no weights".into()));
        })
        .unwrap();
        assert_eq!(failed.ready().await, Err("no weights".into()));
    }
}
