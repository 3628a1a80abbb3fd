//! The gateway's Redis data layer against a real redis-server: avatars,
//! jobs (idempotency, quota, tenant isolation, listing, watch, the queue's
//! claim / heartbeat / reclaim / finish), live-session slots, and a Redis
//! outage.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use osa_gateway::store::{
    self, AvatarRecord, Avatars, Claim, JobSpec, Jobs, Lease, Outcome, SessionSlots, StoreError,
    Submitted,
};
use osa_proto::v1::{self, JobState};
use osa_runtime::testkit::RedisServer;
use redis::aio::ConnectionManager;

const PREFIX: &str = "osa:";
const NO_WAIT: Duration = Duration::ZERO;
const LONG_IDLE: Duration = Duration::from_secs(60);

async fn conn(redis: &RedisServer) -> ConnectionManager {
    store::connect(&redis.url(), Duration::from_millis(500)).await.unwrap()
}

/// Jobs as a server uses them: blocking claims and pub/sub watches.
async fn jobs(redis: &RedisServer) -> Jobs {
    let jobs = Jobs::new(conn(redis).await, PREFIX)
        .with_client(store::client(&redis.url()).unwrap(), Duration::from_millis(500));
    jobs.ensure_group().await.unwrap();
    jobs
}

fn spec(tenant: &str, idempotency_key: &str, body_digest: &str) -> JobSpec {
    JobSpec {
        tenant: tenant.into(),
        avatar_id: "av1".into(),
        audio_key: "audio/1".into(),
        audio_seconds: 3.3,
        clips_total: 7,
        fps: 25,
        sampling: v1::SamplingOptions { steps: 1, seed: 42 },
        encoding: Some(v1::VideoEncoding { bitrate_kbps: 900 }),
        webhook_url: String::new(),
        idempotency_key: idempotency_key.into(),
        body_digest: body_digest.into(),
    }
}

async fn submit(jobs: &Jobs, tenant: &str, id: &str) -> v1::Job {
    match jobs.submit(id, spec(tenant, "", "d"), 100).await.unwrap() {
        Submitted::Created(job) => job,
        other => panic!("{other:?}"),
    }
}

async fn claim(jobs: &Jobs, consumer: &str) -> Claim {
    jobs.claim(consumer, Duration::from_secs(2), LONG_IDLE).await.unwrap().expect("a job")
}

fn avatar(id: &str, name: &str) -> AvatarRecord {
    AvatarRecord {
        avatar: v1::Avatar {
            avatar_id: id.into(),
            display_name: name.into(),
            image_width: 640,
            image_height: 480,
            created_at: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            ..Default::default()
        },
        image_key: format!("images/{id}"),
        generator_id: format!("gen-{id}"),
    }
}

fn ids<T>(items: &[T], id: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| id(i).to_owned()).collect()
}

#[tokio::test]
async fn avatars_are_stored_listed_newest_first_and_tenant_scoped() {
    let redis = RedisServer::start().unwrap();
    let avatars = Avatars::new(conn(&redis).await, PREFIX);
    for i in 1..=5 {
        avatars.insert("acme", &avatar(&format!("a{i}"), "Ann")).await.unwrap();
    }
    avatars.insert("globex", &avatar("g1", "Gus")).await.unwrap();

    assert_eq!(avatars.get("acme", "a3").await.unwrap(), Some(avatar("a3", "Ann")));
    assert_eq!(avatars.get("globex", "a3").await.unwrap(), None);
    assert_eq!(avatars.get("acme", "g1").await.unwrap(), None);

    let (page, token) = avatars.list("acme", 2, "").await.unwrap();
    assert_eq!(ids(&page, |a| &a.avatar_id), ["a5", "a4"]);
    // A new avatar does not shift the pages already handed out.
    avatars.insert("acme", &avatar("a6", "Ann")).await.unwrap();
    let (page, token) = avatars.list("acme", 2, &token).await.unwrap();
    assert_eq!(ids(&page, |a| &a.avatar_id), ["a3", "a2"]);
    let (page, token) = avatars.list("acme", 2, &token).await.unwrap();
    assert_eq!((ids(&page, |a| &a.avatar_id), token.as_str()), (vec!["a1".to_owned()], ""));
    let (all, token) = avatars.list("acme", 0, "").await.unwrap();
    assert_eq!((all.len(), token.as_str()), (6, ""));
    assert_eq!(all[0], avatar("a6", "Ann").avatar);

    assert_eq!(avatars.delete("globex", "a1").await.unwrap(), None);
    assert_eq!(avatars.delete("acme", "a1").await.unwrap(), Some(avatar("a1", "Ann")));
    assert_eq!(avatars.delete("acme", "a1").await.unwrap(), None);
    assert_eq!(avatars.get("acme", "a1").await.unwrap(), None);
    assert_eq!(avatars.list("acme", 100, "").await.unwrap().0.len(), 5);
    assert_eq!(avatars.list("globex", 100, "").await.unwrap().0.len(), 1);

    let e = avatars.list("acme", 101, "").await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid { field, .. } if field == "page_size"), "{e}");
    let e = avatars.list("acme", 10, "not-a-token").await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid { field, .. } if field == "page_token"), "{e}");
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_same_job() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    let Submitted::Created(job) =
        jobs.submit("j1", spec("acme", "k1", "body-a"), 10).await.unwrap()
    else {
        panic!("not created")
    };
    assert_eq!(job.state(), JobState::Queued);
    assert_eq!(job.idempotency_key, "k1");
    assert_eq!(job.progress.unwrap().clips_total, 7);
    assert!(job.created_at.is_some());

    let again = jobs.submit("j2", spec("acme", "k1", "body-a"), 10).await.unwrap();
    assert_eq!(again, Submitted::Existing(job.clone()));
    let e = jobs.submit("j3", spec("acme", "k1", "body-b"), 10).await.unwrap_err();
    assert!(matches!(&e, StoreError::IdempotencyConflict(m) if m.contains("k1")), "{e}");
    let status = tonic::Status::from(osa_runtime::ServiceError::from(e));
    assert_eq!(status.code(), tonic::Code::AlreadyExists);
    // Another tenant's key space is its own.
    let other = jobs.submit("j4", spec("globex", "k1", "body-b"), 10).await.unwrap();
    assert!(matches!(other, Submitted::Created(_)));

    // Nothing of the refused or repeated submissions was written.
    assert_eq!(jobs.get("acme", "j2").await.unwrap(), None);
    assert_eq!(jobs.get("acme", "j3").await.unwrap(), None);
    assert_eq!(jobs.list("acme", 10, "", &[]).await.unwrap().0.len(), 1);
    assert_eq!(jobs.queue_depth().await.unwrap(), 2);
    let (stored, stored_spec) = jobs.get("acme", "j1").await.unwrap().unwrap();
    assert_eq!((stored, stored_spec), (job, spec("acme", "k1", "body-a")));
}

#[tokio::test]
async fn concurrent_submits_with_one_key_create_exactly_one_job() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    let results =
        futures::future::join_all(
            (0..8).map(|i| {
                let jobs = jobs.clone();
                async move {
                    jobs.submit(&format!("j{i}"), spec("acme", "same", "d"), 100).await.unwrap()
                }
            }),
        )
        .await;
    let created: Vec<_> = results.iter().filter(|r| matches!(r, Submitted::Created(_))).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let id = &created[0].job().job_id;
    assert!(results.iter().all(|r| &r.job().job_id == id), "{results:?}");
    assert_eq!(jobs.queue_depth().await.unwrap(), 1);
    assert_eq!(jobs.list("acme", 100, "", &[]).await.unwrap().0.len(), 1);
}

#[tokio::test]
async fn the_active_job_quota_counts_queued_and_running_jobs() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    let j1 = jobs.submit("j1", spec("acme", "k1", "d"), 2).await.unwrap().into_job();
    jobs.submit("j2", spec("acme", "", "d"), 2).await.unwrap();
    let c = claim(&jobs, "gw-a").await;
    jobs.start(&c).await.unwrap();
    let e = jobs.submit("j3", spec("acme", "", "d"), 2).await.unwrap_err();
    assert!(matches!(&e, StoreError::QuotaExceeded { what } if what.contains('2')), "{e}");
    let status = tonic::Status::from(osa_runtime::ServiceError::from(e));
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.metadata().get(osa_runtime::error::RETRY_AFTER_MS).is_some());
    assert_eq!(jobs.get("acme", "j3").await.unwrap(), None);
    // A retry of a job already submitted is not a new job: no quota needed.
    let retry = jobs.submit("j3", spec("acme", "k1", "d"), 2).await.unwrap();
    assert_eq!(retry.job().job_id, j1.job_id);
    assert!(matches!(retry, Submitted::Existing(_)));
    // Other tenants are not affected.
    jobs.submit("g1", spec("globex", "", "d"), 2).await.unwrap();
    // A finished and a cancelled job give their places back.
    jobs.finish(&c, Outcome::Succeeded { result_bytes: 10 }).await.unwrap();
    jobs.submit("j3", spec("acme", "", "d"), 2).await.unwrap();
    assert!(jobs.submit("j4", spec("acme", "", "d"), 2).await.is_err());
    jobs.cancel("acme", "j3").await.unwrap().unwrap();
    jobs.submit("j4", spec("acme", "", "d"), 2).await.unwrap();

    // A place whose release was lost (ids of ended or vanished jobs left in
    // the active set) does not block the tenant.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SADD")
        .arg("osa:active:globex")
        .arg("vanished")
        .arg("j1")
        .query_async(&mut raw)
        .await
        .unwrap();
    jobs.submit("g2", spec("globex", "", "d"), 2).await.unwrap();
    let e = jobs.submit("g3", spec("globex", "", "d"), 2).await.unwrap_err();
    assert!(matches!(e, StoreError::QuotaExceeded { .. }), "{e}");
}

#[tokio::test]
async fn another_tenants_job_is_absent_everywhere() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    assert_eq!(jobs.get("globex", "j1").await.unwrap(), None);
    assert_eq!(jobs.cancel("globex", "j1").await.unwrap(), None);
    assert_eq!(jobs.list("globex", 10, "", &[]).await.unwrap(), (vec![], String::new()));
    let watched: Vec<_> =
        tokio::time::timeout(Duration::from_secs(2), jobs.watch("globex", "j1").collect())
            .await
            .unwrap();
    assert!(watched.is_empty(), "{watched:?}");
    let unknown: Vec<_> =
        tokio::time::timeout(Duration::from_secs(2), jobs.watch("acme", "nope").collect())
            .await
            .unwrap();
    assert!(unknown.is_empty());
    // Untouched by the attempts.
    assert_eq!(jobs.get("acme", "j1").await.unwrap().unwrap().0.state(), JobState::Queued);
}

#[tokio::test]
async fn jobs_are_listed_newest_first_with_a_state_filter() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    for i in 1..=6 {
        submit(&jobs, "acme", &format!("j{i}")).await;
    }
    submit(&jobs, "globex", "g1").await;
    for id in ["j2", "j3", "j5"] {
        jobs.cancel("acme", id).await.unwrap().unwrap();
    }

    let job_ids = |jobs: &[v1::Job]| ids(jobs, |j| &j.job_id);
    let (page, token) = jobs.list("acme", 4, "", &[]).await.unwrap();
    assert_eq!(job_ids(&page), ["j6", "j5", "j4", "j3"]);
    let (page, token) = jobs.list("acme", 4, &token, &[]).await.unwrap();
    assert_eq!((job_ids(&page), token.as_str()), (vec!["j2".to_owned(), "j1".to_owned()], ""));

    let cancelled = [JobState::Cancelled];
    let (page, token) = jobs.list("acme", 2, "", &cancelled).await.unwrap();
    assert_eq!(job_ids(&page), ["j5", "j3"]);
    assert!(page.iter().all(|j| j.state() == JobState::Cancelled && j.finished_at.is_some()));
    let (page, token) = jobs.list("acme", 2, &token, &cancelled).await.unwrap();
    assert_eq!(job_ids(&page), ["j2"]);
    assert_eq!(token, "");
    let (page, _) =
        jobs.list("acme", 10, "", &[JobState::Queued, JobState::Running]).await.unwrap();
    assert_eq!(job_ids(&page), ["j6", "j4", "j1"]);
    let e = jobs.list("acme", 101, "", &[]).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid { field, .. } if field == "page_size"), "{e}");
    let e = jobs.list("acme", 1, "zz", &[]).await.unwrap_err();
    assert!(matches!(&e, StoreError::Invalid { field, .. } if field == "page_token"), "{e}");
}

#[tokio::test]
async fn watch_sees_every_change_and_ends_after_the_terminal_state() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    let mut watch = Box::pin(jobs.watch("acme", "j1"));
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.state(), JobState::Queued);

    let c = claim(&jobs, "gw-a").await;
    jobs.start(&c).await.unwrap();
    let p = |done: u64| v1::Progress {
        clips_done: done,
        clips_total: 7,
        media_seconds_done: done as f64 * 0.48,
        media_seconds_total: 3.3,
    };
    jobs.progress("j1", p(3)).await.unwrap();
    jobs.progress("j1", p(5)).await.unwrap();
    jobs.finish(&c, Outcome::Succeeded { result_bytes: 1234 }).await.unwrap();

    let rest: Vec<v1::Job> =
        tokio::time::timeout(Duration::from_secs(3), watch.collect::<Vec<_>>())
            .await
            .expect("the watch ends after the terminal state")
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
    let seen: Vec<_> = rest.iter().map(|j| (j.state(), j.progress.unwrap().clips_done)).collect();
    assert_eq!(
        seen,
        [
            (JobState::Running, 0),
            (JobState::Running, 3),
            (JobState::Running, 5),
            (JobState::Succeeded, 7)
        ]
    );
    let last = rest.last().unwrap();
    assert_eq!(last.result_bytes, 1234);
    assert!(last.started_at.is_some() && last.finished_at.is_some());

    // Watching a finished job gives its state once and ends.
    let again: Vec<_> = jobs.watch("acme", "j1").collect().await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].as_ref().unwrap().state(), JobState::Succeeded);
}

#[tokio::test]
async fn without_a_client_claims_poll_and_watches_re_read() {
    let redis = RedisServer::start().unwrap();
    let jobs = Jobs::new(conn(&redis).await, PREFIX);
    jobs.ensure_group().await.unwrap();
    jobs.ensure_group().await.unwrap();
    let t = Instant::now();
    assert!(jobs.claim("gw-a", Duration::from_millis(300), LONG_IDLE).await.unwrap().is_none());
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(2));

    submit(&jobs, "acme", "j1").await;
    let mut watch = Box::pin(jobs.watch("acme", "j1"));
    assert_eq!(watch.next().await.unwrap().unwrap().state(), JobState::Queued);
    let c = claim(&jobs, "gw-a").await;
    jobs.finish(&c, Outcome::Failed { code: tonic::Code::InvalidArgument, reason: "bad".into() })
        .await
        .unwrap();
    let last = tokio::time::timeout(Duration::from_secs(3), watch.next()).await.unwrap();
    let last = last.unwrap().unwrap();
    assert_eq!(last.state(), JobState::Failed);
    assert_eq!(
        (last.failure_code.as_str(), last.failure_reason.as_str()),
        ("INVALID_ARGUMENT", "bad")
    );
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn a_job_cancelled_while_queued_is_skipped_by_claim() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    submit(&jobs, "acme", "j2").await;
    let cancelled = jobs.cancel("acme", "j1").await.unwrap().unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    // Cancelling again changes nothing.
    assert_eq!(jobs.cancel("acme", "j1").await.unwrap(), Some(cancelled));
    let c = claim(&jobs, "gw-a").await;
    assert_eq!((c.job_id.as_str(), c.reclaimed), ("j2", false));
    assert_eq!(c.spec, spec("acme", "", "d"));
    // j1's entry was acknowledged and removed; only j2 (pending) is left.
    assert_eq!(jobs.queue_depth().await.unwrap(), 1);
    assert!(jobs.claim("gw-a", Duration::from_millis(50), LONG_IDLE).await.unwrap().is_none());
    jobs.finish(&c, Outcome::Succeeded { result_bytes: 1 }).await.unwrap();
    assert_eq!(jobs.queue_depth().await.unwrap(), 0);
}

#[tokio::test]
async fn a_job_of_a_dead_runner_is_reclaimed_and_the_old_lease_is_lost() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    let a = claim(&jobs, "gw-a").await;
    let started = jobs.start(&a).await.unwrap();
    jobs.progress(
        "j1",
        v1::Progress {
            clips_done: 2,
            clips_total: 7,
            media_seconds_done: 0.96,
            media_seconds_total: 3.3,
        },
    )
    .await
    .unwrap();
    let idle = Duration::from_millis(150);
    // Not idle long enough yet: B finds nothing.
    assert!(jobs.claim("gw-b", NO_WAIT, idle).await.unwrap().is_none());
    // gw-a "dies": no heartbeat.
    tokio::time::sleep(idle + Duration::from_millis(50)).await;
    let b = jobs.claim("gw-b", NO_WAIT, idle).await.unwrap().expect("reclaimed");
    assert_eq!(
        (b.job_id.as_str(), b.entry_id.as_str(), b.reclaimed),
        ("j1", a.entry_id.as_str(), true)
    );
    assert_eq!(b.job.progress.unwrap().clips_done, 2, "resume from the last finished clip");
    assert_eq!(jobs.heartbeat(&a, "gw-a").await.unwrap(), Lease::Lost);
    assert_eq!(jobs.heartbeat(&b, "gw-b").await.unwrap(), Lease::Held);
    let restarted = jobs.start(&b).await.unwrap();
    assert_eq!(restarted.started_at, started.started_at, "started_at kept from the first attempt");
    // The old runner's late result is not taken.
    let late = jobs.finish(&a, Outcome::Succeeded { result_bytes: 1 }).await.unwrap();
    assert_eq!(late.state(), JobState::Running);
    assert_eq!(jobs.queue_depth().await.unwrap(), 1);
    let done = jobs.finish(&b, Outcome::Succeeded { result_bytes: 2 }).await.unwrap();
    assert_eq!((done.state(), done.result_bytes), (JobState::Succeeded, 2));
    assert_eq!(jobs.queue_depth().await.unwrap(), 0);
    assert_eq!(jobs.heartbeat(&b, "gw-b").await.unwrap(), Lease::Lost);
}

#[tokio::test]
async fn heartbeats_keep_a_job_from_being_reclaimed() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    let a = claim(&jobs, "gw-a").await;
    let idle = Duration::from_millis(150);
    // 400 ms in all, well past the reclaim timeout, heartbeating every 60 ms.
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(jobs.heartbeat(&a, "gw-a").await.unwrap(), Lease::Held);
        assert!(jobs.claim("gw-b", NO_WAIT, idle).await.unwrap().is_none());
    }
    tokio::time::sleep(idle + Duration::from_millis(50)).await;
    assert!(jobs.claim("gw-b", NO_WAIT, idle).await.unwrap().is_some());
}

#[tokio::test]
async fn finishing_never_overwrites_a_cancellation() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    submit(&jobs, "acme", "j1").await;
    let c = claim(&jobs, "gw-a").await;
    jobs.start(&c).await.unwrap();
    let cancelled = jobs.cancel("acme", "j1").await.unwrap().unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    assert_eq!(jobs.heartbeat(&c, "gw-a").await.unwrap(), Lease::Cancelled);
    // Progress after the cancellation is ignored too.
    jobs.progress(
        "j1",
        v1::Progress {
            clips_done: 6,
            clips_total: 7,
            media_seconds_done: 3.0,
            media_seconds_total: 3.3,
        },
    )
    .await
    .unwrap();
    let after = jobs.finish(&c, Outcome::Succeeded { result_bytes: 99 }).await.unwrap();
    assert_eq!(after, cancelled);
    assert_eq!(jobs.get("acme", "j1").await.unwrap().unwrap().0, cancelled);
    assert_eq!(jobs.queue_depth().await.unwrap(), 0);
    // Its quota place is free.
    jobs.submit("j2", spec("acme", "", "d"), 1).await.unwrap();
}

#[tokio::test]
async fn finished_jobs_expire_after_the_retention() {
    let redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await.with_retention(Duration::from_millis(200));
    submit(&jobs, "acme", "j1").await;
    submit(&jobs, "acme", "j2").await;
    jobs.cancel("acme", "j1").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(jobs.get("acme", "j1").await.unwrap(), None);
    // The queued job does not expire; the listing drops the expired one.
    assert!(jobs.get("acme", "j2").await.unwrap().is_some());
    let (page, _) = jobs.list("acme", 10, "", &[]).await.unwrap();
    assert_eq!(ids(&page, |j| &j.job_id), ["j2"]);
}

#[tokio::test]
async fn session_slots_fill_release_and_expire() {
    let redis = RedisServer::start().unwrap();
    let slots = SessionSlots::new(conn(&redis).await, PREFIX);
    let ttl = Duration::from_secs(30);
    let s1 = slots.acquire("key1", "s1", 2, ttl).await.unwrap().expect("room");
    let s2 = slots.acquire("key1", "s2", 2, ttl).await.unwrap().expect("room");
    assert!(slots.acquire("key1", "s3", 2, ttl).await.unwrap().is_none());
    // Another owner has its own slots.
    let other = slots.acquire("key2", "s3", 2, ttl).await.unwrap().expect("room");
    s1.renew().await.unwrap();
    s1.release().await;
    let s3 = slots.acquire("key1", "s3", 2, ttl).await.unwrap().expect("freed by release");
    // Dropping a guard releases in the background.
    drop(s2);
    let deadline = Instant::now() + Duration::from_secs(2);
    let s4 = loop {
        if let Some(g) = slots.acquire("key1", "s4", 2, ttl).await.unwrap() {
            break g;
        }
        assert!(Instant::now() < deadline, "a dropped guard did not release its slot");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop((s3, s4, other));

    // A dead gateway's slot (never released) expires after its ttl.
    let short = Duration::from_millis(200);
    let dead = slots.acquire("key3", "d1", 1, short).await.unwrap().unwrap();
    std::mem::forget(dead);
    let live = slots.acquire("key3", "d2", 1, short).await.unwrap();
    assert!(live.is_none());
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    let live = slots.acquire("key3", "d2", 1, short).await.unwrap().expect("the dead slot expired");
    // Renewing keeps a live slot past its first ttl.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        live.renew().await.unwrap();
    }
    assert!(slots.acquire("key3", "d3", 1, short).await.unwrap().is_none());
    live.release().await;
}

#[tokio::test]
async fn a_redis_outage_is_a_prompt_redis_error_then_recovers() {
    let mut redis = RedisServer::start().unwrap();
    let jobs = jobs(&redis).await;
    let c = conn(&redis).await;
    let avatars = Avatars::new(c.clone(), PREFIX);
    let slots = SessionSlots::new(c, PREFIX);
    submit(&jobs, "acme", "j1").await;
    redis.stop();

    let t = Instant::now();
    let e = avatars.get("acme", "a1").await.unwrap_err();
    assert!(matches!(e, StoreError::Redis(_)), "{e:?}");
    let e = jobs.submit("j2", spec("acme", "", "d"), 10).await.unwrap_err();
    assert!(matches!(e, StoreError::Redis(_)), "{e:?}");
    let e = jobs.claim("gw-a", Duration::from_millis(200), LONG_IDLE).await.unwrap_err();
    assert!(matches!(e, StoreError::Redis(_)), "{e:?}");
    let e = slots.acquire("key1", "s1", 1, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(e, StoreError::Redis(_)), "{e:?}");
    let watched: Vec<_> = jobs.watch("acme", "j1").collect().await;
    assert!(matches!(watched.as_slice(), [Err(StoreError::Redis(_))]), "{watched:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "errors took {:?}", t.elapsed());
    let status = tonic::Status::from(osa_runtime::ServiceError::from(e));
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // Back (empty, as a non-persistent Redis): the store works again and the
    // queue's group is recreated by the claim.
    redis.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while avatars.get("acme", "a1").await.is_err() {
        assert!(Instant::now() < deadline, "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    submit(&jobs, "acme", "j3").await;
    let c = claim(&jobs, "gw-a").await;
    assert_eq!(c.job_id, "j3");
}
