//! Completion webhooks: signature vectors, the job JSON, URL checks, per-
//! tenant secrets in a real redis-server, and delivery to a local HTTP
//! receiver (retried on 5xx, not on 4xx, signed on every attempt).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use osa_gateway::webhook::{
    self, SIGNATURE_HEADER, WebhookSecrets, WebhookSettings, Webhooks, job_json, sign, verify,
};
use osa_proto::v1;
use osa_runtime::testkit::RedisServer;

const TOLERANCE: Duration = Duration::from_secs(300);

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn signatures_verify_and_tampering_fails() {
    let body = br#"{"job_id":"j1"}"#;
    let header = sign(b"whsec_test", 1_700_000_000, body);
    // Computed independently (Python's hmac module).
    assert_eq!(
        header,
        "t=1700000000,v1=7c9a1d70cb1f0ca11264a35181f25daa12113ea61378c7f660cc6bc62e2c5178"
    );
    let at = 1_700_000_000;
    assert!(verify(b"whsec_test", &header, body, at, TOLERANCE));
    assert!(verify(b"whsec_test", &header, body, at + 300, TOLERANCE));
    // Tampered body, wrong secret, too old, too far ahead.
    assert!(!verify(b"whsec_test", &header, br#"{"job_id":"j2"}"#, at, TOLERANCE));
    assert!(!verify(b"whsec_other", &header, body, at, TOLERANCE));
    assert!(!verify(b"whsec_test", &header, body, at + 301, TOLERANCE));
    assert!(!verify(b"whsec_test", &header, body, at - 301, TOLERANCE));
    // A timestamp changed without the MAC fails too.
    let moved = header.replace("t=1700000000", "t=1700000100");
    assert!(!verify(b"whsec_test", &moved, body, at + 100, TOLERANCE));
    // Malformed headers never verify.
    for bad in ["", "t=1700000000", "v1=00", "t=x,v1=7c9a", "t=1700000000,v1=zz"] {
        assert!(!verify(b"whsec_test", bad, body, at, TOLERANCE), "{bad:?}");
    }
    // During a rotation a receiver may see several v1 entries; any match counts.
    let other = sign(b"whsec_old", at, body);
    let both = format!("{header},{}", other.split_once(',').unwrap().1);
    assert!(verify(b"whsec_test", &both, body, at, TOLERANCE));
    assert!(verify(b"whsec_old", &both, body, at, TOLERANCE));
}

fn job() -> v1::Job {
    v1::Job {
        job_id: "0190a0b0-0000-7000-8000-000000000001".into(),
        avatar_id: "av1".into(),
        state: v1::JobState::Succeeded as i32,
        progress: Some(v1::Progress {
            clips_done: 3,
            clips_total: 3,
            media_seconds_done: 1.44,
            media_seconds_total: 1.44,
        }),
        fps: 25,
        sampling: Some(v1::SamplingOptions { steps: 2, seed: 42 }),
        result_bytes: 81_234,
        created_at: Some(prost_types::Timestamp { seconds: 1_767_225_600, nanos: 0 }),
        finished_at: Some(prost_types::Timestamp { seconds: 1_767_225_612, nanos: 500_000_000 }),
        ..Default::default()
    }
}

#[test]
fn the_body_is_the_job_as_json() {
    let v: serde_json::Value = serde_json::from_slice(&job_json(&job())).unwrap();
    assert_eq!(v["job_id"], "0190a0b0-0000-7000-8000-000000000001");
    assert_eq!(v["avatar_id"], "av1");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["progress"]["clips_done"], 3);
    assert_eq!(v["progress"]["media_seconds_total"], 1.44);
    assert_eq!(
        (v["fps"].as_u64(), v["steps"].as_u64(), v["seed"].as_u64()),
        (Some(25), Some(2), Some(42))
    );
    assert_eq!(v["result_bytes"], 81_234);
    assert_eq!(v["created_at"], "2026-01-01T00:00:00Z");
    assert_eq!(v["finished_at"], "2026-01-01T00:00:12.500Z");
    assert!(
        v["started_at"].is_null() && v["failure_reason"].is_null() && v["failure_code"].is_null()
    );

    let failed = v1::Job {
        state: v1::JobState::Failed as i32,
        failure_reason: "generator unavailable".into(),
        failure_code: "UNAVAILABLE".into(),
        ..job()
    };
    let v: serde_json::Value = serde_json::from_slice(&job_json(&failed)).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["failure_code"].as_str()),
        (Some("failed"), Some("UNAVAILABLE"))
    );
    assert_eq!(v["failure_reason"], "generator unavailable");
    let odd = v1::Job { state: 99, progress: None, ..Default::default() };
    let v: serde_json::Value = serde_json::from_slice(&job_json(&odd)).unwrap();
    assert_eq!(
        (v["state"].as_str(), v["progress"]["clips_total"].as_u64()),
        (Some("unspecified"), Some(0))
    );
}

async fn secrets(redis: &RedisServer) -> WebhookSecrets {
    WebhookSecrets::connect(&redis.url(), "osa:", Duration::from_millis(500)).await.unwrap()
}

fn fast(allow_local: bool) -> WebhookSettings {
    WebhookSettings {
        timeout: Duration::from_secs(2),
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        allow_http: allow_local,
        allow_private_addresses: allow_local,
        max_concurrent: 4,
    }
}

#[tokio::test]
async fn secrets_are_stable_per_tenant_and_rotate() {
    let redis = RedisServer::start().unwrap();
    let s = secrets(&redis).await;
    let a = s.get_or_create("acme").await.unwrap();
    assert!(a.starts_with(webhook::SECRET_PREFIX) && a.len() == 6 + 64, "{a}");
    assert_eq!(s.get_or_create("acme").await.unwrap(), a);
    // Another connection (another gateway) sees the same secret.
    assert_eq!(secrets(&redis).await.get_or_create("acme").await.unwrap(), a);
    let g = s.get_or_create("globex").await.unwrap();
    assert_ne!(a, g);
    // Concurrent first uses agree.
    let firsts = futures::future::join_all((0..8).map(|_| s.get_or_create("initech"))).await;
    let firsts: Vec<String> = firsts.into_iter().map(Result::unwrap).collect();
    assert!(firsts.iter().all(|x| *x == firsts[0]), "{firsts:?}");
    let rotated = s.rotate("acme").await.unwrap();
    assert_ne!(rotated, a);
    assert_eq!(s.get_or_create("acme").await.unwrap(), rotated);
    assert_eq!(s.get_or_create("globex").await.unwrap(), g);
    assert!(matches!(
        s.get_or_create("bad tenant").await,
        Err(webhook::WebhookError::BadTenant(_))
    ));
    // Another prefix is another namespace.
    let other = WebhookSecrets::connect(&redis.url(), "staging:", Duration::from_millis(500))
        .await
        .unwrap();
    assert_ne!(other.get_or_create("acme").await.unwrap(), rotated);
}

#[tokio::test]
async fn urls_are_https_only_unless_allowed() {
    let redis = RedisServer::start().unwrap();
    let strict = Webhooks::new(WebhookSettings::default(), secrets(&redis).await).unwrap();
    assert_eq!(strict.validate_url("https://hooks.example.com/osa?x=1"), Ok(()));
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for (url, expected) in [
        ("http://hooks.example.com/osa", "https"),
        ("ftp://example.com/x", "https"),
        ("hooks.example.com/osa", "not a URL"),
        ("https://", "not a URL"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://127.0.0.1/hook", "not a public address"),
        ("https://169.254.169.254/latest", "not a public address"),
        ("https://[::1]:8443/", "not a public address"),
        ("https://localhost/", "not a public address"),
        (long.as_str(), "longer than 2048"),
    ] {
        let err = strict.validate_url(url).unwrap_err();
        assert!(err.contains(expected), "{url}: {err:?} lacks {expected:?}");
    }
    let local = Webhooks::new(fast(true), secrets(&redis).await).unwrap();
    assert_eq!(local.validate_url("http://127.0.0.1:8080/hook"), Ok(()));
    assert!(local.validate_url("ftp://127.0.0.1/").is_err());
    let bad = WebhookSettings { max_attempts: 0, ..Default::default() };
    let err = Webhooks::new(bad, secrets(&redis).await).unwrap_err();
    assert!(err.to_string().contains("webhooks.max_attempts"), "{err}");
}

/// What the receiver saw, and the statuses it answers in turn (then 200).
#[derive(Clone, Default)]
struct Receiver {
    hits: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    plan: Arc<Mutex<VecDeque<u16>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.hits.lock().unwrap().push((headers, body));
    let code = r.plan.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

async fn receiver(plan: &[u16]) -> (String, Receiver) {
    let r = Receiver::default();
    r.plan.lock().unwrap().extend(plan);
    let app = Router::new().route("/hook", post(hook)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

#[tokio::test]
async fn delivery_is_retried_on_5xx_and_signed_each_time() {
    let redis = RedisServer::start().unwrap();
    let secrets = secrets(&redis).await;
    let hooks = Webhooks::new(fast(true), secrets.clone()).unwrap();
    let (url, r) = receiver(&[500, 503]).await;
    let job = job();
    assert!(hooks.deliver("acme", &url, &job).await.unwrap(), "delivered");
    let hits = r.hits.lock().unwrap().clone();
    assert_eq!(hits.len(), 3, "two failures, then delivered");
    let secret = secrets.get_or_create("acme").await.unwrap();
    for (headers, body) in &hits {
        assert_eq!(body.as_ref(), job_json(&job).as_slice());
        assert_eq!(headers["content-type"], "application/json");
        let sig = headers[SIGNATURE_HEADER].to_str().unwrap();
        assert!(verify(secret.as_bytes(), sig, body, now(), TOLERANCE), "{sig}");
        // Signed with this tenant's secret, no other.
        let other = secrets.get_or_create("globex").await.unwrap();
        assert!(!verify(other.as_bytes(), sig, body, now(), TOLERANCE));
    }
}

#[tokio::test]
async fn a_4xx_is_not_retried_and_attempts_are_bounded() {
    let redis = RedisServer::start().unwrap();
    let hooks = Webhooks::new(fast(true), secrets(&redis).await).unwrap();
    let (url, r) = receiver(&[400]).await;
    assert!(!hooks.deliver("acme", &url, &job()).await.unwrap());
    assert_eq!(r.hits.lock().unwrap().len(), 1, "a refusal is final");

    let (url, r) = receiver(&[429, 502, 503, 500, 500]).await;
    assert!(!hooks.deliver("acme", &url, &job()).await.unwrap());
    assert_eq!(r.hits.lock().unwrap().len(), 4, "max_attempts");

    // Nothing listening: network errors are retried, then given up.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::time::Instant::now();
    assert!(!hooks.deliver("acme", &format!("http://127.0.0.1:{port}/"), &job()).await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn private_addresses_are_not_called_by_default() {
    let redis = RedisServer::start().unwrap();
    let settings = WebhookSettings { allow_private_addresses: false, ..fast(true) };
    let hooks = Webhooks::new(settings, secrets(&redis).await).unwrap();
    let (url, r) = receiver(&[]).await;
    assert!(!hooks.deliver("acme", &url, &job()).await.unwrap());
    assert!(r.hits.lock().unwrap().is_empty());
    // (Names resolving to such addresses: see the unit tests of the resolver.)
}
