//! Channels to other stages, with the same message limits and trace
//! propagation as the servers.
//!
//! `https://` endpoints use TLS (rustls with the ring provider, no OpenSSL):
//! the server is checked against the CA in [`ClientTlsSettings::ca_path`], or
//! against the Mozilla roots (webpki-roots) when none is given; a client
//! certificate and key make it mutual TLS. `http://` endpoints stay plaintext.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::settings::SettingsError;
pub use crate::telemetry::TraceContextInterceptor;

/// Why an endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {}", crate::settings::error_chain(source))]
    Connect { endpoint: String, source: tonic::transport::Error },
    /// The client TLS settings could not be turned into a TLS configuration
    /// (a file missing or unreadable, or not PEM).
    #[error("client tls: {0}")]
    Tls(String),
    /// A balanced channel needs a tokio runtime for its background tasks.
    #[error("balanced channel for stage {stage}: {reason}")]
    Runtime { stage: String, reason: String },
}

/// TLS for outgoing `https://` channels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsSettings {
    /// PEM CA certificate(s) the server's certificate must chain to. None:
    /// the Mozilla roots (webpki-roots).
    pub ca_path: Option<PathBuf>,
    /// Name the server's certificate must carry, when it differs from the
    /// endpoint's host (e.g. connecting by IP to a certificate for a name).
    pub domain: Option<String>,
    /// PEM client certificate for mutual TLS (needs `key_path`).
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
}

impl ClientTlsSettings {
    /// Checks the combination and that the files are readable; `key` names
    /// this section in errors (e.g. `gateway.stages.tls`).
    pub fn validate(&self, key: &str) -> Result<(), SettingsError> {
        match (&self.cert_path, &self.key_path) {
            (Some(_), None) => {
                return Err(SettingsError::invalid(
                    &format!("{key}.key_path"),
                    "cert_path is set: the client certificate needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::invalid(
                    &format!("{key}.cert_path"),
                    "key_path is set: the client key needs its certificate",
                ));
            }
            _ => {}
        }
        for (field, path) in [
            ("ca_path", &self.ca_path),
            ("cert_path", &self.cert_path),
            ("key_path", &self.key_path),
        ] {
            if let Some(path) = path {
                std::fs::read(path).map_err(|e| {
                    SettingsError::invalid(
                        &format!("{key}.{field}"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            }
        }
        if self.domain.as_deref().is_some_and(str::is_empty) {
            return Err(SettingsError::invalid(&format!("{key}.domain"), "must not be empty"));
        }
        Ok(())
    }

    /// Reads the files into a tonic TLS configuration.
    pub fn to_tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        install_crypto_provider();
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read {what} {}: {e}", path.display()))
            })
        };
        let mut config = ClientTlsConfig::new();
        config = match &self.ca_path {
            Some(path) => config.ca_certificate(Certificate::from_pem(read("ca_path", path)?)),
            None => config.with_webpki_roots(),
        };
        if let Some(domain) = &self.domain {
            config = config.domain_name(domain.clone());
        }
        match (&self.cert_path, &self.key_path) {
            (Some(cert), Some(key)) => {
                config = config
                    .identity(Identity::from_pem(read("cert_path", cert)?, read("key_path", key)?));
            }
            (None, None) => {}
            _ => {
                return Err(ClientError::Tls(
                    "a client certificate needs both cert_path and key_path".into(),
                ));
            }
        }
        Ok(config)
    }
}

/// Options for outgoing channels.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// TLS for `https://` endpoints. None: `https://` endpoints check the
    /// server against the Mozilla roots, without a client certificate.
    pub tls: Option<ClientTlsSettings>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            tls: None,
        }
    }
}

impl ClientOptions {
    /// The TLS configuration `https://` endpoints use (files read now).
    pub fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        self.tls.clone().unwrap_or_default().to_tls_config()
    }
}

/// An endpoint for `url` (`http://host:port` or `https://host:port`),
/// validated; `https://` gets the TLS configuration of `opts`.
pub fn endpoint(url: &str, opts: &ClientOptions) -> Result<Endpoint, ClientError> {
    let tls = if is_https(url) { Some(opts.tls_config()?) } else { None };
    endpoint_with_tls(url, opts, tls)
}

/// Like [`endpoint`], with a TLS configuration built beforehand (so the
/// files are read once for many endpoints). `tls` is used only for
/// `https://` URLs.
pub(crate) fn endpoint_with_tls(
    url: &str,
    opts: &ClientOptions,
    tls: Option<ClientTlsConfig>,
) -> Result<Endpoint, ClientError> {
    let invalid =
        |reason: String| ClientError::InvalidEndpoint { endpoint: url.to_owned(), reason };
    let ep = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(e.to_string()))?;
    match ep.uri().scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(invalid("must start with http:// or https://".into())),
    }
    if ep.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("has no host".into()));
    }
    let mut ep = ep
        .connect_timeout(opts.connect_timeout)
        .http2_keep_alive_interval(opts.keepalive_interval)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if is_https(url) {
        let tls = match tls {
            Some(tls) => tls,
            None => opts.tls_config()?,
        };
        ep = ep.tls_config(tls).map_err(|e| invalid(format!("tls: {e}")))?;
    }
    Ok(ep)
}

fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// Connects now (fails fast when nothing listens).
pub async fn connect(url: &str, opts: &ClientOptions) -> Result<Channel, ClientError> {
    endpoint(url, opts)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect { endpoint: url.to_owned(), source })
}

/// Installs ring as the process's rustls crypto provider, once. rustls picks
/// a provider from its crate features only when exactly one is compiled in;
/// object_store (S3) brings aws-lc-rs beside tonic's ring, so every TLS
/// setup here names one. A provider installed earlier by the embedding
/// program wins.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
