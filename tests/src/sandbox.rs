//! Services started in-process on loopback port 0, and polling helpers (no
//! sleeps: every wait polls with a deadline).

use std::{future::Future, net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use osa_runtime::Shutdown;
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A service running on a task of the test's runtime.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub join: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(osa_runtime::client::connect(&self.url(), &Default::default()).await?)
    }

    /// Triggers shutdown and waits (at most `within`) for the drain to end.
    pub async fn stop(self, within: Duration) -> anyhow::Result<()> {
        self.shutdown.trigger();
        tokio::time::timeout(within, self.join)
            .await
            .context("service did not stop in time")?
            .context("service task panicked")?
    }
}

/// Binds 127.0.0.1:0 and spawns `run(settings, listener, shutdown)`.
pub async fn spawn<S, F, Fut>(settings: S, run: F) -> anyhow::Result<Running>
where
    F: FnOnce(S, TcpListener, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let join = tokio::spawn(run(settings, listener, shutdown.clone()));
    Ok(Running { addr, shutdown, join })
}

/// Asks `service`'s health ("" = the whole server).
pub async fn health(channel: Channel, service: &str) -> anyhow::Result<ServingStatus> {
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.to_owned() })
        .await?
        .into_inner();
    Ok(ServingStatus::try_from(resp.status).unwrap_or(ServingStatus::Unknown))
}

/// Polls until `cond` returns true, failing after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `service` on `channel` reports SERVING.
pub async fn wait_serving(channel: &Channel, service: &str) -> anyhow::Result<()> {
    wait_until(&format!("{service:?} SERVING"), Duration::from_secs(20), || {
        let ch = channel.clone();
        async move { matches!(health(ch, service).await, Ok(ServingStatus::Serving)) }
    })
    .await
}
