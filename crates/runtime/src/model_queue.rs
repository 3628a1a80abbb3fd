//! The bounded queue in front of a model's owner thread.
//!
//! tch tensors are `Send` but not `Sync`, so each model lives on one OS
//! thread and async handlers talk to it through this queue: `try_send`
//! never blocks a tokio worker (a full queue is an immediate
//! [`QueueError::Full`], which services answer with RESOURCE_EXHAUSTED), the
//! thread blocks on [`Inbox::recv`] and gathers batches with
//! [`Inbox::recv_timeout`], and the queue depth is published as a gauge.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::Duration,
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
    capacity: usize,
    gauge: &'static str,
}

impl<C> Clone for ModelQueue<C> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            depth: self.depth.clone(),
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
    gauge: &'static str,
}

/// A queue of `capacity` commands whose depth is published as the gauge
/// named `gauge`.
pub fn model_queue<C>(capacity: usize, gauge: &'static str) -> (ModelQueue<C>, Inbox<C>) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let depth = Arc::new(AtomicUsize::new(0));
    (ModelQueue { tx, depth: depth.clone(), capacity, gauge }, Inbox { rx, depth, gauge })
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
}
