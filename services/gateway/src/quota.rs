//! Requests per second per API key: a token bucket per key in front of the
//! public services ([`RateLimited`], [`RateLimitLayer`]).
//!
//! Each key may burst `max(1, round(rate))` calls, then `rate` per second.
//! A call over the rate is answered RESOURCE_EXHAUSTED with `retry-after-ms`
//! metadata: the time until the key's next token. Buckets are keyed by the
//! SHA-256 of the bearer token (the key itself is never held), so the limit
//! is per key whoever the tenant; calls without a bearer token pass through
//! untouched and are refused by the authentication wrapper.
//!
//! The buckets live in this gateway replica's memory: N replicas behind a
//! load balancer allow up to N times the rate per key. That keeps the check
//! free of a Redis round trip per call; the per-key concurrency quotas
//! (sessions, running jobs), which must be exact, live in Redis instead.
//!
//! Memory is bounded: a bucket idle long enough to have refilled is
//! indistinguishable from a new one, so such buckets are swept out (amortised,
//! when a shard has doubled since its last sweep), and a hard cap per shard
//! bounds even a flood of distinct keys.
//!
//! Place it outside [`crate::auth::Authenticated`]
//! (`RateLimited::new(Authenticated::new(svc, keys), rate)`) so a flood is
//! refused before it costs a Redis lookup.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use osa_runtime::ServiceError;
use sha2::{Digest as _, Sha256};
use tonic::{body::Body, server::NamedService};

/// Independent shards, so concurrent calls rarely wait on one lock.
const SHARDS: usize = 16;
/// A shard is swept once it holds this many buckets (or twice as many as
/// after its last sweep).
const MIN_SWEEP: usize = 256;
/// Buckets per shard beyond which, after a sweep, the shard is reset: keys
/// in it get a fresh burst, which is better than unbounded memory.
const MAX_PER_SHARD: usize = 65_536;
/// Bounds on the configured rate; settings validation keeps it positive.
const MIN_RATE: f64 = 1e-3;
const MAX_RATE: f64 = 1e6;

type KeyDigest = [u8; 32];

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<KeyDigest, Bucket>,
    next_sweep: usize,
}

#[derive(Debug)]
struct Limiter {
    rate: f64,
    burst: f64,
    /// Idle time after which a bucket is full again, hence forgettable.
    refill: Duration,
    shards: Vec<Mutex<Shard>>,
}

/// Token buckets per API key, shared by every service wrapped with it (one
/// bucket per key across AvatarService, RenderService, LiveService). Cheap
/// to clone.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    inner: Arc<Limiter>,
}

impl RateLimiter {
    /// `rate_per_sec` calls per second per key, with a burst of
    /// `max(1, round(rate_per_sec))`. The rate is clamped to [0.001, 10^6]
    /// (settings validation rejects non-positive rates before this).
    pub fn new(rate_per_sec: f64) -> Self {
        let rate = if rate_per_sec.is_nan() { MIN_RATE } else { rate_per_sec };
        let rate = rate.clamp(MIN_RATE, MAX_RATE);
        let burst = rate.round().max(1.0);
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard { buckets: HashMap::new(), next_sweep: MIN_SWEEP }))
            .collect();
        let refill = Duration::from_secs_f64(burst / rate);
        Self { inner: Arc::new(Limiter { rate, burst, refill, shards }) }
    }

    /// The configured calls per second per key.
    pub fn rate(&self) -> f64 {
        self.inner.rate
    }

    /// Calls a key may make at once from a full bucket.
    pub fn burst(&self) -> u32 {
        self.inner.burst as u32
    }

    /// Takes a token for `token` (a bearer token); `Err(wait)` when the key
    /// is over its rate, `wait` being the time until its next token.
    pub fn check(&self, token: &str) -> Result<(), Duration> {
        let digest: KeyDigest = Sha256::digest(token.as_bytes()).into();
        self.take(&digest, Instant::now())
    }

    /// Buckets held now (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).buckets.len()).sum()
    }

    fn take(&self, key: &KeyDigest, now: Instant) -> Result<(), Duration> {
        let l = &*self.inner;
        let mut shard = lock(&l.shards[key[0] as usize % SHARDS]);
        if !shard.buckets.contains_key(key) && shard.buckets.len() >= shard.next_sweep {
            sweep(&mut shard, l.refill, now);
        }
        let bucket = shard.buckets.entry(*key).or_insert(Bucket { tokens: l.burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * l.rate).min(l.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / l.rate))
        }
    }
}

/// A poisoned lock only means another call panicked mid-update of plain
/// numbers: the buckets are still usable.
fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sweep(shard: &mut Shard, refill: Duration, now: Instant) {
    shard.buckets.retain(|_, b| now.saturating_duration_since(b.at) < refill);
    if shard.buckets.len() >= MAX_PER_SHARD {
        tracing::warn!(buckets = shard.buckets.len(), "rate limiter shard full: reset");
        shard.buckets = HashMap::new();
    }
    shard.next_sweep = (2 * shard.buckets.len()).max(MIN_SWEEP);
}

/// The bearer token of `authorization` metadata, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A service whose calls are limited per API key.
#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: RateLimiter,
}

impl<S> RateLimited<S> {
    /// `inner` with its own limiter of `rate_per_sec` calls per second per key.
    pub fn new(inner: S, rate_per_sec: f64) -> Self {
        Self::with_limiter(inner, RateLimiter::new(rate_per_sec))
    }

    /// `inner` sharing `limiter` (and so each key's bucket) with other services.
    pub fn with_limiter(inner: S, limiter: RateLimiter) -> Self {
        Self { inner, limiter }
    }
}

impl<S: NamedService> NamedService for RateLimited<S> {
    const NAME: &'static str = S::NAME;
}

/// Wraps services in [`RateLimited`] sharing one [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    pub fn new(limiter: RateLimiter) -> Self {
        Self { limiter }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited::with_limiter(inner, self.limiter.clone())
    }
}

impl<S> tower::Service<http::Request<Body>> for RateLimited<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let verdict = bearer(req.headers()).map_or(Ok(()), |t| self.limiter.check(t));
        if let Err(wait) = verdict {
            metrics::counter!("osa_gateway_rate_limited_total").increment(1);
            // Round up so that a client waiting exactly this long finds a token.
            let wait = Duration::from_millis(wait.as_micros().div_ceil(1000).max(1) as u64);
            let error = ServiceError::ResourceExhausted {
                what: format!(
                    "over the rate limit of {} calls per second for this API key; retry in {} ms",
                    self.limiter.rate(),
                    wait.as_millis()
                ),
                retry_after: Some(wait),
            };
            let response = tonic::Status::from(error).into_http::<Body>();
            return Box::pin(async move { Ok(response) });
        }
        // The ready service handles this call; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move { inner.call(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> KeyDigest {
        Sha256::digest(i.to_le_bytes()).into()
    }

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(4.0);
        assert_eq!(l.burst(), 4);
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(l.take(&key(1), t0).is_ok());
        }
        let wait = l.take(&key(1), t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.25).abs() < 1e-9, "{wait:?}");
        // 100 ms later, 0.4 of a token: 150 ms still to wait.
        let wait = l.take(&key(1), t0 + Duration::from_millis(100)).unwrap_err();
        assert!((wait.as_secs_f64() - 0.15).abs() < 1e-9, "{wait:?}");
        assert!(l.take(&key(1), t0 + Duration::from_millis(250)).is_ok());
        assert!(l.take(&key(1), t0 + Duration::from_millis(250)).is_err());
        // A full refill never exceeds the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| l.take(&key(1), later).is_ok()).count(), 4);
    }

    #[test]
    fn burst_is_at_least_one() {
        let l = RateLimiter::new(0.2);
        assert_eq!(l.burst(), 1);
        let t0 = Instant::now();
        assert!(l.take(&key(7), t0).is_ok());
        assert_eq!(l.take(&key(7), t0).unwrap_err(), Duration::from_secs(5));
        assert_eq!(RateLimiter::new(f64::NAN).rate(), MIN_RATE);
        assert_eq!(RateLimiter::new(-1.0).burst(), 1);
    }

    #[test]
    fn idle_buckets_are_evicted() {
        let l = RateLimiter::new(10.0);
        let t0 = Instant::now();
        for i in 0..20_000 {
            let _ = l.take(&key(i), t0);
        }
        let held = l.tracked_keys();
        assert!(held >= 20_000, "{held}");
        // Two seconds later (refill is one second) every old bucket is full
        // again: new keys trigger sweeps that drop them.
        let later = t0 + Duration::from_secs(2);
        let fresh = 20 * SHARDS as u32 * 64;
        for i in 100_000..100_000 + fresh {
            let _ = l.take(&key(i), later);
        }
        assert_eq!(l.tracked_keys(), fresh as usize, "only the recent buckets remain");
        // A recently used bucket survives a sweep with its state.
        let l = RateLimiter::new(1.0);
        assert!(l.take(&key(1), t0).is_ok());
        let shard = key(1)[0] as usize % SHARDS;
        sweep(&mut lock(&l.inner.shards[shard]), l.inner.refill, t0);
        assert!(l.take(&key(1), t0).is_err());
    }

    #[test]
    fn bearer_tokens() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer k1".parse().unwrap());
        assert_eq!(bearer(&h), Some("k1"));
        h.insert("authorization", "Basic k1".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
