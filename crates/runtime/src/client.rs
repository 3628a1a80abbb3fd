//! Channels to other stages, with the same message limits and trace
//! propagation as the servers.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

pub use crate::telemetry::TraceContextInterceptor;

/// Why an endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: tonic::transport::Error },
}

/// Options for outgoing channels.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// An endpoint for `url` (`http://host:port`), validated.
pub fn endpoint(url: &str, opts: &ClientOptions) -> Result<Endpoint, ClientError> {
    let ep = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::InvalidEndpoint {
        endpoint: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(ep
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

/// Connects now (fails fast when nothing listens).
pub async fn connect(url: &str, opts: &ClientOptions) -> Result<Channel, ClientError> {
    endpoint(url, opts)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect { endpoint: url.to_owned(), source })
}
