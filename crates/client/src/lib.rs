//! A friendly async client for osa's public gRPC API (`proto/osa/v1/api.proto`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), osa_client::Error> {
//! use std::path::Path;
//! let client = osa_client::Client::connect("http://127.0.0.1:50051", Some("osa_key")).await?;
//! let avatar = client.create_avatar_from_file(Path::new("face.jpg")).await?;
//! let job = client
//!     .render_file(
//!         &avatar.avatar_id,
//!         Path::new("speech.wav"),
//!         Path::new("out.mp4"),
//!         osa_client::RenderOptions::default(),
//!         |job| eprintln!("{:?}", job.progress),
//!     )
//!     .await?;
//! # let _ = job; Ok(()) }
//! ```
//!
//! The wire types are the generated [`osa_proto::v1`] ones (re-exported as
//! [`v1`]); this crate adds what every caller would otherwise write: the API
//! key on every call, bounded retries of idempotent calls (UNAVAILABLE, and
//! RESOURCE_EXHAUSTED after the server's `retry-after-ms`), a job watch that
//! reconnects, a result download that resumes at the byte it stopped and never
//! leaves a half-written file, and a live-session handle with bounded
//! buffering.

mod avatars;
mod config;
mod error;
mod jobs;
mod live;
mod retry;

use std::time::Duration;

use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

pub use config::{ClientConfig, RetryPolicy};
pub use error::{Error, RETRY_AFTER_MS, code_name};
pub use jobs::{RenderOptions, RenderRequest};
pub use live::{LiveEvent, LiveReceiver, LiveSender};
pub use osa_proto::v1;
/// gRPC status codes, as found in [`Error::Status`].
pub use tonic::Code;

use error::error_chain;
use v1::{
    avatar_service_client::AvatarServiceClient, info_service_client::InfoServiceClient,
    live_service_client::LiveServiceClient, render_service_client::RenderServiceClient,
};

/// The channel every generated client shares, with the API key attached.
type Transport = InterceptedService<Channel, BearerAuth>;

/// A connection to one gateway. Cloning is cheap and shares the connection
/// (HTTP/2 multiplexes calls), so clone it into tasks rather than connecting
/// again.
#[derive(Clone)]
pub struct Client {
    avatars: AvatarServiceClient<Transport>,
    render: RenderServiceClient<Transport>,
    live: LiveServiceClient<Transport>,
    info: InfoServiceClient<Transport>,
    retry: RetryPolicy,
    live_buffer: usize,
    max_message_bytes: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generated clients print nothing useful; the key must not be
        // printed at all.
        f.debug_struct("Client").field("retry", &self.retry).finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `url` (`http://host:port`, `https://host:port`, or
    /// `host:port` for plain http) with the default settings.
    pub async fn connect(url: &str, api_key: Option<&str>) -> Result<Client, Error> {
        let mut config = ClientConfig::new(url);
        config.api_key = api_key.map(str::to_owned);
        Self::with_config(config).await
    }

    /// Connects with explicit settings. Fails fast when nothing answers at
    /// the URL, so a wrong address is reported before any upload.
    pub async fn with_config(config: ClientConfig) -> Result<Client, Error> {
        let auth = BearerAuth::new(config.api_key.as_deref())?;
        let url = if config.url.contains("://") {
            config.url.clone()
        } else {
            format!("http://{}", config.url)
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::Connect(format!("invalid server URL {:?}: {e}", config.url)))?
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Keepalive pings detect a dead gateway during a long watch or
            // live session instead of waiting on a silent socket forever.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let endpoint = configure_tls(endpoint, &config)?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Error::Connect(format!("cannot connect to {url}: {}", error_chain(&e))))?;
        tracing::debug!(url = %url, "connected to gateway");
        Ok(Self::from_channel(channel, auth, &config))
    }

    fn from_channel(channel: Channel, auth: BearerAuth, config: &ClientConfig) -> Client {
        let max = config.max_message_bytes;
        Client {
            avatars: AvatarServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            render: RenderServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            live: LiveServiceClient::with_interceptor(channel.clone(), auth.clone())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            info: InfoServiceClient::with_interceptor(channel, auth)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            retry: config.retry.clone(),
            live_buffer: config.live_buffer.max(1),
            max_message_bytes: max,
        }
    }

    /// The model, presets and limits the deployment serves (needs no key).
    pub async fn server_info(&self) -> Result<v1::ServerInfo, Error> {
        self.retrying("GetServerInfo", || {
            let mut info = self.info.clone();
            async move { info.get_server_info(v1::GetServerInfoRequest {}).await }
        })
        .await
    }

    /// Rejects an upload the client itself would refuse to encode, with a
    /// message that says which input and which limit.
    fn check_upload(&self, what: &str, len: usize) -> Result<(), Error> {
        // Room for the other fields of the request message.
        const OVERHEAD: usize = 4096;
        if len.saturating_add(OVERHEAD) > self.max_message_bytes {
            return Err(Error::InvalidInput(format!(
                "{what} is {len} bytes; this client sends messages of at most {} bytes \
                 (ClientConfig::max_message_bytes)",
                self.max_message_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(feature = "tls")]
fn configure_tls(endpoint: Endpoint, config: &ClientConfig) -> Result<Endpoint, Error> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    if endpoint.uri().scheme_str() != Some("https") {
        if config.ca_pem.is_some() {
            return Err(Error::Connect(format!(
                "a CA certificate was given but {:?} is not an https URL",
                config.url
            )));
        }
        return Ok(endpoint);
    }
    // rustls needs one process-wide provider; when the program also links
    // another (aws-lc-rs, e.g. through object_store) it cannot pick one, so
    // name ring unless the program installed its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = match &config.ca_pem {
        Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
        None => ClientTlsConfig::new().with_webpki_roots(),
    };
    endpoint.tls_config(tls).map_err(|e| {
        Error::Connect(format!("TLS settings for {}: {}", config.url, error_chain(&e)))
    })
}

#[cfg(not(feature = "tls"))]
fn configure_tls(endpoint: Endpoint, config: &ClientConfig) -> Result<Endpoint, Error> {
    if endpoint.uri().scheme_str() == Some("https") || config.ca_pem.is_some() {
        return Err(Error::Connect(format!(
            "{}: https needs osa-client's \"tls\" feature",
            config.url
        )));
    }
    Ok(endpoint)
}

/// Adds `authorization: Bearer <key>` to every outgoing call.
#[derive(Clone)]
struct BearerAuth {
    header: Option<AsciiMetadataValue>,
}

impl BearerAuth {
    fn new(key: Option<&str>) -> Result<Self, Error> {
        let header = match key.map(str::trim) {
            // An empty key (e.g. OSA_API_KEY="") is no key: the server then
            // answers UNAUTHENTICATED, which is clearer than a malformed
            // header.
            None | Some("") => None,
            Some(key) => Some(MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| {
                Error::InvalidInput("the API key holds characters not allowed in a header".into())
            })?),
        };
        Ok(Self { header })
    }
}

impl Interceptor for BearerAuth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    }
}
