//! `osa-generator`: serves `osa.v1.GeneratorService` (see proto/osa/v1/stages.proto).
//!
//! The serving scaffold is in place (health, reflection, metrics, tracing,
//! drain); the stage's RPCs are not served yet, so callers get UNIMPLEMENTED
//! from tonic until the stage lands.

pub mod context;

use osa_runtime::{
    Shutdown,
    serve::ServiceSet,
    settings::{BaseSettings, Common, ServiceSettings, SettingsError, Validate},
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

/// Everything `osa-generator` reads from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub BaseSettings);

impl Default for Settings {
    fn default() -> Self {
        Self(BaseSettings::on_ports(50053, 9093))
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), SettingsError> {
        self.0.validate()
    }
}

impl ServiceSettings for Settings {
    fn common(&self) -> Common<'_> {
        self.0.common()
    }
}

/// Serves the stage on `listener` until `shutdown` and the drain are over.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    osa_runtime::serve::serve(
        "osa-generator",
        &settings.0.grpc,
        ServiceSet::new(),
        listener,
        async { Ok(()) },
        shutdown,
    )
    .await?;
    Ok(())
}
