//! How the client connects and how hard it retries.

use std::time::Duration;

/// Connection settings for [`Client::with_config`](crate::Client::with_config).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The gateway, `http://host:port` or `https://host:port`.
    pub url: String,
    /// Sent as `authorization: Bearer <key>` on every call. Only
    /// `GetServerInfo` works without one.
    pub api_key: Option<String>,
    /// How long to wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Largest gRPC message sent or received, in bytes. Image and audio
    /// uploads are single messages, so this bounds what can be uploaded; the
    /// gateway publishes its own limit in `ServerInfo.limits`.
    pub max_message_bytes: usize,
    /// PEM CA certificate(s) to trust for an `https` URL instead of the
    /// public web roots (a private or self-signed deployment).
    pub ca_pem: Option<Vec<u8>>,
    /// Retries of idempotent calls and resumptions of broken streams.
    pub retry: RetryPolicy,
    /// Live-session requests buffered before [`LiveSender`](crate::LiveSender)
    /// calls wait (backpressure when the network or server is slower than
    /// the audio source).
    pub live_buffer: usize,
}

impl ClientConfig {
    /// Defaults for `url`: no key, 5 s connect timeout, the project's
    /// message limit, the default retry policy.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            connect_timeout: Duration::from_secs(5),
            max_message_bytes: osa_proto::DEFAULT_MAX_MESSAGE_BYTES,
            ca_pem: None,
            retry: RetryPolicy::default(),
            live_buffer: 16,
        }
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }
}

/// Bounded retries with exponential backoff.
///
/// Only calls that are safe to repeat are retried: reads (get, list, watch,
/// fetch) and a submit that carries an idempotency key. A server's
/// `retry-after-ms` hint overrides the computed backoff (capped at
/// `max_backoff`).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 disables retries). For a
    /// stream, the attempts allowed in a row without progress.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles after each.
    pub initial_backoff: Duration,
    /// Longest single wait.
    pub max_backoff: Duration,
    /// Most times one download or watch is resumed in all, progress or not,
    /// so a server that keeps breaking streams cannot hold a caller forever.
    pub max_resumes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_resumes: 20,
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `retry` (from 1), given the
    /// server's hint.
    pub(crate) fn backoff(&self, retry: u32, hint: Option<Duration>) -> Duration {
        let computed = self.initial_backoff.saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        hint.unwrap_or(computed).min(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1, None), Duration::from_millis(100));
        assert_eq!(p.backoff(3, None), Duration::from_millis(400));
        assert_eq!(p.backoff(40, None), Duration::from_secs(5));
        assert_eq!(p.backoff(1, Some(Duration::from_millis(750))), Duration::from_millis(750));
        assert_eq!(p.backoff(1, Some(Duration::from_secs(60))), Duration::from_secs(5));
    }
}
