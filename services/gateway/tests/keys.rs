//! API keys in a real redis-server, and the authentication wrapper over real
//! gRPC: no key, a malformed, unknown or revoked key -> UNAUTHENTICATED; a
//! valid key reaches the handler with its tenant; Redis down -> UNAVAILABLE.

use std::{convert::Infallible, time::Duration};

use osa_gateway::{
    auth::Authenticated,
    keys::{ApiKeys, Tenant},
};
use osa_proto::v1::{GetServerInfoRequest, info_service_client::InfoServiceClient};
use osa_runtime::testkit::RedisServer;
use tonic::{Code, Request, transport::Channel};
use tower::ServiceExt as _;

async fn keys(redis: &RedisServer) -> ApiKeys {
    ApiKeys::connect(&redis.url(), "osa:", Duration::from_millis(500)).await.unwrap()
}

#[tokio::test]
async fn create_list_revoke_and_authenticate() {
    let redis = RedisServer::start().unwrap();
    let k = keys(&redis).await;
    let (id_a, key_a) = k.create("acme").await.unwrap();
    let (_, key_b) = k.create("globex").await.unwrap();
    assert!(key_a.starts_with("osa_") && key_a.len() == 48, "{key_a}");
    assert_ne!(key_a, key_b);
    assert_eq!(k.authenticate(&key_a).await.unwrap(), Some(Tenant("acme".into())));
    assert_eq!(k.authenticate(&key_b).await.unwrap(), Some(Tenant("globex".into())));
    assert_eq!(k.list(None).await.unwrap().len(), 2);
    let acme = k.list(Some("acme")).await.unwrap();
    assert_eq!((acme.len(), acme[0].id.as_str()), (1, id_a.as_str()));
    // Only digests are stored: the key string appears nowhere in Redis.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    assert!(all.iter().all(|name| !name.contains(&key_a[4..])), "{all:?}");

    assert!(k.revoke(&id_a).await.unwrap());
    assert!(!k.revoke(&id_a).await.unwrap());
    assert_eq!(k.authenticate(&key_a).await.unwrap(), None);
    assert_eq!(k.list(Some("acme")).await.unwrap(), vec![]);
    assert_eq!(k.authenticate("osa_not-hex").await.unwrap(), None);
    assert!(k.create("bad tenant").await.is_err());
}

#[tokio::test]
async fn the_tenant_reaches_the_handler() {
    let redis = RedisServer::start().unwrap();
    let k = keys(&redis).await;
    let (_, key) = k.create("acme").await.unwrap();
    let handler = tower::service_fn(|req: http::Request<tonic::body::Body>| async move {
        let tenant = req.extensions().get::<Tenant>().cloned();
        assert_eq!(tenant, Some(Tenant("acme".into())));
        Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
    });
    let req = http::Request::builder()
        .uri("/osa.v1.AvatarService/GetAvatar")
        .header("authorization", format!("Bearer {key}"))
        .body(tonic::body::Body::empty())
        .unwrap();
    let resp = Authenticated::new(handler, k).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated() {
    let mut redis = RedisServer::start().unwrap();
    let k = keys(&redis).await;
    let (id, key) = k.create("acme").await.unwrap();
    let settings = osa_gateway::Settings::default();
    let info = osa_proto::v1::info_service_server::InfoServiceServer::new(
        osa_gateway::info_service(&settings),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = osa_runtime::Shutdown::new();
    let grpc = settings.grpc.clone();
    let services = osa_runtime::serve::ServiceSet::new().with(Authenticated::new(info, k.clone()));
    let server = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            osa_runtime::serve::serve("test", &grpc, services, listener, async { Ok(()) }, shutdown)
                .await
        })
    };
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let call = |auth: Option<String>| {
        let mut c = InfoServiceClient::new(channel.clone());
        async move {
            let mut req = Request::new(GetServerInfoRequest {});
            if let Some(a) = auth {
                req.metadata_mut().insert("authorization", a.parse().unwrap());
            }
            c.get_server_info(req).await
        }
    };
    assert!(call(Some(format!("Bearer {key}"))).await.is_ok());
    for auth in [None, Some("Bearer nope".to_owned()), Some(format!("Basic {key}"))] {
        let err = call(auth.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{auth:?}: {err:?}");
    }
    k.revoke(&id).await.unwrap();
    let err = call(Some(format!("Bearer {key}"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("revoked"), "{}", err.message());
    redis.stop();
    let err = call(Some(format!("Bearer {key}"))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("redis"), "{}", err.message());
    shutdown.trigger();
    server.await.unwrap().unwrap();
}
