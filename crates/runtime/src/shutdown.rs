//! Shutdown signalling: one token cancelled by SIGTERM/SIGINT (Kubernetes
//! sends SIGTERM, then SIGKILL after terminationGracePeriodSeconds) or by a
//! test.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown trigger. Cancelling it starts the drain: health goes
/// NOT_SERVING, the listener stops accepting, in-flight calls get the drain
/// deadline to finish.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the shutdown.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once the shutdown has started.
    pub async fn triggered(&self) {
        self.token.cancelled().await;
    }

    /// A child token: cancelled with this one, cancellable on its own.
    pub fn child_token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Triggers this shutdown on the first SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = this.triggered() => return,
            };
            tracing::info!(signal = which, "shutdown requested");
            this.trigger();
        });
        Ok(())
    }
}
