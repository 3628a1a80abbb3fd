//! The Redis context store against a real redis-server on loopback.

use std::{sync::Arc, time::Duration};

use osa_generator::context::{
    ContextError, ContextStore, LastClip, RedisStore, RedisStoreConfig, StreamContext,
};
use osa_proto::v1::ClipTiming;
use osa_runtime::testkit::RedisServer;

fn ctx(next_clip: u64, state: &[u8]) -> StreamContext {
    StreamContext {
        avatar_id: "avatar-1".into(),
        steps: 2,
        seed: u64::MAX - 1,
        next_clip,
        state: state.to_vec(),
        last: None,
    }
}

async fn store(redis: &RedisServer, idle: Duration) -> RedisStore {
    RedisStore::connect(RedisStoreConfig {
        url: redis.url(),
        idle_timeout: idle,
        response_timeout: Duration::from_millis(500),
        connection_timeout: Duration::from_millis(500),
        ..RedisStoreConfig::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn create_load_commit_and_stale_writers() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis, Duration::from_secs(60)).await;
    assert_eq!(s.create("job-1", &ctx(0, b"")).await.unwrap(), 1);
    assert!(matches!(s.create("job-1", &ctx(0, b"")).await, Err(ContextError::Exists(_))));
    let state: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    assert_eq!(s.commit("job-1", 1, &ctx(1, &state)).await.unwrap(), 2);
    let got = s.load("job-1").await.unwrap();
    assert_eq!(
        (got.version, got.context),
        (2, ctx(1, &state)),
        "u64 seed and binary state survive"
    );
    let err = s.commit("job-1", 1, &ctx(9, b"x")).await.unwrap_err();
    assert!(matches!(err, ContextError::Conflict { expected: 1, found: 2, .. }), "{err}");
    assert_eq!(s.load("job-1").await.unwrap().context, ctx(1, &state), "loser wrote nothing");
    assert!(matches!(s.commit("missing", 1, &ctx(0, b"")).await, Err(ContextError::NotFound(_))));
    s.delete("job-1").await.unwrap();
    assert!(matches!(s.load("job-1").await, Err(ContextError::NotFound(_))));

    assert_eq!(s.get_avatar("av-1").await.unwrap(), None);
    s.put_avatar("av-1", &state).await.unwrap();
    assert_eq!(s.get_avatar("av-1").await.unwrap().as_deref(), Some(state.as_slice()));
    s.ping().await.unwrap();
}

#[tokio::test]
async fn the_last_clip_is_committed_with_the_context_bit_for_bit() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis, Duration::from_secs(60)).await;
    // Every byte value and NaN/denormal bit patterns among the "f32" bytes.
    let latents: Vec<u8> = (0..=255u8).cycle().take(4 * 12 * 4 * 8 * 8).collect();
    let last = LastClip {
        timing: ClipTiming {
            clip_index: 4,
            first_frame: 48,
            frame_count: 12,
            real_frames: 5,
            start_seconds: 48.0 / 25.0,
            duration_seconds: 0.1 + 0.1 + 0.1,
        },
        latents,
        unet_seconds: 1.0 / 3.0,
    };
    let with_last = StreamContext { last: Some(last), ..ctx(5, b"state") };
    s.create("job-l", &ctx(0, b"")).await.unwrap();
    s.commit("job-l", 1, &with_last).await.unwrap();
    assert_eq!(s.load("job-l").await.unwrap().context, with_last);

    // A hash written before the field existed reads as "no last clip"; a
    // garbled one is named as corrupt.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "osa:ctx:{job-l}";
    let () = redis::cmd("HDEL")
        .arg(key)
        .arg("last")
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    assert_eq!(s.load("job-l").await.unwrap().context, ctx(5, b"state"));
    let () = redis::cmd("HSET")
        .arg(key)
        .arg("last")
        .arg(&b"\x01short"[..])
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    let err = s.load("job-l").await.unwrap_err();
    assert!(matches!(err, ContextError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("last clip"), "{err}");
}

#[tokio::test]
async fn two_replicas_race_and_exactly_one_writes_each_clip() {
    let redis = RedisServer::start().unwrap();
    // Separate connections, as two generator replicas would have.
    let replicas: Vec<Arc<dyn ContextStore>> = vec![
        Arc::new(store(&redis, Duration::from_secs(60)).await),
        Arc::new(store(&redis, Duration::from_secs(60)).await),
    ];
    replicas[0].create("race", &ctx(0, b"")).await.unwrap();
    for round in 1..=10u64 {
        let mut tasks = Vec::new();
        for (i, r) in replicas.iter().cycle().take(6).enumerate() {
            let r = r.clone();
            tasks.push(tokio::spawn(async move {
                (i, r.commit("race", round, &ctx(round, &[i as u8])).await)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (i, Ok(v)) => {
                    assert_eq!(v, round + 1);
                    winners.push(i as u8);
                }
                (_, Err(ContextError::Conflict { .. })) => {}
                (_, Err(e)) => panic!("{e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let stored = replicas[1].load("race").await.unwrap();
        assert_eq!(stored.context.state, winners);
    }
}

#[tokio::test]
async fn idle_contexts_expire_and_use_refreshes_the_ttl() {
    let redis = RedisServer::start().unwrap();
    let s = store(&redis, Duration::from_millis(400)).await;
    s.create("live-a", &ctx(0, b"")).await.unwrap();
    s.create("live-b", &ctx(0, b"")).await.unwrap();
    let ttl = s.ttl("live-a").await.unwrap().unwrap();
    assert!(ttl <= Duration::from_millis(400) && ttl > Duration::from_millis(100), "{ttl:?}");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.load("live-a").await.unwrap();
    }
    assert!(s.load("live-a").await.is_ok(), "a used stream stays");
    assert!(
        matches!(s.load("live-b").await, Err(ContextError::NotFound(_))),
        "an idle one expires"
    );
}

#[tokio::test]
async fn a_redis_outage_fails_clearly_then_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let s = store(&redis, Duration::from_secs(60)).await;
    s.create("job", &ctx(0, b"")).await.unwrap();
    redis.stop();
    let err = s.load("job").await.unwrap_err();
    assert!(matches!(err, ContextError::Redis(_)), "{err}");
    let status: tonic::Status = osa_runtime::ServiceError::from(err).into();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("redis"), "{}", status.message());

    redis.restart().unwrap();
    // Data did not survive the crash (no persistence), but the store works
    // again without being rebuilt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.create("job", &ctx(0, b"")).await {
            Ok(_) => break,
            Err(ContextError::Redis(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("did not recover: {e}"),
        }
    }
    assert_eq!(s.load("job").await.unwrap().version, 1);
}

#[tokio::test]
async fn connecting_to_a_dead_redis_is_a_clear_error() {
    let mut redis = RedisServer::start().unwrap();
    let url = redis.url();
    redis.stop();
    let err = RedisStore::connect(RedisStoreConfig {
        url: url.clone(),
        connection_timeout: Duration::from_millis(300),
        ..RedisStoreConfig::default()
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&url), "{err}");
}
