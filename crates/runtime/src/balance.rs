//! Channels to a stage with several replicas, balanced by streams in flight.
//!
//! A stage is a list of endpoint URLs ([`StageEndpoints`]): IP addresses
//! (`http://10.0.0.7:50061`) or DNS names (`http://generator.osa.svc:50061`,
//! e.g. a Kubernetes headless Service, one A record per ready pod). Names are
//! re-resolved every `resolve_interval`: new addresses become replicas,
//! vanished ones are removed; a failed lookup keeps the last good answer.
//!
//! Each call goes to the less loaded of two replicas picked at random
//! (tower's power-of-two-choices [`Balance`]). The load is the number of calls
//! in flight, and a call stays in flight until its response *body* ends or is
//! dropped: the stages speak long bidirectional streams, so counting until
//! the response headers (tower's `PendingRequests`) would see every replica
//! idle. tonic's own `Channel::balance_channel` is no help here: it balances
//! `Connection`s whose load is always 0 (a random pick), and a lazy
//! connection that cannot connect still reports ready, so calls are sent to
//! a dead replica and fail.
//!
//! Each replica keeps one HTTP/2 connection, opened and re-opened by a
//! background task (exponential backoff). The TCP stream is watched: when it
//! reaches EOF, fails or is dropped (peer gone, GOAWAY then close, keep-alive
//! timeout), the replica stops being ready at once and is not picked while
//! it reconnects. A call that fails at the transport level also sends its
//! replica back to reconnecting.
//!
//! A call made while no replica is connected waits up to the client's
//! `connect_timeout` for one, then fails with UNAVAILABLE naming the stage.
//! Once admitted, a call waits in the balancer until a replica is ready; if
//! every replica dies in that instant it waits for a reconnection, so
//! callers should set a deadline (they do: every stage call has one).

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, task::AtomicWaker};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{
    body::Body,
    transport::{Channel, ClientTlsConfig, Endpoint},
};
use tower::{
    Service, ServiceExt as _, balance::p2c::Balance, buffer::Buffer, discover::Change, load::Load,
    util::BoxService,
};

use crate::{
    client::{ClientError, ClientOptions},
    settings::{SettingsError, error_chain},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type CallFuture = BoxFuture<Result<http::Response<Body>, BoxError>>;

/// Requests queued in front of the balancer (tonic's channel default).
const BUFFER_CAPACITY: usize = 1024;
/// First pause after a failed connection attempt; doubles up to the max.
const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where a stage's replicas are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageEndpoints {
    /// `http://` or `https://` URLs with an IP address or a DNS name. Every
    /// address a name resolves to is a replica.
    pub endpoints: Vec<String>,
    /// How often DNS names are resolved again (pods come and go).
    #[serde(with = "humantime_serde")]
    pub resolve_interval: Duration,
}

impl Default for StageEndpoints {
    fn default() -> Self {
        Self { endpoints: Vec::new(), resolve_interval: Duration::from_secs(5) }
    }
}

impl StageEndpoints {
    /// These endpoints, re-resolved every 5 s.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self { endpoints: endpoints.into_iter().map(Into::into).collect(), ..Self::default() }
    }

    /// Checks that there is at least one endpoint, that each is an
    /// `http(s)://host:port` URL and that the interval is sane; `key` names
    /// this section in errors (e.g. `gateway.generator`).
    pub fn validate(&self, key: &str) -> Result<(), SettingsError> {
        if self.endpoints.is_empty() {
            return Err(SettingsError::invalid(
                &format!("{key}.endpoints"),
                "needs at least one endpoint",
            ));
        }
        for (i, url) in self.endpoints.iter().enumerate() {
            parse_target(url).map_err(|reason| {
                SettingsError::invalid(
                    &format!("{key}.endpoints[{i}]"),
                    format!("{url:?}: {reason}"),
                )
            })?;
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(3600)).contains(&self.resolve_interval)
        {
            return Err(SettingsError::invalid(
                &format!("{key}.resolve_interval"),
                format!("{:?} is outside 10ms..=1h", self.resolve_interval),
            ));
        }
        Ok(())
    }
}

/// An endpoint URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    url: String,
    host: String,
    port: u16,
    /// Set when the host is an IP address: nothing to resolve.
    ip: Option<IpAddr>,
}

fn parse_target(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let default_port = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => 80,
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => return Err("must start with http:// or https://".into()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or("has no host")?;
    if !matches!(uri.path(), "" | "/") {
        return Err("must not have a path".into());
    }
    // `http::Uri` accepts any digits as a port; `port_u16` would silently
    // give None (the default port) when they do not fit.
    let port = match uri.authority().and_then(|a| a.as_str().rsplit_once(':')) {
        Some((_, digits)) if !digits.ends_with(']') => {
            digits.parse::<u16>().map_err(|_| format!("port {digits:?} is not 0..=65535"))?
        }
        _ => default_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let ip = host.parse::<IpAddr>().ok();
    Ok(Target { url: url.to_owned(), host, port, ip })
}

/// Turns a host name into addresses. The system resolver is the default;
/// tests and custom discovery supply their own.
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host` (a DNS name, never an IP address) at `port`.
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// [`Resolve`] through the system resolver (`getaddrinfo`, which reads
/// `/etc/hosts` and the cluster DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The current answer for every target, kept across failed lookups.
#[derive(Debug)]
struct Resolution {
    stage: &'static str,
    targets: Vec<Target>,
    /// Per target, the addresses of its last successful lookup.
    last_good: Vec<Vec<SocketAddr>>,
    /// How long one lookup may take.
    lookup_timeout: Duration,
}

impl Resolution {
    fn new(stage: &'static str, targets: Vec<Target>, lookup_timeout: Duration) -> Self {
        let last_good = targets
            .iter()
            .map(|t| t.ip.map(|ip| vec![SocketAddr::new(ip, t.port)]).unwrap_or_default())
            .collect();
        Self { stage, targets, last_good, lookup_timeout }
    }

    /// Looks up every DNS target again; a failed or empty lookup keeps that
    /// target's previous addresses.
    async fn refresh<R: Resolve>(&mut self, resolver: &R) {
        for (target, last) in self.targets.iter().zip(self.last_good.iter_mut()) {
            if target.ip.is_some() {
                continue;
            }
            let lookup = resolver.resolve(&target.host, target.port);
            let error = match tokio::time::timeout(self.lookup_timeout, lookup).await {
                Ok(Ok(mut addrs)) if !addrs.is_empty() => {
                    addrs.sort_unstable();
                    addrs.dedup();
                    *last = addrs;
                    continue;
                }
                Ok(Ok(_)) => "no addresses".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("timed out after {:?}", self.lookup_timeout),
            };
            tracing::warn!(
                stage = self.stage,
                endpoint = %target.url,
                error = %error,
                kept = last.len(),
                "cannot resolve stage endpoint; keeping the last good addresses"
            );
        }
    }

    /// Every address with the index of the first target that named it.
    fn desired(&self) -> BTreeMap<SocketAddr, usize> {
        let mut out = BTreeMap::new();
        for (i, addrs) in self.last_good.iter().enumerate() {
            for addr in addrs {
                out.entry(*addr).or_insert(i);
            }
        }
        out
    }
}

/// What must change to go from `current` to `desired`: addresses to add
/// (with their target) and addresses to remove.
fn diff(
    current: &BTreeSet<SocketAddr>,
    desired: &BTreeMap<SocketAddr, usize>,
) -> (Vec<(SocketAddr, usize)>, Vec<SocketAddr>) {
    let insert = desired
        .iter()
        .filter(|(addr, _)| !current.contains(addr))
        .map(|(addr, target)| (*addr, *target))
        .collect();
    let remove = current.iter().filter(|addr| !desired.contains_key(addr)).copied().collect();
    (insert, remove)
}

/// A replica's connection while it is up.
#[derive(Clone)]
struct Live {
    channel: Channel,
    /// Cancelled when the connection is found broken.
    alive: CancellationToken,
}

/// One replica, shared by its balancer service, its connection task and the
/// registry.
struct ReplicaState {
    /// Unique per replica instance (an address removed then added again is
    /// a new replica).
    id: u64,
    addr: SocketAddr,
    stage: &'static str,
    in_flight: AtomicUsize,
    gauge: metrics::Gauge,
    /// Bumped on every change of `live`, with the connection when up.
    live: Mutex<(u64, Option<Live>)>,
    /// Wakes the balancer when `live` changes.
    waker: AtomicWaker,
    /// The connection task, aborted when the replica is removed.
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl ReplicaState {
    fn live(&self) -> MutexGuard<'_, (u64, Option<Live>)> {
        // A poisoned lock only means a panic elsewhere; the data is a plain
        // value that stays consistent.
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_connected(&self) -> bool {
        self.live().1.is_some()
    }

    fn publish(&self, live: Option<Live>) {
        {
            let mut guard = self.live();
            guard.0 += 1;
            guard.1 = live;
        }
        self.waker.wake();
    }

    fn stop(&self) {
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
struct Replica {
    state: Arc<ReplicaState>,
    /// The `live` version `channel` was taken from.
    seen: u64,
    /// Kept between `poll_ready` and `call`: the channel's readiness (a
    /// buffer slot) belongs to this handle.
    current: Option<Live>,
}

impl Replica {
    fn new(state: Arc<ReplicaState>) -> Self {
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

/// What every part of one balanced channel shares.
struct Shared {
    stage: &'static str,
    replicas: Mutex<BTreeMap<SocketAddr, Arc<ReplicaState>>>,
    /// Wakes the balancer's discovery when `replicas` changes.
    discover_waker: AtomicWaker,
    /// Signalled when a replica connects or disconnects.
    connectivity: Notify,
    next_id: AtomicU64,
    /// `osa_stage_replicas{stage,state}` gauges.
    known_gauge: metrics::Gauge,
    connected_gauge: metrics::Gauge,
}

impl Shared {
    fn replicas(&self) -> MutexGuard<'_, BTreeMap<SocketAddr, Arc<ReplicaState>>> {
        self.replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn connected(&self) -> usize {
        self.replicas().values().filter(|r| r.is_connected()).count()
    }

    fn connectivity_changed(&self) {
        self.connected_gauge.set(self.connected() as f64);
        self.connectivity.notify_waiters();
    }
}

/// Builds replicas for the addresses discovery finds.
struct ReplicaFactory {
    shared: Arc<Shared>,
    /// One endpoint per target URL (TLS, keep-alive, timeouts), in the order
    /// of `StageEndpoints::endpoints`.
    endpoints: Vec<Endpoint>,
}

impl ReplicaFactory {
    /// Brings the replica set to `desired`.
    fn apply(&self, desired: &BTreeMap<SocketAddr, usize>) {
        let shared = &self.shared;
        let mut replicas = shared.replicas();
        let current = replicas.keys().copied().collect();
        let (insert, remove) = diff(&current, desired);
        if insert.is_empty() && remove.is_empty() {
            return;
        }
        for addr in remove {
            if let Some(replica) = replicas.remove(&addr) {
                tracing::info!(stage = shared.stage, endpoint = %addr, "replica removed");
                replica.stop();
                replica.gauge.set(0.0);
            }
        }
        for (addr, target) in insert {
            tracing::info!(stage = shared.stage, endpoint = %addr, url = %self.endpoints[target].uri(), "replica added");
            let state = Arc::new(ReplicaState {
                id: shared.next_id.fetch_add(1, Ordering::Relaxed),
                addr,
                stage: shared.stage,
                in_flight: AtomicUsize::new(0),
                gauge: metrics::gauge!(
                    "osa_stage_in_flight",
                    "stage" => shared.stage,
                    "endpoint" => addr.to_string()
                ),
                live: Mutex::new((0, None)),
                waker: AtomicWaker::new(),
                task: Mutex::new(None),
            });
            let task = tokio::spawn(maintain(
                state.clone(),
                self.endpoints[target].clone(),
                Arc::downgrade(shared),
            ));
            *state.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(task.abort_handle());
            replicas.insert(addr, state);
        }
        shared.known_gauge.set(replicas.len() as f64);
        drop(replicas);
        shared.discover_waker.wake();
        shared.connectivity_changed();
    }
}

/// Keeps one replica connected: connects, waits for the connection to
/// break, reconnects with backoff. Aborted when the replica is removed.
async fn maintain(state: Arc<ReplicaState>, endpoint: Endpoint, shared: std::sync::Weak<Shared>) {
    let notify = |shared: &std::sync::Weak<Shared>| {
        if let Some(shared) = shared.upgrade() {
            shared.connectivity_changed();
        }
    };
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
                state.publish(Some(Live { channel, alive: alive.clone() }));
                notify(&shared);
                alive.cancelled().await;
                state.publish(None);
                notify(&shared);
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

/// The balancer's discovery: reports the registry's changes as inserts and
/// removals. Pull-based, so changes made while nobody calls coalesce instead
/// of queueing.
struct Discovered {
    shared: Arc<Shared>,
    /// What the balancer has been told: address -> replica id.
    told: BTreeMap<SocketAddr, u64>,
}

impl Stream for Discovered {
    type Item = Result<Change<SocketAddr, Replica>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.shared.discover_waker.register(cx.waker());
        let shared = self.shared.clone();
        let replicas = shared.replicas();
        for (addr, replica) in replicas.iter() {
            if self.told.get(addr) != Some(&replica.id) {
                self.told.insert(*addr, replica.id);
                return Poll::Ready(Some(Ok(Change::Insert(*addr, Replica::new(replica.clone())))));
            }
        }
        let gone = self.told.keys().find(|addr| !replicas.contains_key(addr)).copied();
        if let Some(addr) = gone {
            self.told.remove(&addr);
            return Poll::Ready(Some(Ok(Change::Remove(addr))));
        }
        Poll::Pending
    }
}

/// What the clones of one [`BalancedChannel`] share; dropping the last one
/// stops discovery and the connection tasks.
struct Inner {
    shared: Arc<Shared>,
    /// How long a call waits for a first connected replica.
    wait_connected: Duration,
    _stop: DropGuard,
}

/// A channel to every replica of a stage, usable as the transport of a
/// generated client (`GeneratorServiceClient<BalancedChannel>`). Cheap to
/// clone; the clones share the replicas and their load.
#[derive(Clone)]
pub struct BalancedChannel {
    inner: Arc<Inner>,
    buffer: Buffer<http::Request<Body>, CallFuture>,
}

impl std::fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("stage", &self.inner.shared.stage)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A balanced channel over the replicas of `stage` (a name for logs and
/// metrics). Lazy: connections are made in the background, so a replica
/// that is down is no error here. Needs a tokio runtime.
pub fn balanced(
    stage: &'static str,
    endpoints: &StageEndpoints,
    opts: &ClientOptions,
) -> Result<BalancedChannel, ClientError> {
    balanced_with(stage, endpoints, opts, SystemResolver)
}

/// [`balanced`] with another resolver for the DNS names.
pub fn balanced_with<R: Resolve>(
    stage: &'static str,
    endpoints: &StageEndpoints,
    opts: &ClientOptions,
    resolver: R,
) -> Result<BalancedChannel, ClientError> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| ClientError::Runtime { stage: stage.to_owned(), reason: e.to_string() })?;
    if endpoints.endpoints.is_empty() {
        return Err(ClientError::InvalidEndpoint {
            endpoint: String::new(),
            reason: format!("stage {stage} has no endpoints"),
        });
    }
    let targets = endpoints
        .endpoints
        .iter()
        .map(|url| {
            parse_target(url)
                .map_err(|reason| ClientError::InvalidEndpoint { endpoint: url.clone(), reason })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Read the TLS files once for all replicas.
    let tls: Option<ClientTlsConfig> = if targets
        .iter()
        .any(|t| t.url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")))
    {
        Some(opts.tls_config()?)
    } else {
        None
    };
    let endpoints_built = targets
        .iter()
        .map(|t| crate::client::endpoint_with_tls(&t.url, opts, tls.clone()))
        .collect::<Result<Vec<_>, _>>()?;

    let shared = Arc::new(Shared {
        stage,
        replicas: Mutex::new(BTreeMap::new()),
        discover_waker: AtomicWaker::new(),
        connectivity: Notify::new(),
        next_id: AtomicU64::new(0),
        known_gauge: metrics::gauge!("osa_stage_replicas", "stage" => stage, "state" => "known"),
        connected_gauge: metrics::gauge!("osa_stage_replicas", "stage" => stage, "state" => "connected"),
    });
    let factory = ReplicaFactory { shared: shared.clone(), endpoints: endpoints_built };
    let resolution = Resolution::new(stage, targets, opts.connect_timeout);
    // IP endpoints are replicas at once; names join on the first lookup.
    factory.apply(&resolution.desired());

    let stop = CancellationToken::new();
    runtime.spawn(discover(
        factory,
        resolution,
        resolver,
        endpoints.resolve_interval,
        stop.clone(),
    ));

    let balance = Balance::new(Discovered { shared: shared.clone(), told: BTreeMap::new() });
    let (buffer, worker) = Buffer::pair(BoxService::new(balance), BUFFER_CAPACITY);
    runtime.spawn(worker);
    Ok(BalancedChannel {
        inner: Arc::new(Inner {
            shared,
            wait_connected: opts.connect_timeout,
            _stop: stop.drop_guard(),
        }),
        buffer,
    })
}

/// Re-resolves the names every `interval` until `stop`, then stops every
/// replica's connection task.
async fn discover<R: Resolve>(
    factory: ReplicaFactory,
    mut resolution: Resolution,
    resolver: R,
    interval: Duration,
    stop: CancellationToken,
) {
    let dynamic = resolution.targets.iter().any(|t| t.ip.is_none());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick(), if dynamic => {}
        }
        resolution.refresh(&resolver).await;
        factory.apply(&resolution.desired());
    }
    for replica in factory.shared.replicas().values() {
        replica.stop();
        replica.gauge.set(0.0);
    }
}

impl BalancedChannel {
    /// Calls in flight per replica address (a streaming call counts until
    /// its response ends), sorted by address.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.inner
            .shared
            .replicas()
            .values()
            .map(|r| (r.addr.to_string(), r.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    /// Addresses of the replicas connected now (the ones calls can go to).
    pub fn connected(&self) -> Vec<String> {
        self.inner
            .shared
            .replicas()
            .values()
            .filter(|r| r.is_connected())
            .map(|r| r.addr.to_string())
            .collect()
    }

    /// Waits until some replica is connected, at most `wait_connected`.
    async fn wait_connected(inner: &Inner) -> Result<(), tonic::Status> {
        let deadline = tokio::time::Instant::now() + inner.wait_connected;
        loop {
            let changed = inner.shared.connectivity.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if inner.shared.connected() > 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let known: Vec<String> =
                    inner.shared.replicas().keys().map(ToString::to_string).collect();
                let status = tonic::Status::unavailable(format!(
                    "no replica of stage {} is reachable (known: [{}]; waited {:?})",
                    inner.shared.stage,
                    known.join(", "),
                    inner.wait_connected
                ));
                return Err(status);
            }
        }
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = CallFuture;

    /// Always ready: the wait for a replica happens in the call, bounded by
    /// the connect timeout, and the buffer bounds what is queued.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> CallFuture {
        let inner = self.inner.clone();
        let buffer = self.buffer.clone();
        Box::pin(async move {
            match Self::wait_connected(&inner).await {
                Ok(()) => dispatch(buffer, req).await,
                Err(status) => Err(Box::new(status) as BoxError),
            }
        })
    }
}

/// Hands `req` to the balancer. A function of its own so the buffer's
/// future is boxed before the caller's async block awaits it (rustc cannot
/// prove that block `Send` otherwise: rust-lang/rust#102211).
fn dispatch(
    buffer: Buffer<http::Request<Body>, CallFuture>,
    req: http::Request<Body>,
) -> CallFuture {
    Box::pin(buffer.oneshot(req))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Answers from a table the test edits; a missing name is an error.
    #[derive(Clone, Default)]
    struct FakeResolver(Arc<Mutex<HashMap<String, io::Result<Vec<SocketAddr>>>>>);

    impl FakeResolver {
        fn set(&self, host: &str, answer: io::Result<Vec<&str>>) {
            let answer = answer.map(|v| v.iter().map(|a| a.parse().unwrap()).collect());
            self.0.lock().unwrap().insert(host.to_owned(), answer);
        }
    }

    impl Resolve for FakeResolver {
        async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
            match self.0.lock().unwrap().get(host) {
                Some(Ok(addrs)) => {
                    Ok(addrs.iter().map(|a| SocketAddr::new(a.ip(), port)).collect())
                }
                Some(Err(e)) => Err(io::Error::new(e.kind(), e.to_string())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn resolution(urls: &[&str]) -> Resolution {
        let targets = urls.iter().map(|u| parse_target(u).unwrap()).collect();
        Resolution::new("test", targets, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn lookups_add_and_remove_addresses_and_failures_keep_the_last_good_set() {
        let resolver = FakeResolver::default();
        let mut res = resolution(&["http://10.0.0.1:50061", "http://gen.osa.svc:50061"]);
        // Before any lookup only the IP endpoint is known.
        assert_eq!(res.desired().keys().copied().collect::<Vec<_>>(), addrs(&["10.0.0.1:50061"]));

        resolver.set("gen.osa.svc", Ok(vec!["10.0.1.1:0", "10.0.1.2:0"]));
        res.refresh(&resolver).await;
        let first = res.desired();
        assert_eq!(
            first.keys().copied().collect::<Vec<_>>(),
            addrs(&["10.0.0.1:50061", "10.0.1.1:50061", "10.0.1.2:50061"])
        );
        assert_eq!(first[&"10.0.1.1:50061".parse().unwrap()], 1, "named by the second target");

        let current: BTreeSet<_> = first.keys().copied().collect();
        resolver.set("gen.osa.svc", Ok(vec!["10.0.1.2:0", "10.0.1.3:0"]));
        res.refresh(&resolver).await;
        let (insert, remove) = diff(&current, &res.desired());
        assert_eq!(insert, vec![("10.0.1.3:50061".parse().unwrap(), 1)]);
        assert_eq!(remove, addrs(&["10.0.1.1:50061"]));

        // A failed, empty or missing answer keeps what was known.
        let current: BTreeSet<_> = res.desired().keys().copied().collect();
        for answer in [Err(io::Error::other("SERVFAIL")), Ok(vec![])] {
            resolver.set("gen.osa.svc", answer);
            res.refresh(&resolver).await;
            assert_eq!(diff(&current, &res.desired()), (vec![], vec![]));
        }
    }

    #[tokio::test]
    async fn an_address_named_twice_is_one_replica() {
        let resolver = FakeResolver::default();
        resolver.set("a.svc", Ok(vec!["10.0.0.1:0"]));
        resolver.set("b.svc", Ok(vec!["10.0.0.1:0", "10.0.0.2:0"]));
        let mut res = resolution(&["http://a.svc:7", "http://b.svc:7"]);
        res.refresh(&resolver).await;
        let desired = res.desired();
        assert_eq!(desired.len(), 2);
        assert_eq!(desired[&"10.0.0.1:7".parse().unwrap()], 0, "the first target wins");
        assert_eq!(desired[&"10.0.0.2:7".parse().unwrap()], 1);
        let (insert, remove) = diff(&BTreeSet::new(), &desired);
        assert_eq!(insert.len(), 2);
        assert!(remove.is_empty());
    }

    #[test]
    fn endpoints_are_validated_by_key() {
        let ok = StageEndpoints::new(["http://10.0.0.1:50061", "https://gen.osa.svc:443"]);
        ok.validate("gateway.generator").unwrap();
        let e = StageEndpoints::new(Vec::<String>::new()).validate("gateway.generator");
        assert!(e.unwrap_err().to_string().contains("gateway.generator.endpoints"));
        for bad in ["10.0.0.1:50061", "ftp://x:1", "http://", "http://x:1/path", "http://x:99999"] {
            let e =
                StageEndpoints::new(["http://ok:1", bad]).validate("g").unwrap_err().to_string();
            assert!(e.contains("g.endpoints[1]") && e.contains(bad), "{bad}: {e}");
        }
        let zero = StageEndpoints {
            resolve_interval: Duration::ZERO,
            ..StageEndpoints::new(["http://x:1"])
        };
        assert!(zero.validate("g").unwrap_err().to_string().contains("g.resolve_interval"));
    }

    #[test]
    fn targets_parse_hosts_ports_and_ips() {
        let t = parse_target("http://[::1]:5000").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.ip), ("::1", 5000, Some("::1".parse().unwrap())));
        let t = parse_target("https://gen.osa.svc").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.ip), ("gen.osa.svc", 443, None));
    }
}
