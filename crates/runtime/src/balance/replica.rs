//! One replica of a stage: its connection, kept up by a background task and
//! watched at the TCP level, and its load (calls in flight until their
//! response bodies end) as the balancer sees it.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    transport::{Channel, Endpoint},
};
use tower::{Service, load::Load};

use super::{BoxError, BoxFuture, CallFuture};
use crate::settings::error_chain;

/// First pause after a failed connection attempt; doubles up to the max.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a connected replica that is NOT_SERVING (warming up) is asked
/// again.
const HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A replica's connection while it is up.
#[derive(Clone)]
pub(super) struct Live {
    channel: Channel,
    /// Cancelled when the connection is found broken.
    alive: CancellationToken,
}

/// One replica, shared by its balancer service, its connection task and the
/// registry.
pub(super) struct ReplicaState {
    /// Unique per replica instance (an address removed then added again is
    /// a new replica).
    pub(super) id: u64,
    pub(super) addr: SocketAddr,
    pub(super) stage: &'static str,
    pub(super) in_flight: AtomicUsize,
    pub(super) gauge: metrics::Gauge,
    /// Bumped on every change of `live`, with the connection when up.
    pub(super) live: Mutex<(u64, Option<Live>)>,
    /// Wakes the balancer when `live` changes.
    pub(super) waker: AtomicWaker,
    /// The connection task, aborted when the replica is removed.
    pub(super) task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ReplicaState {
    fn live(&self) -> MutexGuard<'_, (u64, Option<Live>)> {
        // A poisoned lock only means a panic elsewhere; the data is a plain
        // value that stays consistent.
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn is_connected(&self) -> bool {
        self.live().1.is_some()
    }

    pub(super) fn publish(&self, live: Option<Live>) {
        {
            let mut guard = self.live();
            guard.0 += 1;
            guard.1 = live;
        }
        self.waker.wake();
    }

    pub(super) fn stop(&self) {
        if let Some(task) =
            self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
        {
            task.abort();
        }
        self.publish(None);
    }
}

/// Keeps a call counted in its replica's load while alive.
struct InFlightGuard(Arc<ReplicaState>);

impl InFlightGuard {
    fn new(state: Arc<ReplicaState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.gauge.increment(1.0);
        Self(state)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.decrement(1.0);
    }
}

/// A response body that keeps its call in flight until the body ends,
/// fails or is dropped.
struct CountedBody {
    inner: Body,
    guard: Option<InFlightGuard>,
}

impl http_body::Body for CountedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The balancer's view of one replica: ready while connected, loaded by its
/// calls in flight.
pub(super) struct Replica {
    state: Arc<ReplicaState>,
    /// The `live` version `channel` was taken from.
    seen: u64,
    /// Kept between `poll_ready` and `call`: the channel's readiness (a
    /// buffer slot) belongs to this handle.
    current: Option<Live>,
}

impl Replica {
    pub(super) fn new(state: Arc<ReplicaState>) -> Self {
        Self { state, seen: u64::MAX, current: None }
    }
}

impl Service<http::Request<Body>> for Replica {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Register before reading so a change in between still wakes us.
        self.state.waker.register(cx.waker());
        {
            let live = self.state.live();
            if live.0 != self.seen {
                self.seen = live.0;
                self.current = live.1.clone();
            }
        }
        let Some(current) = &mut self.current else { return Poll::Pending };
        if current.alive.is_cancelled() {
            // Its task is about to publish the reconnection; wait for it.
            self.current = None;
            return Poll::Pending;
        }
        match current.channel.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // Never an error to the balancer: that would drop the replica
                // for good. Reconnect instead.
                tracing::debug!(stage = self.state.stage, endpoint = %self.state.addr, error = %e, "replica channel failed");
                current.alive.cancel();
                self.current = None;
                Poll::Pending
            }
        }
    }

    fn call(&mut self, req: http::Request<Body>) -> CallFuture {
        let Some(current) = &mut self.current else {
            return Box::pin(std::future::ready(Err("replica called before it was ready".into())));
        };
        let guard = InFlightGuard::new(self.state.clone());
        let alive = current.alive.clone();
        let call = current.channel.call(req);
        let stage = self.state.stage;
        let addr = self.state.addr;
        Box::pin(async move {
            match call.await {
                Ok(response) => {
                    Ok(response.map(|inner| Body::new(CountedBody { inner, guard: Some(guard) })))
                }
                Err(e) => {
                    // The caller's own deadline is no sign of a broken
                    // replica; any other transport failure is.
                    if !is_timeout(&e) {
                        tracing::debug!(stage, endpoint = %addr, error = %error_chain(&e), "call failed at the transport; reconnecting");
                        alive.cancel();
                    }
                    Err(e.into())
                }
            }
        })
    }
}

impl Load for Replica {
    type Metric = usize;

    fn load(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Keeps one replica connected: connects, waits for the connection to
/// break, reconnects with backoff. Aborted when the replica is removed.
/// `on_change` runs after each connect and disconnect.
pub(super) async fn maintain(
    state: Arc<ReplicaState>,
    endpoint: Endpoint,
    on_change: impl Fn() + Send + 'static,
) {
    let (stage, addr) = (state.stage, state.addr);
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut failures = 0u32;
    loop {
        let alive = CancellationToken::new();
        let connector = WatchedConnector { addr, alive: alive.clone() };
        match endpoint.connect_with_connector(connector).await {
            Ok(channel) => {
                if failures > 0 {
                    tracing::info!(stage, endpoint = %addr, failures, "replica reachable again");
                } else {
                    tracing::debug!(stage, endpoint = %addr, "replica connected");
                }
                backoff = RECONNECT_BACKOFF_MIN;
                failures = 0;
                let live = Live { channel, alive: alive.clone() };
                follow_health(&state, live, &on_change).await;
                state.publish(None);
                on_change();
                tracing::warn!(stage, endpoint = %addr, "replica connection lost; reconnecting");
            }
            Err(e) => {
                failures += 1;
                // One warning per outage; the retries are debug noise.
                if failures == 1 {
                    tracing::warn!(stage, endpoint = %addr, error = %error_chain(&e), "replica unreachable; retrying in the background");
                } else {
                    tracing::debug!(stage, endpoint = %addr, error = %error_chain(&e), failures, "replica still unreachable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
}

/// Offers `live` to the balancer while the replica's gRPC health (the
/// server as a whole, service "") is not NOT_SERVING; returns once the
/// connection is broken.
///
/// While the replica serves, a health `Watch` stream is open so a replica
/// that starts draining (it reports NOT_SERVING the moment SIGTERM arrives)
/// is left at once, before its GOAWAY. The stream is then dropped, since an
/// open stream would hold the replica's drain until its deadline, and health
/// is polled with `Check` until it serves again (a warming replica) or the
/// connection closes (a draining one). A server without the health service
/// counts as serving; so do UNKNOWN and SERVICE_UNKNOWN (nothing says it is
/// not).
async fn follow_health(state: &ReplicaState, live: Live, on_change: &impl Fn()) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };

    let alive = live.alive.clone();
    let mut health = HealthClient::new(live.channel.clone());
    let mut offered = false;
    let mut offer = |serving: bool| {
        if serving != offered {
            offered = serving;
            state.publish(serving.then(|| live.clone()));
            on_change();
            tracing::debug!(stage = state.stage, endpoint = %state.addr, serving, "replica health");
        }
    };
    let request = || HealthCheckRequest { service: String::new() };
    loop {
        let watch = tokio::select! {
            () = alive.cancelled() => return,
            watch = health.watch(request()) => watch,
        };
        let mut updates = match watch {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                offer(true);
                alive.cancelled().await;
                return;
            }
            Err(status) => {
                // No answer on a fresh connection: treat it as broken.
                tracing::debug!(stage = state.stage, endpoint = %state.addr, %status, "health watch failed");
                alive.cancel();
                return;
            }
        };
        loop {
            let update = tokio::select! {
                () = alive.cancelled() => return,
                update = updates.message() => update,
            };
            match update {
                Ok(Some(update)) if update.status() == ServingStatus::NotServing => break,
                Ok(Some(_)) => offer(true),
                // The server ended the stream (cut at its drain deadline).
                Ok(None) | Err(_) => break,
            }
        }
        offer(false);
        drop(updates);
        loop {
            tokio::select! {
                () = alive.cancelled() => return,
                () = tokio::time::sleep(HEALTH_POLL_INTERVAL) => {}
            }
            match health.check(request()).await {
                Ok(r) if r.get_ref().status() != ServingStatus::NotServing => break,
                Err(status) if status.code() == tonic::Code::Unimplemented => break,
                _ => {}
            }
        }
    }
}

/// Connects to one address (whatever the URI's host says: the URI keeps the
/// DNS name for TLS and `:authority`) and watches the stream.
#[derive(Clone)]
struct WatchedConnector {
    addr: SocketAddr,
    alive: CancellationToken,
}

impl Service<http::Uri> for WatchedConnector {
    type Response = hyper_util::rt::TokioIo<WatchedIo>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let (addr, alive) = (self.addr, self.alive.clone());
        Box::pin(async move {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok(hyper_util::rt::TokioIo::new(WatchedIo { inner: stream, alive }))
        })
    }
}

/// A TCP stream that cancels `alive` when it ends: EOF, an error, or the
/// connection dropping it.
struct WatchedIo {
    inner: TcpStream,
    alive: CancellationToken,
}

impl Drop for WatchedIo {
    fn drop(&mut self) {
        self.alive.cancel();
    }
}

impl AsyncRead for WatchedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wants = buf.remaining() > 0;
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if wants && buf.filled().len() == before => self.alive.cancel(),
            Poll::Ready(Err(_)) => self.alive.cancel(),
            _ => {}
        }
        res
    }
}

impl AsyncWrite for WatchedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Err(_)) = &res {
            self.alive.cancel();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Err(_)) = &res {
            self.alive.cancel();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
