//! The serving scaffold over real gRPC on loopback: health follows warm-up
//! and shutdown, an in-flight stream drains, the drain deadline cuts,
//! reflection and metrics answer.

use std::time::Duration;

use futures::StreamExt as _;
use osa_e2e::{sandbox, ticker};
use osa_runtime::{
    serve::{self, ServiceSet},
    settings::GrpcSettings,
    testing::{TickRequest, ticker_client::TickerClient},
};
use tonic_health::pb::health_check_response::ServingStatus;

const TICKER: &str = "osa.testing.v1.Ticker";

fn grpc(drain: Duration) -> GrpcSettings {
    GrpcSettings { drain_timeout: drain, ..GrpcSettings::default() }
}

/// Starts a Ticker server whose warm-up finishes when `warm` fires.
async fn ticker_server(
    drain: Duration,
    warm: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<sandbox::Running> {
    sandbox::spawn(grpc(drain), move |g, listener, shutdown| async move {
        let warm_up = async move { warm.await.map_err(|e| e.to_string()) };
        serve::serve(
            "ticker",
            &g,
            ServiceSet::new().with(ticker::server()),
            listener,
            warm_up,
            shutdown,
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn health_is_not_serving_until_warm_then_serving_then_not_serving_on_shutdown() {
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel();
    let server = ticker_server(Duration::from_secs(5), warm_rx).await.unwrap();
    let ch = server.channel().await.unwrap();

    for svc in ["", TICKER] {
        assert_eq!(sandbox::health(ch.clone(), svc).await.unwrap(), ServingStatus::NotServing);
    }
    warm_tx.send(()).unwrap();
    sandbox::wait_serving(&ch, "").await.unwrap();
    assert_eq!(sandbox::health(ch.clone(), TICKER).await.unwrap(), ServingStatus::Serving);

    // A watcher sees the flip to NOT_SERVING when shutdown starts.
    let mut watch = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .watch(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server.shutdown.trigger();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next()).await.unwrap();
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    drop(watch);
    tokio::time::timeout(Duration::from_secs(10), server.join).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_drains_an_in_flight_stream_to_its_end() {
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel();
    warm_tx.send(()).unwrap();
    let server = ticker_server(Duration::from_secs(20), warm_rx).await.unwrap();
    let ch = server.channel().await.unwrap();
    sandbox::wait_serving(&ch, TICKER).await.unwrap();

    let mut stream = TickerClient::new(ch)
        .tick(TickRequest { count: 8, interval_ms: 40 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().index, 0);
    let addr = server.addr;
    server.shutdown.trigger();

    // No new connections once draining...
    sandbox::wait_until("listener closed", Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await
    .unwrap();
    // ...but the stream in flight runs to its natural end.
    let mut seen = vec![0];
    while let Some(item) = stream.next().await {
        seen.push(item.expect("drained stream must end cleanly").index);
    }
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    tokio::time::timeout(Duration::from_secs(10), server.join).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn the_drain_deadline_cuts_a_stream_that_would_run_too_long() {
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel();
    warm_tx.send(()).unwrap();
    let server = ticker_server(Duration::from_millis(300), warm_rx).await.unwrap();
    let ch = server.channel().await.unwrap();
    sandbox::wait_serving(&ch, TICKER).await.unwrap();
    let mut stream = TickerClient::new(ch)
        .tick(TickRequest { count: 1000, interval_ms: 50 })
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    let started = std::time::Instant::now();
    server.shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), server.join).await.unwrap().unwrap().unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(5), "{took:?}");
    // The client sees its stream cut early with UNAVAILABLE (retry
    // elsewhere), not 1000 ticks.
    let mut got = 1;
    let status = loop {
        match stream.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(status)) => break status,
            None => panic!("stream ended without an error after {got} ticks"),
        }
    };
    assert!(got < 100, "stream was not cut: {got} ticks");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn a_failed_warm_up_keeps_the_server_not_serving() {
    let (warm_tx, warm_rx) = tokio::sync::oneshot::channel::<()>();
    drop(warm_tx); // warm-up resolves to an error
    let server = ticker_server(Duration::from_secs(1), warm_rx).await.unwrap();
    let ch = server.channel().await.unwrap();
    // Give the warm-up task every chance to (wrongly) flip health.
    for _ in 0..20 {
        assert_eq!(sandbox::health(ch.clone(), "").await.unwrap(), ServingStatus::NotServing);
        tokio::task::yield_now().await;
    }
    server.stop(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn every_service_binary_serves_health_and_reflection() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    // The gateway serves once its Redis answers.
    let redis = osa_runtime::testkit::RedisServer::start().unwrap();
    let mut gateway_settings = osa_gateway::Settings::default();
    gateway_settings.redis.url = redis.url();
    let gateway = sandbox::spawn(gateway_settings, osa_gateway::run).await.unwrap();
    let audio = sandbox::spawn(osa_audio_encoder::Settings::default(), osa_audio_encoder::run)
        .await
        .unwrap();
    let generator =
        sandbox::spawn(osa_generator::Settings::default(), osa_generator::run).await.unwrap();
    let decoder = sandbox::spawn(osa_decoder::Settings::default(), osa_decoder::run).await.unwrap();

    for svc in [&gateway, &audio, &generator, &decoder] {
        let ch = svc.channel().await.unwrap();
        sandbox::wait_serving(&ch, "").await.unwrap();
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = ServerReflectionClient::new(ch)
            .server_reflection_info(tokio_stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("expected a service list");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "{names:?}");
    }
    let ch = gateway.channel().await.unwrap();
    assert_eq!(
        sandbox::health(ch.clone(), "osa.v1.InfoService").await.unwrap(),
        ServingStatus::Serving
    );
    let info = osa_proto::v1::info_service_client::InfoServiceClient::new(ch)
        .get_server_info(osa_proto::v1::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.model.as_ref().unwrap().preset, "tiny");
    assert_eq!(info.supported_steps, vec![1, 2, 4]);
    assert_eq!(info.limits.unwrap().max_image_bytes, 10 * 1024 * 1024);

    for svc in [gateway, audio, generator, decoder] {
        svc.stop(Duration::from_secs(10)).await.unwrap();
    }
}

#[tokio::test]
async fn the_metrics_endpoint_counts_rpcs() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let shutdown = osa_runtime::Shutdown::new();
    let metrics_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics_listener.local_addr().unwrap();
    tokio::spawn(osa_runtime::metrics::serve(metrics_listener, shutdown.clone()));

    // The gateway serves once its Redis answers.
    let redis = osa_runtime::testkit::RedisServer::start().unwrap();
    let mut gateway_settings = osa_gateway::Settings::default();
    gateway_settings.redis.url = redis.url();
    let gateway = sandbox::spawn(gateway_settings, osa_gateway::run).await.unwrap();
    let ch = gateway.channel().await.unwrap();
    sandbox::wait_serving(&ch, "").await.unwrap();
    let mut client = osa_proto::v1::info_service_client::InfoServiceClient::new(ch);
    for _ in 0..3 {
        client.get_server_info(osa_proto::v1::GetServerInfoRequest {}).await.unwrap();
    }

    let mut conn = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"), "{body}");
    let line = body
        .lines()
        .find(|l| l.starts_with("osa_grpc_requests_total") && l.contains("GetServerInfo"))
        .unwrap_or_else(|| panic!("no request counter in:\n{body}"));
    assert!(line.contains("code=\"Ok\""), "{line}");
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 3.0, "{line}");
    assert!(body.contains("osa_grpc_request_duration_seconds_bucket"), "{body}");
    shutdown.trigger();
    gateway.stop(Duration::from_secs(10)).await.unwrap();
}
