//! The scaffold's streaming test service (`osa.testing.v1.Ticker`): sends
//! `count` ticks `interval_ms` apart, echoing the `traceparent` it received.

use std::{pin::Pin, time::Duration};

use futures::Stream;
use osa_runtime::testing::{TickReply, TickRequest, ticker_server};
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

#[derive(Debug, Default, Clone)]
pub struct Ticker;

type TickStream = Pin<Box<dyn Stream<Item = Result<TickReply, Status>> + Send>>;

#[tonic::async_trait]
impl ticker_server::Ticker for Ticker {
    type TickStream = TickStream;

    async fn tick(&self, request: Request<TickRequest>) -> Result<Response<TickStream>, Status> {
        let traceparent = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let TickRequest { count, interval_ms } = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(
            async move {
                for index in 0..count {
                    tracing::info!(index, "tick");
                    if tx
                        .send(Ok(TickReply { index, traceparent: traceparent.clone() }))
                        .await
                        .is_err()
                    {
                        return; // the client left
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(interval_ms))).await;
                }
            }
            .instrument(tracing::info_span!("ticker.stream", count)),
        );
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// The tonic server for [`Ticker`].
pub fn server() -> ticker_server::TickerServer<Ticker> {
    ticker_server::TickerServer::new(Ticker)
}
