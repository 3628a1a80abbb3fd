//! Test servers for the runtime's own integration tests: the scaffold's
//! `Ticker` service served by [`osa_runtime::serve::serve`] on 127.0.0.1:0,
//! counting the calls it receives.

#![allow(dead_code)] // each test binary uses a part

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::Stream;
use osa_runtime::{
    Shutdown,
    serve::{ServeError, ServiceSet, serve},
    settings::GrpcSettings,
    testing::{TickReply, TickRequest, ticker_server},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{Request, Response, Status};

/// Sends `count` ticks `interval_ms` apart (the first at once) and counts
/// its calls.
#[derive(Debug, Default, Clone)]
pub struct CountingTicker {
    pub calls: Arc<AtomicUsize>,
}

type TickStream = Pin<Box<dyn Stream<Item = Result<TickReply, Status>> + Send>>;

#[tonic::async_trait]
impl ticker_server::Ticker for CountingTicker {
    type TickStream = TickStream;

    async fn tick(&self, request: Request<TickRequest>) -> Result<Response<TickStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let TickRequest { count, interval_ms } = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for index in 0..count {
                if tx.send(Ok(TickReply { index, traceparent: String::new() })).await.is_err() {
                    return; // the client left
                }
                tokio::time::sleep(Duration::from_millis(u64::from(interval_ms))).await;
            }
        });
        let stream =
            futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
            );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A running Ticker server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
    pub shutdown: Shutdown,
    pub task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Serves on a free loopback port with these settings (`listen` is
    /// ignored).
    pub async fn start(grpc: GrpcSettings) -> Self {
        Self::serve(grpc, TcpListener::bind("127.0.0.1:0").await.unwrap(), async { Ok(()) })
    }

    /// Plaintext, NOT_SERVING until `warm_up` returns.
    pub async fn start_warming(
        warm_up: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        let grpc = GrpcSettings { drain_timeout: Duration::from_secs(1), ..Default::default() };
        Self::serve(grpc, TcpListener::bind("127.0.0.1:0").await.unwrap(), warm_up)
    }

    /// A plaintext server on `listener` (a replica restarting on its port).
    pub fn plain_on(listener: TcpListener) -> Self {
        let grpc = GrpcSettings { drain_timeout: Duration::from_secs(1), ..Default::default() };
        Self::serve(grpc, listener, async { Ok(()) })
    }

    fn serve(
        grpc: GrpcSettings,
        listener: TcpListener,
        warm_up: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let ticker = CountingTicker::default();
        let calls = ticker.calls.clone();
        let shutdown = Shutdown::new();
        let services = ServiceSet::new().with(ticker_server::TickerServer::new(ticker));
        let stop = shutdown.clone();
        let task =
            tokio::spawn(
                async move { serve("ticker", &grpc, services, listener, warm_up, stop).await },
            );
        Self { addr, calls, shutdown, task }
    }

    /// Plaintext with a short drain.
    pub async fn plain() -> Self {
        Self::start(GrpcSettings { drain_timeout: Duration::from_secs(1), ..Default::default() })
            .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Triggers the shutdown and waits for the server to stop.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("server stops within 5 s")
            .unwrap()
            .unwrap();
    }
}

/// Polls `cond` every 5 ms until it holds; panics with `what` after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
