//! Completion webhooks (`SubmitRenderRequest.webhook_url`).
//!
//! When a job ends the gateway POSTs the job as JSON ([`job_json`]) to the
//! URL with an `osa-signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` header
//! ([`sign`]); the MAC covers `"<t>.<body>"` under the tenant's webhook
//! secret ([`WebhookSecrets`], `osa keys webhook-secret`), the secret
//! string's UTF-8 bytes being the HMAC key. Receivers check it with
//! [`verify`] (or its equivalent), rejecting old timestamps so a captured
//! call cannot be replayed later.
//!
//! Delivery ([`Webhooks::deliver`]) runs in its own task: network errors,
//! 5xx and 429 are retried with exponential backoff and jitter (each attempt
//! signed afresh with the current time); 2xx means delivered; any other
//! status (4xx, 3xx: redirects are not followed) means the receiver refused
//! and is not retried. By default only https URLs on public addresses are
//! called, so a tenant cannot make the gateway reach its own network
//! (addresses are checked after DNS resolution too).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac as _};
use osa_proto::v1;
use osa_runtime::ServiceError;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::Semaphore;

/// Name of the signature header.
pub const SIGNATURE_HEADER: &str = "osa-signature";
/// Longest webhook URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Prefix of every webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], unix_seconds: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The `osa-signature` header value for `body` sent at `unix_seconds`:
/// `t=<unix_seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub fn sign(secret: &[u8], unix_seconds: u64, body: &[u8]) -> String {
    let tag = mac(secret, unix_seconds, body).finalize().into_bytes();
    format!("t={unix_seconds},v1={}", hex(&tag))
}

/// True when `header` (an `osa-signature` value) signs `body` under
/// `secret` with a timestamp within `tolerance` of `now_unix`. Several `v1=`
/// entries are accepted (any may match); the MAC comparison is constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix: u64,
    tolerance: Duration,
) -> bool {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) if t.is_none() => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => tags.extend(unhex(v)),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now_unix.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    tags.iter().any(|tag| mac(secret, t, body).verify_slice(tag).is_ok())
}

fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Queued) => "queued",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Succeeded) => "succeeded",
        Ok(v1::JobState::Failed) => "failed",
        Ok(v1::JobState::Cancelled) => "cancelled",
        Ok(v1::JobState::Unspecified) | Err(_) => "unspecified",
    }
}

/// The webhook body: the job as JSON, with snake_case fields, the state as
/// a lowercase word, absent strings and times as `null`, times in RFC 3339
/// (UTC):
///
/// ```json
/// {"job_id":"…","avatar_id":"…","state":"succeeded",
///  "progress":{"clips_done":3,"clips_total":3,"media_seconds_done":1.44,"media_seconds_total":1.44},
///  "failure_reason":null,"failure_code":null,"idempotency_key":null,
///  "result_bytes":81234,"fps":25,"steps":1,"seed":42,
///  "created_at":"2026-01-01T00:00:00Z","started_at":"…","finished_at":"…"}
/// ```
pub fn job_json(job: &v1::Job) -> Vec<u8> {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    // prost's Timestamp displays as RFC 3339 in UTC.
    fn time<T: std::fmt::Display>(t: &Option<T>) -> Option<String> {
        t.as_ref().map(ToString::to_string)
    }
    let progress = job.progress.unwrap_or_default();
    let sampling = job.sampling.unwrap_or_default();
    let value = serde_json::json!({
        "job_id": job.job_id,
        "avatar_id": job.avatar_id,
        "state": state_name(job.state),
        "progress": {
            "clips_done": progress.clips_done,
            "clips_total": progress.clips_total,
            "media_seconds_done": progress.media_seconds_done,
            "media_seconds_total": progress.media_seconds_total,
        },
        "failure_reason": text(&job.failure_reason),
        "failure_code": text(&job.failure_code),
        "idempotency_key": text(&job.idempotency_key),
        "result_bytes": job.result_bytes,
        "fps": job.fps,
        "steps": sampling.steps,
        "seed": sampling.seed,
        "created_at": time(&job.created_at),
        "started_at": time(&job.started_at),
        "finished_at": time(&job.finished_at),
    });
    // Serialising a `Value` to a Vec cannot fail.
    serde_json::to_vec(&value).unwrap_or_default()
}

/// How webhooks are delivered (`[webhooks]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Bound on one attempt (connect, send, response).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Accept plain-http URLs (tests, local receivers). Off: https only.
    pub allow_http: bool,
    /// Call loopback, private, link-local and other non-public addresses
    /// (tests, receivers inside the cluster). Off: a tenant's URL cannot
    /// reach the gateway's own network.
    pub allow_private_addresses: bool,
    /// Attempts in flight at once over all deliveries (waiting between
    /// attempts holds no slot).
    pub max_concurrent: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            allow_http: false,
            allow_private_addresses: false,
            max_concurrent: 64,
        }
    }
}

impl WebhookSettings {
    /// Checks the settings; the error names the setting and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout.is_zero() {
            return Err("webhooks.timeout must be positive".into());
        }
        if !(1..=100).contains(&self.max_attempts) {
            return Err(format!("webhooks.max_attempts {} must be 1 to 100", self.max_attempts));
        }
        if self.initial_backoff.is_zero() || self.initial_backoff > self.max_backoff {
            return Err(format!(
                "webhooks.initial_backoff {:?} must be positive and at most webhooks.max_backoff \
                 ({:?})",
                self.initial_backoff, self.max_backoff
            ));
        }
        if self.max_concurrent == 0 {
            return Err("webhooks.max_concurrent must be positive".into());
        }
        Ok(())
    }
}

/// A webhook failure.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("tenant {0:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadTenant(String),
    #[error("redis: {0}")]
    Redis(String),
    /// Unusable `[webhooks]` settings or HTTP client.
    #[error("{0}")]
    Setup(String),
}

impl From<WebhookError> for ServiceError {
    fn from(e: WebhookError) -> Self {
        match e {
            WebhookError::BadTenant(_) => ServiceError::invalid("tenant", e),
            WebhookError::Redis(detail) => {
                ServiceError::Unavailable { dependency: "redis", detail }
            }
            WebhookError::Setup(_) => ServiceError::internal(e),
        }
    }
}

fn redis_err(e: redis::RedisError) -> WebhookError {
    WebhookError::Redis(e.to_string())
}

/// Per-tenant webhook secrets in Redis, at `<prefix>webhook-secret:<tenant>`
/// (the same prefix as the API keys). Stored in clear: the gateway needs the
/// secret itself to sign, unlike an API key, which it only compares.
#[derive(Clone)]
pub struct WebhookSecrets {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSecrets").field("prefix", &self.prefix).finish()
    }
}

fn check_tenant(t: &str) -> Result<(), WebhookError> {
    let ok = !t.is_empty()
        && t.len() <= 64
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(WebhookError::BadTenant(t.to_owned())) }
}

fn new_secret() -> String {
    // Two v4 UUIDs: 244 bits from the operating system's CSPRNG.
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{SECRET_PREFIX}{a}{b}")
}

impl WebhookSecrets {
    /// Secrets over an existing connection; `prefix` as the gateway's
    /// `key_prefix` (`osa:` by default).
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self { conn, prefix: prefix.to_owned() }
    }

    /// Connects to `url` (`redis://...`); `timeout` bounds each request.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, WebhookError> {
        let conn = crate::store::connect(url, timeout).await.map_err(|e| match e {
            crate::store::StoreError::Redis(m) => WebhookError::Redis(m),
            other => WebhookError::Redis(other.to_string()),
        })?;
        Ok(Self::new(conn, prefix))
    }

    fn key(&self, tenant: &str) -> String {
        format!("{}webhook-secret:{tenant}", self.prefix)
    }

    /// The tenant's secret, created on first use. Concurrent first calls
    /// agree on one secret (SET NX).
    pub async fn get_or_create(&self, tenant: &str) -> Result<String, WebhookError> {
        check_tenant(tenant)?;
        let key = self.key(tenant);
        let mut conn = self.conn.clone();
        if let Some(s) = conn.get::<_, Option<String>>(&key).await.map_err(redis_err)? {
            return Ok(s);
        }
        let fresh = new_secret();
        let created: bool = conn.set_nx(&key, &fresh).await.map_err(redis_err)?;
        if created {
            return Ok(fresh);
        }
        // Another gateway created it between our GET and SET NX.
        let existing: Option<String> = conn.get(&key).await.map_err(redis_err)?;
        existing.ok_or_else(|| WebhookError::Redis(format!("{key} vanished while being created")))
    }

    /// Replaces the tenant's secret with a new one and returns it. Deliveries
    /// signed from now on use the new secret.
    pub async fn rotate(&self, tenant: &str) -> Result<String, WebhookError> {
        check_tenant(tenant)?;
        let fresh = new_secret();
        let mut conn = self.conn.clone();
        let () = conn.set(self.key(tenant), &fresh).await.map_err(redis_err)?;
        Ok(fresh)
    }
}

/// True for addresses reachable on the public internet; false for loopback,
/// private, link-local, CGNAT, documentation, multicast and unspecified ones
/// (the cloud metadata service 169.254.169.254 among them).
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// DNS resolution that drops non-public addresses, so a public-looking name
/// pointing at 10.0.0.1 is refused too.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Sends completion webhooks. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    settings: WebhookSettings,
    secrets: WebhookSecrets,
    client: reqwest::Client,
    /// Bounds attempts in flight (sockets, memory) whatever the job rate.
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("settings", &self.settings).finish()
    }
}

/// How an attempt ended.
enum Attempt {
    Delivered,
    /// The receiver refused (4xx other than 429, 3xx): do not retry.
    Refused(u16),
    /// Worth retrying (network error, 5xx, 429), after at least this long
    /// when the receiver said so (`Retry-After`).
    Retry(String, Option<Duration>),
}

impl Webhooks {
    /// Builds the HTTP client (rustls, no redirects, `settings.timeout` per
    /// attempt).
    pub fn new(settings: WebhookSettings, secrets: WebhookSecrets) -> Result<Self, WebhookError> {
        settings.validate().map_err(WebhookError::Setup)?;
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!settings.allow_http)
            .user_agent(concat!("osa-gateway/", env!("CARGO_PKG_VERSION"), " (webhook)"));
        if !settings.allow_private_addresses {
            builder = builder.dns_resolver(PublicOnly);
        }
        let client = builder
            .build()
            .map_err(|e| WebhookError::Setup(format!("webhook HTTP client: {e}")))?;
        let slots = Arc::new(Semaphore::new(settings.max_concurrent));
        Ok(Self { settings, secrets, client, slots })
    }

    /// Checks a client's webhook URL: at most [`MAX_URL_LEN`] characters,
    /// https (or http when `allow_http`), a host, no credentials, and unless
    /// `allow_private_addresses`, not a literal non-public address. The error
    /// says what is wrong (for `ServiceError::invalid("webhook_url", ..)`).
    pub fn validate_url(&self, url: &str) -> Result<(), String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} characters ({})", url.len()));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.settings.allow_http => {}
            "http" => return Err("must be https".into()),
            other => return Err(format!("scheme {other:?} is not https")),
        }
        let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
            return Err("has no host".into());
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("must not carry credentials".into());
        }
        if !self.settings.allow_private_addresses {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>()
                && !is_public(ip)
            {
                return Err(format!("{host} is not a public address"));
            }
            if bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost") {
                return Err(format!("{host} is not a public address"));
            }
        }
        Ok(())
    }

    /// Delivers `job` to `url` for `tenant` in a spawned task; the handle
    /// says whether it was delivered. Counts the outcome in
    /// `osa_gateway_webhook_deliveries_total{outcome}` (delivered, refused,
    /// exhausted, invalid_url).
    pub fn deliver(&self, tenant: &str, url: &str, job: &v1::Job) -> tokio::task::JoinHandle<bool> {
        let this = self.clone();
        let tenant = tenant.to_owned();
        let url = url.to_owned();
        let job_id = job.job_id.clone();
        let body = bytes::Bytes::from(job_json(job));
        tokio::spawn(async move {
            let outcome = this.run(&tenant, &url, &job_id, body).await;
            metrics::counter!("osa_gateway_webhook_deliveries_total", "outcome" => outcome)
                .increment(1);
            outcome == "delivered"
        })
    }

    async fn run(&self, tenant: &str, url: &str, job_id: &str, body: bytes::Bytes) -> &'static str {
        if let Err(reason) = self.validate_url(url) {
            tracing::warn!(tenant, job_id, %reason, "webhook url refused");
            return "invalid_url";
        }
        let host = reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_owned));
        let host = host.unwrap_or_default();
        let mut secret: Option<String> = None;
        let s = &self.settings;
        for attempt in 1..=s.max_attempts {
            let result = {
                // Closed only if the semaphore were closed, which it never is.
                let _slot = self.slots.acquire().await;
                self.attempt(tenant, url, &body, &mut secret).await
            };
            let (reason, at_least) = match result {
                Attempt::Delivered => {
                    tracing::info!(tenant, job_id, host, attempt, "webhook delivered");
                    return "delivered";
                }
                Attempt::Refused(status) => {
                    tracing::warn!(tenant, job_id, host, attempt, status, "webhook refused");
                    return "refused";
                }
                Attempt::Retry(reason, at_least) => (reason, at_least),
            };
            if attempt == s.max_attempts {
                tracing::warn!(tenant, job_id, host, attempt, %reason, "webhook given up");
                break;
            }
            let wait = backoff(s, attempt).max(at_least.unwrap_or_default()).min(s.max_backoff);
            tracing::info!(tenant, job_id, host, attempt, %reason, ?wait, "webhook retry");
            tokio::time::sleep(wait).await;
        }
        "exhausted"
    }

    async fn attempt(
        &self,
        tenant: &str,
        url: &str,
        body: &bytes::Bytes,
        secret: &mut Option<String>,
    ) -> Attempt {
        let key = match secret {
            Some(k) => k.clone(),
            None => match self.secrets.get_or_create(tenant).await {
                Ok(k) => secret.insert(k).clone(),
                Err(e) => return Attempt::Retry(format!("webhook secret: {e}"), None),
            },
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(key.as_bytes(), now, body))
            .body(body.clone())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(error_chain(&e), None),
        };
        let status = response.status();
        if status.is_success() {
            Attempt::Delivered
        } else if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            Attempt::Retry(format!("HTTP {status}"), after)
        } else {
            Attempt::Refused(status.as_u16())
        }
    }
}

/// The wait after failed attempt `attempt` (1-based): `initial * 2^(n-1)`
/// capped at `max`, then scaled by a random factor in [0.5, 1] so that many
/// deliveries failing together do not retry in lockstep.
fn backoff(s: &WebhookSettings, attempt: u32) -> Duration {
    let exp = s.initial_backoff.saturating_mul(1u32 << (attempt - 1).min(20));
    exp.min(s.max_backoff).mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// An error with its sources ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for private in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254"]
            .into_iter()
            .chain(["100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"])
        {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        use reqwest::dns::Resolve as _;
        for name in ["localhost", "127.0.0.1", "10.0.0.7"] {
            let err = PublicOnly.resolve(name.parse().unwrap()).await.err();
            let err = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("no public address"), "{name}: {err:?}");
        }
        // A literal resolves without DNS: no network needed.
        let addrs: Vec<_> = PublicOnly.resolve("1.1.1.1".parse().unwrap()).await.unwrap().collect();
        assert_eq!(addrs, vec![SocketAddr::from(([1, 1, 1, 1], 0))]);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let s = WebhookSettings {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let d = backoff(&s, attempt).as_secs_f64() * 1000.0;
            assert!(d >= full as f64 * 0.5 - 1e-6 && d <= full as f64 + 1e-6, "{attempt}: {d}");
        }
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }
}
