//! The per-key rate limit over real gRPC: a burst over the rate gets
//! RESOURCE_EXHAUSTED with `retry-after-ms`, then after that wait the call
//! succeeds; keys are independent; services sharing a limiter share a
//! key's bucket.

use std::{convert::Infallible, time::Duration};

use osa_gateway::quota::{RateLimited, RateLimiter};
use osa_proto::v1::{
    GetServerInfoRequest, info_service_client::InfoServiceClient,
    info_service_server::InfoServiceServer,
};
use osa_runtime::error::RETRY_AFTER_MS;
use tonic::{Code, Request, transport::Channel};
use tower::ServiceExt as _;

async fn call(channel: &Channel, key: Option<&str>) -> Result<(), tonic::Status> {
    let mut req = Request::new(GetServerInfoRequest {});
    if let Some(k) = key {
        req.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    InfoServiceClient::new(channel.clone()).get_server_info(req).await.map(|_| ())
}

#[tokio::test]
async fn over_the_rate_is_resource_exhausted_with_retry_after() {
    let settings = osa_gateway::Settings::default();
    let info = InfoServiceServer::new(osa_gateway::info_service(&settings));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = osa_runtime::Shutdown::new();
    let grpc = settings.grpc.clone();
    // 5 per second: a burst of 5, then one token every 200 ms.
    let services = osa_runtime::serve::ServiceSet::new().with(RateLimited::new(info, 5.0));
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            osa_runtime::serve::serve("test", &grpc, services, listener, async { Ok(()) }, shutdown)
                .await
        })
    };
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();

    for i in 0..5 {
        call(&channel, Some("key-a")).await.unwrap_or_else(|e| panic!("call {i}: {e:?}"));
    }
    let err = call(&channel, Some("key-a")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("rate limit"), "{}", err.message());
    let retry_ms: u64 = err
        .metadata()
        .get(RETRY_AFTER_MS)
        .expect("retry-after-ms")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=200).contains(&retry_ms), "retry-after-ms {retry_ms}");

    // Another key has its own bucket; calls without a key are not limited
    // here (authentication refuses them).
    for _ in 0..5 {
        call(&channel, Some("key-b")).await.unwrap();
    }
    for _ in 0..8 {
        call(&channel, None).await.unwrap();
    }
    assert_eq!(call(&channel, Some("key-b")).await.unwrap_err().code(), Code::ResourceExhausted);

    // Waiting as told is enough.
    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    call(&channel, Some("key-a")).await.unwrap();
    assert_eq!(call(&channel, Some("key-a")).await.unwrap_err().code(), Code::ResourceExhausted);

    shutdown.trigger();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn services_sharing_a_limiter_share_each_keys_bucket() {
    let ok = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
        Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let limiter = RateLimiter::new(2.0);
    let avatars = RateLimited::with_limiter(ok, limiter.clone());
    let jobs = tower::Layer::layer(&osa_gateway::quota::RateLimitLayer::new(limiter.clone()), ok);
    let req = |key: &str| {
        http::Request::builder()
            .uri("/osa.v1.RenderService/GetJob")
            .header("authorization", format!("Bearer {key}"))
            .body(tonic::body::Body::empty())
            .unwrap()
    };
    let grpc_status = |resp: &http::Response<tonic::body::Body>| {
        resp.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_owned())
    };
    let first = avatars.clone().oneshot(req("k")).await.unwrap();
    let second = jobs.clone().oneshot(req("k")).await.unwrap();
    assert_eq!((grpc_status(&first), grpc_status(&second)), (None, None));
    // The third call of the key is over the shared burst of 2, whichever service.
    let third = avatars.clone().oneshot(req("k")).await.unwrap();
    assert_eq!(grpc_status(&third).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
    assert!(third.headers().get(RETRY_AFTER_MS).is_some());
    assert_eq!(grpc_status(&jobs.oneshot(req("other")).await.unwrap()), None);
    assert_eq!(limiter.tracked_keys(), 2);
}
