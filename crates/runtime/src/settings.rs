//! Layered configuration, parsed once into typed settings.
//!
//! Layers, later ones win:
//! 1. built-in defaults (each settings type's `Default`),
//! 2. an optional TOML file (`--config FILE` or `OSA_CONFIG`),
//! 3. environment variables `OSA__SECTION__KEY` (e.g.
//!    `OSA__GRPC__LISTEN=0.0.0.0:50051`, `OSA__TELEMETRY__LOG_FORMAT=json`).
//!
//! Unknown keys are errors (a typo must not silently fall back to a default),
//! and every error names the key and the layer it came from.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// Prefix of the environment variables read as settings.
pub const ENV_PREFIX: &str = "OSA";
/// Separator between prefix, section and key in those variables.
pub const ENV_SEPARATOR: &str = "__";

/// Why the settings could not be loaded. Printed as is before exiting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config file {path}: {source}")]
    File { path: String, source: config::ConfigError },
    #[error("configuration: {0}")]
    Parse(config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl SettingsError {
    pub fn invalid(key: &str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid { key: key.to_owned(), reason: reason.to_string() }
    }
}

/// Checks beyond what the types express (ranges, combinations).
pub trait Validate {
    fn validate(&self) -> Result<(), SettingsError>;
}

/// Settings every service has, borrowed from its own settings type.
#[derive(Debug, Clone, Copy)]
pub struct Common<'a> {
    pub grpc: &'a GrpcSettings,
    pub metrics: &'a MetricsSettings,
    pub telemetry: &'a TelemetrySettings,
}

/// A service's whole settings type.
pub trait ServiceSettings:
    Serialize + DeserializeOwned + Default + Validate + Clone + Send + Sync + 'static
{
    fn common(&self) -> Common<'_>;
}

/// Loads `T` from its defaults, the optional file and the process
/// environment.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    load_with_env(file, None)
}

/// Like [`load`], reading `env` instead of the process environment (tests).
pub fn load_with_env<T>(
    file: Option<&Path>,
    env: Option<HashMap<String, String>>,
) -> Result<T, SettingsError>
where
    T: Serialize + DeserializeOwned + Default + Validate,
{
    let defaults = config::Config::try_from(&T::default()).map_err(SettingsError::Parse)?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        if !path.is_file() {
            return Err(SettingsError::File {
                path: path.display().to_string(),
                source: config::ConfigError::Message("no such file".into()),
            });
        }
        builder = builder
            .add_source(config::File::from(path).format(config::FileFormat::Toml).required(true));
    }
    let environment = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .source(env);
    let merged = builder.add_source(environment).build().map_err(|e| match file {
        Some(p) => SettingsError::File { path: p.display().to_string(), source: e },
        None => SettingsError::Parse(e),
    })?;
    let settings: T = merged.try_deserialize().map_err(SettingsError::Parse)?;
    settings.validate()?;
    Ok(settings)
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The gRPC server of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcSettings {
    /// Address to listen on. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Largest message accepted or sent, in bytes (both directions).
    pub max_message_bytes: usize,
    /// After SIGTERM: how long in-flight calls may run before they are cut.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Concurrent requests served per connection; more wait.
    pub concurrency_limit_per_connection: usize,
    /// HTTP/2 keep-alive ping interval (detects dead peers).
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// TLS for the server (off by default: plaintext h2c).
    pub tls: TlsSettings,
}

/// TLS of a gRPC server: a certificate and key turn it on; a client CA
/// additionally requires every client to present a certificate it signed
/// (mutual TLS). Files are PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Server certificate chain (PEM), leaf first.
    pub cert_path: Option<PathBuf>,
    /// Private key of `cert_path` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_path: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; set: mutual TLS.
    pub client_ca_path: Option<PathBuf>,
}

impl TlsSettings {
    /// Whether the server speaks TLS.
    pub fn enabled(&self) -> bool {
        self.cert_path.is_some()
    }

    /// Reads the files into tonic's server TLS configuration; None when TLS
    /// is off. Errors name the key and the file.
    pub fn to_server_config(
        &self,
    ) -> Result<Option<tonic::transport::ServerTlsConfig>, SettingsError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |field: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                SettingsError::invalid(
                    &format!("grpc.tls.{field}"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })
        };
        let (cert, key) = match (&self.cert_path, &self.key_path) {
            (None, None) => {
                if self.client_ca_path.is_some() {
                    return Err(SettingsError::invalid(
                        "grpc.tls.client_ca_path",
                        "needs grpc.tls.cert_path and grpc.tls.key_path (mutual TLS is TLS)",
                    ));
                }
                return Ok(None);
            }
            (Some(_), None) => {
                return Err(SettingsError::invalid(
                    "grpc.tls.key_path",
                    "grpc.tls.cert_path is set: the certificate needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingsError::invalid(
                    "grpc.tls.cert_path",
                    "grpc.tls.key_path is set: the key needs its certificate",
                ));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        crate::client::install_crypto_provider();
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("cert_path", cert)?, read("key_path", key)?));
        if let Some(ca) = &self.client_ca_path {
            config = config.client_ca_root(Certificate::from_pem(read("client_ca_path", ca)?));
        }
        Ok(Some(config))
    }
}

impl GrpcSettings {
    /// Defaults listening on loopback at `port`.
    pub fn on_port(port: u16) -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], port)), ..Self::default() }
    }
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            max_message_bytes: osa_proto::DEFAULT_MAX_MESSAGE_BYTES,
            drain_timeout: Duration::from_secs(25),
            concurrency_limit_per_connection: 256,
            keepalive_interval: Duration::from_secs(30),
            tls: TlsSettings::default(),
        }
    }
}

impl Validate for GrpcSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if !(1024..=1 << 30).contains(&self.max_message_bytes) {
            return Err(SettingsError::invalid(
                "grpc.max_message_bytes",
                format!("{} is outside 1024..=1073741824", self.max_message_bytes),
            ));
        }
        if self.drain_timeout > Duration::from_secs(3600) {
            return Err(SettingsError::invalid("grpc.drain_timeout", "must be at most 1h"));
        }
        if self.concurrency_limit_per_connection == 0 {
            return Err(SettingsError::invalid(
                "grpc.concurrency_limit_per_connection",
                "must be at least 1",
            ));
        }
        // Read and parse the files now, so a bad certificate stops the
        // service at start with the key named, not at the first handshake.
        if let Some(config) = self.tls.to_server_config()? {
            let paths = [&self.tls.cert_path, &self.tls.key_path, &self.tls.client_ca_path]
                .into_iter()
                .flatten()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            tonic::transport::Server::builder().tls_config(config).map_err(|e| {
                SettingsError::invalid("grpc.tls", format!("{paths}: {}", error_chain(&e)))
            })?;
        }
        Ok(())
    }
}

/// `e` and its sources, `: `-separated (tonic's transport errors keep the
/// useful part in their source).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Serve `/metrics` over HTTP.
    pub enabled: bool,
    /// Address of the `/metrics` HTTP endpoint.
    pub listen: SocketAddr,
}

impl MetricsSettings {
    /// Defaults serving on loopback at `port`.
    pub fn on_port(port: u16) -> Self {
        Self { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self::on_port(9090)
    }
}

/// Logs and traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// `tracing` filter directives (RUST_LOG syntax), e.g. `info,osa=debug`.
    /// The `RUST_LOG` variable, when set, wins.
    pub log_filter: String,
    /// OTLP/gRPC collector endpoint (e.g. `http://otel-collector:4317`).
    /// Empty disables trace export; trace context is still propagated.
    pub otlp_endpoint: String,
    /// Fraction of new traces sampled, 0.0..=1.0 (a sampled parent always
    /// wins, so one job stays one whole trace).
    pub sample_ratio: f64,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Pretty,
            log_filter: "info".into(),
            otlp_endpoint: String::new(),
            sample_ratio: 1.0,
        }
    }
}

impl Validate for TelemetrySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(SettingsError::invalid(
                "telemetry.sample_ratio",
                format!("{} is outside 0.0..=1.0", self.sample_ratio),
            ));
        }
        let e = &self.otlp_endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(SettingsError::invalid(
                "telemetry.otlp_endpoint",
                format!("{:?} must start with http:// or https://", self.otlp_endpoint),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter)
            .map_err(|e| SettingsError::invalid("telemetry.log_filter", e))?;
        Ok(())
    }
}

/// Validates the three common sections (services call this first).
pub fn validate_common(c: Common<'_>) -> Result<(), SettingsError> {
    c.grpc.validate()?;
    c.telemetry.validate()
}

/// Settings of a service that has only the common sections (so far).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSettings {
    #[serde(default)]
    pub grpc: GrpcSettings,
    #[serde(default)]
    pub metrics: MetricsSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
}

impl BaseSettings {
    /// Defaults with the gRPC and metrics servers on loopback at these ports.
    pub fn on_ports(grpc: u16, metrics: u16) -> Self {
        Self {
            grpc: GrpcSettings::on_port(grpc),
            metrics: MetricsSettings::on_port(metrics),
            telemetry: TelemetrySettings::default(),
        }
    }

    pub fn common(&self) -> Common<'_> {
        Common { grpc: &self.grpc, metrics: &self.metrics, telemetry: &self.telemetry }
    }
}

impl Validate for BaseSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        validate_common(self.common())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service-shaped settings type, as each service defines its own.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Demo {
        grpc: GrpcSettings,
        metrics: MetricsSettings,
        telemetry: TelemetrySettings,
        demo: DemoSection,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct DemoSection {
        batch_size: usize,
        #[serde(with = "humantime_serde")]
        max_wait: Duration,
    }

    impl Default for Demo {
        fn default() -> Self {
            Self {
                grpc: GrpcSettings::on_port(50070),
                metrics: MetricsSettings::default(),
                telemetry: TelemetrySettings::default(),
                demo: DemoSection::default(),
            }
        }
    }

    impl Default for DemoSection {
        fn default() -> Self {
            Self { batch_size: 4, max_wait: Duration::from_millis(5) }
        }
    }

    impl Validate for Demo {
        fn validate(&self) -> Result<(), SettingsError> {
            validate_common(Common {
                grpc: &self.grpc,
                metrics: &self.metrics,
                telemetry: &self.telemetry,
            })?;
            if self.demo.batch_size == 0 {
                return Err(SettingsError::invalid("demo.batch_size", "must be at least 1"));
            }
            Ok(())
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn toml(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_alone() {
        let s: Demo = load_with_env(None, env(&[])).unwrap();
        assert_eq!(s, Demo::default());
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let f = toml(
            r#"
            [grpc]
            listen = "0.0.0.0:6000"
            drain_timeout = "5s"
            [demo]
            batch_size = 8
            max_wait = "20ms"
            "#,
        );
        let s: Demo = load_with_env(
            Some(f.path()),
            env(&[("OSA__DEMO__BATCH_SIZE", "16"), ("OSA__TELEMETRY__LOG_FORMAT", "json")]),
        )
        .unwrap();
        assert_eq!(s.grpc.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(s.grpc.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.demo.batch_size, 16, "env wins over the file");
        assert_eq!(s.demo.max_wait, Duration::from_millis(20), "file wins over defaults");
        assert_eq!(s.telemetry.log_format, LogFormat::Json);
        assert_eq!(s.grpc.max_message_bytes, osa_proto::DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let s: Demo =
            load_with_env(None, env(&[("OSA_CONFIG", "x.toml"), ("OSA_API_KEY", "k")])).unwrap();
        assert_eq!(s, Demo::default());
    }

    fn err_of(file: Option<&Path>, pairs: &[(&str, &str)]) -> String {
        load_with_env::<Demo>(file, env(pairs)).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = err_of(None, &[("OSA__GRPC__LISTEN", "not-an-address")]);
        assert!(e.contains("grpc.listen"), "{e}");
        let e = err_of(None, &[("OSA__DEMO__BATCH_SIZE", "many")]);
        assert!(e.contains("demo.batch_size"), "{e}");
        let e = err_of(None, &[("OSA__GRPC__DRAIN_TIMEOUT", "soon")]);
        assert!(e.contains("grpc.drain_timeout"), "{e}");
        let e = err_of(None, &[("OSA__TELEMETRY__SAMPLE_RATIO", "1.5")]);
        assert!(e.contains("telemetry.sample_ratio") && e.contains("1.5"), "{e}");
        let e = err_of(None, &[("OSA__DEMO__BATCH_SIZE", "0")]);
        assert!(e.contains("demo.batch_size") && e.contains("at least 1"), "{e}");
        let e = err_of(None, &[("OSA__TELEMETRY__OTLP_ENDPOINT", "collector:4317")]);
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
    }

    #[test]
    fn tls_files_come_from_the_environment_and_are_checked() {
        let e = err_of(
            None,
            &[
                ("OSA__GRPC__TLS__CERT_PATH", "/nonexistent/tls.crt"),
                ("OSA__GRPC__TLS__KEY_PATH", "/nonexistent/tls.key"),
            ],
        );
        assert!(e.contains("grpc.tls.cert_path") && e.contains("/nonexistent/tls.crt"), "{e}");
        let e = err_of(None, &[("OSA__GRPC__TLS__KEY_PATH", "/nonexistent/tls.key")]);
        assert!(e.contains("grpc.tls.cert_path"), "{e}");
        let f = toml("[grpc.tls]\ncert_path = \"/nonexistent/tls.crt\"\n");
        let e = err_of(Some(f.path()), &[]);
        assert!(e.contains("grpc.tls.key_path"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let f = toml("[grpc]\nlisten_addr = \"0.0.0.0:1\"\n");
        let e = err_of(Some(f.path()), &[]);
        assert!(e.contains("listen_addr"), "{e}");
        let e = err_of(None, &[("OSA__DEMO__BATCHSIZE", "3")]);
        assert!(e.contains("batchsize"), "{e}");
    }

    #[test]
    fn missing_or_malformed_file_is_an_error() {
        let e = err_of(Some(Path::new("/nonexistent/osa.toml")), &[]);
        assert!(e.contains("/nonexistent/osa.toml") && e.contains("no such file"), "{e}");
        let f = toml("[grpc\nlisten = 1");
        let e = err_of(Some(f.path()), &[]);
        assert!(e.contains(&f.path().display().to_string()), "{e}");
    }
}
