//! A streaming call counts as in flight until its stream ends, not only
//! until its response headers leave (autoscaling reads this gauge). Its own
//! test binary: the metrics recorder is process-wide.

use std::time::Duration;

use futures::StreamExt as _;
use osa_e2e::{sandbox, ticker};
use osa_runtime::{
    serve::{self, ServiceSet},
    settings::GrpcSettings,
    testing::{TickRequest, ticker_client::TickerClient},
};

fn in_flight() -> f64 {
    let text = osa_runtime::metrics::install().render();
    text.lines()
        .find(|l| l.starts_with("osa_grpc_requests_in_flight") && l.contains("Tick"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_stream_is_in_flight_until_it_ends() {
    osa_runtime::metrics::install();
    let server = sandbox::spawn(GrpcSettings::default(), |g, l, s| async move {
        serve::serve(
            "ticker",
            &g,
            ServiceSet::new().with(ticker::server()),
            l,
            async { Ok(()) },
            s,
        )
        .await?;
        Ok(())
    })
    .await
    .unwrap();
    let ch = server.channel().await.unwrap();
    sandbox::wait_serving(&ch, "").await.unwrap();
    let mut stream = TickerClient::new(ch)
        .tick(TickRequest { count: 3, interval_ms: 200 })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    assert_eq!(in_flight(), 1.0, "open stream");
    while stream.next().await.is_some() {}
    sandbox::wait_until("in-flight back to 0", Duration::from_secs(5), || async {
        in_flight() == 0.0
    })
    .await
    .unwrap();
    server.stop(Duration::from_secs(5)).await.unwrap();
}
