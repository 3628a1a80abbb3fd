//! W3C trace context crosses a real gRPC hop: the server's span, as received
//! by an OTLP collector, is a child of the client's span in the same trace.
//! (Its own test binary: it installs the process-wide tracing subscriber.)

use std::time::Duration;

use futures::StreamExt as _;
use osa_e2e::{collector::Collector, sandbox, ticker};
use osa_runtime::{
    client::TraceContextInterceptor,
    serve::{self, ServiceSet},
    settings::{GrpcSettings, TelemetrySettings},
    testing::{TickRequest, ticker_client::TickerClient},
};
use tracing::Instrument as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_a_grpc_hop() {
    let collector = Collector::default();
    let endpoint = collector.start().await.unwrap();
    let telemetry = TelemetrySettings {
        otlp_endpoint: endpoint,
        log_filter: "info".into(),
        ..TelemetrySettings::default()
    };
    let guard = osa_runtime::telemetry::init("osa-test", &telemetry).unwrap();

    // The gateway serves once its Redis answers.
    let redis = osa_runtime::testkit::RedisServer::start().unwrap();
    let mut gateway_settings = osa_gateway::Settings::default();
    gateway_settings.redis.url = redis.url();
    let gateway = sandbox::spawn(gateway_settings, osa_gateway::run).await.unwrap();
    let ticker = sandbox::spawn(GrpcSettings::default(), |g, l, s| async move {
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
    let gw_ch = gateway.channel().await.unwrap();
    let tk_ch = ticker.channel().await.unwrap();
    sandbox::wait_serving(&gw_ch, "").await.unwrap();
    sandbox::wait_serving(&tk_ch, "").await.unwrap();

    // A unary call and a stream, both under one client span.
    let root = tracing::info_span!("client.job");
    let traceparent = async {
        let mut info = osa_proto::v1::info_service_client::InfoServiceClient::with_interceptor(
            gw_ch,
            TraceContextInterceptor,
        );
        info.get_server_info(osa_proto::v1::GetServerInfoRequest {}).await.unwrap();
        let mut ticks = TickerClient::with_interceptor(tk_ch, TraceContextInterceptor)
            .tick(TickRequest { count: 2, interval_ms: 1 })
            .await
            .unwrap()
            .into_inner();
        let first = ticks.next().await.unwrap().unwrap();
        while ticks.next().await.is_some() {}
        first.traceparent
    }
    .instrument(root.clone())
    .await;
    drop(root);
    assert!(traceparent.starts_with("00-"), "server saw no traceparent: {traceparent:?}");

    // Export and wait for the collector to have all three spans.
    sandbox::wait_until("spans at the collector", Duration::from_secs(20), || {
        guard.flush();
        let spans = collector.spans();
        async move {
            ["client.job", "osa.v1.InfoService/GetServerInfo", "osa.testing.v1.Ticker/Tick"]
                .iter()
                .all(|n| spans.iter().any(|s| s.span.name == *n))
        }
    })
    .await
    .unwrap();
    let spans = collector.spans();
    let by_name = |n: &str| spans.iter().find(|s| s.span.name == n).unwrap().clone();
    let client = by_name("client.job");
    let info = by_name("osa.v1.InfoService/GetServerInfo");
    let tick = by_name("osa.testing.v1.Ticker/Tick");
    for server in [&info, &tick] {
        assert_eq!(
            server.trace_id(),
            client.trace_id(),
            "{} is in another trace",
            server.span.name
        );
        assert_eq!(
            server.parent_span_id(),
            client.span_id(),
            "{} has another parent",
            server.span.name
        );
        assert_eq!(server.service, "osa-test");
    }
    // The header the server saw carries the same trace id.
    assert!(traceparent.contains(&client.trace_id()), "{traceparent}");
    // Work done inside the stream is part of the same trace.
    let stream_span = by_name("ticker.stream");
    assert_eq!(stream_span.trace_id(), client.trace_id());

    gateway.stop(Duration::from_secs(10)).await.unwrap();
    ticker.stop(Duration::from_secs(10)).await.unwrap();
}
