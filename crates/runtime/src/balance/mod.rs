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
//! A connected replica is offered to the balancer only while its gRPC health
//! (service "") is not NOT_SERVING: a replica still warming up gets no calls,
//! and one that starts draining (NOT_SERVING from the moment of SIGTERM, see
//! [`crate::serve`]) is left on that health update, before its GOAWAY could
//! refuse a call. Should a call still reach a replica after its GOAWAY, the
//! client's HTTP/2 layer refuses it before anything is sent (CANCELLED,
//! "connection closed": safe to retry) and the replica is left.
//!
//! A call made while no replica is connected and serving waits up to the client's
//! `connect_timeout` for one, then fails with UNAVAILABLE naming the stage.
//! Once admitted, a call waits in the balancer until a replica is ready; if
//! every replica dies in that instant it waits for a reconnection, so
//! callers should set a deadline (they do: every stage call has one).
//!
//! Metrics: `osa_stage_in_flight{stage,endpoint}` (calls in flight per
//! replica) and `osa_stage_replicas{stage,state}` with `state` `known` or
//! `connected`.

mod replica;
mod resolve;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
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
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{
    body::Body,
    transport::{ClientTlsConfig, Endpoint},
};
use tower::{
    Service, ServiceExt as _, balance::p2c::Balance, buffer::Buffer, discover::Change,
    util::BoxService,
};

pub use self::resolve::{Resolve, SystemResolver};
use self::{
    replica::{Replica, ReplicaState},
    resolve::{Resolution, diff, parse_target},
};
use crate::{
    client::{ClientError, ClientOptions},
    settings::SettingsError,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type CallFuture = BoxFuture<Result<http::Response<Body>, BoxError>>;

/// Requests queued in front of the balancer (tonic's channel default).
const BUFFER_CAPACITY: usize = 1024;

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
            let weak = Arc::downgrade(shared);
            let on_change = move || {
                if let Some(shared) = weak.upgrade() {
                    shared.connectivity_changed();
                }
            };
            let task = tokio::spawn(replica::maintain(
                state.clone(),
                self.endpoints[target].clone(),
                on_change,
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

    /// Addresses of the replicas calls can go to now: connected, and not
    /// NOT_SERVING.
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
                    "no replica of stage {} is connected and serving (known: [{}]; waited {:?})",
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
    use super::*;

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
}
