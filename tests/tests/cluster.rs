//! The whole product end to end over loopback: a real redis-server, the
//! four services started as `osa serve all` starts them (tasks bound to
//! 127.0.0.1:0), the client SDK, a real photo and real speech, MP4s checked
//! by ffprobe/ffmpeg; then faults, and what callers must not be able to do.

use std::{path::Path, time::Duration};

use futures::StreamExt as _;
use osa_client::{Client, Error, LiveEvent, RenderOptions, RenderRequest};
use osa_e2e::e2e::{Env, expected_frames, frame_md5s, pcm16, probe, sample, speech_excerpt};
use osa_proto::v1::{self, JobState, LiveStart, VideoOutput};
use prost::Message as _;
use tonic::Code;

const SEED: u64 = 7;

fn opts() -> RenderOptions {
    RenderOptions { seed: Some(SEED), ..RenderOptions::default() }
}

fn code(e: &Error) -> Option<Code> {
    e.code()
}

/// Renders `audio` as a job and downloads it to `out`; returns the job and
/// every progress update seen.
async fn render(
    client: &Client,
    avatar: &str,
    audio: &Path,
    out: &Path,
) -> (v1::Job, Vec<v1::Job>) {
    let mut seen = Vec::new();
    let job = client
        .render_file(avatar, audio, out, opts(), |j| seen.push(j.clone()))
        .await
        .expect("render");
    (job, seen)
}

/// Streams `audio` into a live session in chunks of random sizes, as fast
/// as the server takes them; returns the concatenated fMP4 and the clips.
async fn live(
    client: &Client,
    avatar: &str,
    audio: &Path,
) -> (Vec<u8>, Vec<v1::LiveClip>, v1::LiveEnded) {
    let pcm = pcm16(audio);
    let start = LiveStart {
        avatar_id: avatar.to_owned(),
        fps: 25,
        sampling: Some(v1::SamplingOptions { steps: 1, seed: SEED }),
        output: VideoOutput::Fmp4Segments as i32,
        clips_per_segment: 1,
        encoding: None,
    };
    let (tx, mut rx) = client.live(start).await.expect("live");
    let sender = tokio::spawn(async move {
        let mut rest = &pcm[..];
        while !rest.is_empty() {
            let n = fastrand::usize(1..=6000).min(rest.len());
            tx.send_pcm16(&rest[..n]).await.expect("audio");
            rest = &rest[n..];
        }
        tx.end().await.expect("end");
    });
    let mut video = Vec::new();
    let mut clips = Vec::new();
    let mut ended = None;
    let mut started = false;
    while let Some(event) = rx.next().await {
        match event.expect("live event") {
            LiveEvent::Started(s) => {
                assert_eq!(s.fps, 25);
                started = true;
            }
            LiveEvent::Clip(c) => {
                if let Some(v1::live_clip::Video::Segment(s)) = &c.video {
                    video.extend_from_slice(&s.init);
                    video.extend_from_slice(&s.media);
                }
                clips.push(c);
            }
            LiveEvent::Interrupted(_) => panic!("no interrupt was sent"),
            LiveEvent::Ended(e) => ended = Some(e),
        }
    }
    sender.await.unwrap();
    assert!(started, "no Started event");
    (video, clips, ended.expect("an Ended event"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_photo_and_speech_render_to_an_mp4_and_stream_live() {
    let env = Env::start(|_| {}).await;
    let client = env.client().await;
    let info = client.server_info().await.unwrap();
    assert!(info.model.as_ref().unwrap().random_weights);

    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.expect("avatar");
    assert!(avatar.faces_found >= 1, "the real detector finds the portrait's face: {avatar:?}");
    assert_eq!(client.get_avatar(&avatar.avatar_id).await.unwrap().avatar_id, avatar.avatar_id);

    let audio = speech_excerpt(env.data.path(), 3.0);
    let out = env.data.path().join("render.mp4");
    let (job, seen) = render(&client, &avatar.avatar_id, &audio, &out).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.sampling.unwrap().seed, SEED);
    let progress = job.progress.unwrap();
    assert_eq!(progress.clips_done, progress.clips_total);
    assert!(seen.len() >= 2, "progress was reported: {seen:?}");
    let done: Vec<u64> = seen.iter().filter_map(|j| j.progress.map(|p| p.clips_done)).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {done:?}");

    let p = probe(&out);
    let frames = expected_frames(&audio, 25);
    assert_eq!(p.video_frames, frames, "{p:?}");
    assert!(p.has_audio, "the MP4 carries the speech");
    assert!((p.duration - 3.0).abs() < 0.1, "duration {} for 3 s of speech", p.duration);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), job.result_bytes);

    // Live: the same speech in random chunk sizes; the segments concatenate
    // into a video with the file render's frame count.
    let (video, clips, ended) = live(&client, &avatar.avatar_id, &audio).await;
    assert_eq!(ended.clips, clips.len() as u64);
    assert_eq!(clips.len() as u64, progress.clips_total);
    for (i, c) in clips.iter().enumerate() {
        assert_eq!(c.timing.unwrap().clip_index, i as u64, "clips in order");
        assert!(c.latency_seconds >= 0.0);
    }
    let live_path = env.data.path().join("live.mp4");
    std::fs::write(&live_path, &video).unwrap();
    let lp = probe(&live_path);
    assert_eq!(lp.video_frames, p.video_frames, "live {lp:?} vs file {p:?}");
    assert!((ended.audio_seconds - 3.0).abs() < 0.05);
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_render_and_the_cluster_make_identical_latents() {
    let env = Env::start(|o| o.gateway.jobs.keep_clips = true).await;
    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 1.5);
    let out = env.data.path().join("cluster.mp4");
    let (job, _) = render(&client, &avatar.avatar_id, &audio, &out).await;

    let mut stored = env.stored(&format!("jobs/{}/clips", job.job_id));
    stored.sort();
    let cluster: Vec<Vec<f32>> = stored
        .iter()
        .map(|p| {
            let clip = v1::GeneratedClip::decode(&*std::fs::read(p).unwrap()).unwrap();
            let t = osa_proto::tensor::HostTensor::try_from(clip.latents.unwrap()).unwrap();
            t.to_f32_vec().unwrap()
        })
        .collect();

    let image = image::open(sample("portrait.png")).unwrap().to_rgb8();
    let mut options = osa_cli::embedded::EmbeddedOptions::new(25);
    options.seed = SEED;
    options.steps = 1;
    options.face_detector = Some(osa_e2e::e2e::face_detector());
    let embedded = tokio::task::spawn_blocking(move || {
        osa_cli::embedded::render_latents(
            &image,
            &std::fs::read(audio).unwrap(),
            &options,
            |_, _| {},
        )
    })
    .await
    .unwrap()
    .expect("embedded render");
    assert_eq!(cluster.len(), embedded.clips.len(), "same number of clips");
    assert!(!cluster.is_empty());
    for (i, (c, e)) in cluster.iter().zip(&embedded.clips).enumerate() {
        assert_eq!(c.len(), e.len(), "clip {i} size");
        let max = c.iter().zip(e).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(max, 0.0, "clip {i}: embedded and cluster latents differ by up to {max}");
    }
    env.cluster.stop().await.unwrap();
}

/// Waits on the job's progress until `clips_done >= n`; returns the job.
async fn wait_progress(client: &Client, job_id: &str, n: u64) -> v1::Job {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let job = client.get_job(job_id).await.unwrap();
        if job.progress.is_some_and(|p| p.clips_done >= n)
            || job.state() != JobState::Queued && job.state() != JobState::Running
        {
            return job;
        }
        assert!(tokio::time::Instant::now() < deadline, "no progress: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn submit(client: &Client, avatar: &str, audio: &Path) -> v1::Job {
    client
        .submit_render(RenderRequest {
            avatar_id: avatar.to_owned(),
            audio: std::fs::read(audio).unwrap(),
            seed: Some(SEED),
            steps: 4,
            ..RenderRequest::default()
        })
        .await
        .unwrap()
}

async fn finish(client: &Client, job_id: &str, out: &Path) -> (v1::Job, Vec<u64>) {
    let mut updates = client.watch_job(job_id).await.unwrap();
    let mut done = Vec::new();
    let mut last = None;
    while let Some(j) = updates.next().await {
        let j = j.expect("watch");
        done.push(j.progress.map_or(0, |p| p.clips_done));
        last = Some(j);
    }
    let job = last.unwrap();
    assert_eq!(job.state(), JobState::Succeeded, "{job:?}");
    client.download_result(job_id, out).await.unwrap();
    (job, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_generator_killed_mid_job_hands_the_job_to_another_replica() {
    let mut env = Env::start(|o| {
        o.hard_stop = true;
        o.standby_generators = 1;
    })
    .await;
    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 4.0);

    let job = submit(&client, &avatar.avatar_id, &audio).await;
    let at_kill = wait_progress(&client, &job.job_id, 2).await;
    let p = at_kill.progress.unwrap();
    assert!(p.clips_done < p.clips_total, "the kill must land mid-job: {p:?}");
    // The only live replica dies; a new one takes its place.
    let dead = env.cluster.generators.remove(0);
    dead.stop().await.unwrap();
    env.cluster.start_standby(0).await.unwrap();
    let out = env.data.path().join("failover.mp4");
    let (_, done) = finish(&client, &job.job_id, &out).await;
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {done:?}");

    // The same inputs without a fault give the same frames: no clip was
    // skipped or repeated.
    let again = submit(&client, &avatar.avatar_id, &audio).await;
    let reference = env.data.path().join("reference.mp4");
    finish(&client, &again.job_id, &reference).await;
    assert_eq!(probe(&out).video_frames, expected_frames(&audio, 25));
    assert_eq!(frame_md5s(&out), frame_md5s(&reference));
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_restarted_mid_job_resumes_it_from_its_last_clip() {
    let mut env = Env::start(|o| o.hard_stop = true).await;
    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 4.0);

    let job = submit(&client, &avatar.avatar_id, &audio).await;
    let at_restart = wait_progress(&client, &job.job_id, 2).await;
    let before = at_restart.progress.unwrap();
    assert!(before.clips_done < before.clips_total, "the restart must land mid-job: {before:?}");
    env.cluster.restart_gateway().await.unwrap();
    let out = env.data.path().join("resumed.mp4");
    let (resumed, done) = finish(&client, &job.job_id, &out).await;
    assert!(done.iter().all(|&d| d >= before.clips_done), "resumed, not restarted: {done:?}");
    assert_eq!(resumed.started_at, at_restart.started_at, "one job, started once");

    let again = submit(&client, &avatar.avatar_id, &audio).await;
    let reference = env.data.path().join("reference.mp4");
    finish(&client, &again.job_id, &reference).await;
    assert_eq!(frame_md5s(&out), frame_md5s(&reference));
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_gives_a_clear_error_then_recovers() {
    let redis = osa_runtime::testkit::RedisServer::start_persistent().unwrap();
    let mut env = Env::start_with(redis, |_| {}).await;
    let client = env.strict_client(Some(&env.key)).await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();

    env.redis.stop();
    let e = client.get_avatar(&avatar.avatar_id).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::Unavailable), "{e}");
    assert!(e.to_string().contains("redis"), "the error names redis: {e}");

    env.redis.restart().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.get_avatar(&avatar.avatar_id).await {
            Ok(a) => {
                assert_eq!(a.avatar_id, avatar.avatar_id);
                break;
            }
            Err(e) => {
                assert_eq!(code(&e), Some(Code::Unavailable), "{e}");
                assert!(tokio::time::Instant::now() < deadline, "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // And work goes on.
    let client = env.client().await;
    let audio = speech_excerpt(env.data.path(), 1.0);
    let out = env.data.path().join("after.mp4");
    render(&client, &avatar.avatar_id, &audio, &out).await;
    assert_eq!(probe(&out).video_frames, expected_frames(&audio, 25));
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_get_the_right_codes_and_nothing_is_left_half_written() {
    let env = Env::start(|o| {
        o.gateway.gateway.max_image_bytes = 400_000;
        o.gateway.gateway.max_audio_duration = Duration::from_secs(3);
        o.gateway.gateway.max_live_sessions_per_key = 1;
        o.gateway.gateway.requests_per_second_per_key = 1000.0;
    })
    .await;
    let client = env.strict_client(Some(&env.key)).await;
    let dir = env.data.path();

    // Keys: none, unknown, revoked.
    let anonymous = env.strict_client(None).await;
    let e = anonymous.list_jobs(&[]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");
    let (id, revoked) = env.keys.create("acme").await.unwrap();
    assert!(env.keys.revoke(&id).await.unwrap());
    let e = env.strict_client(Some(&revoked)).await.list_jobs(&[]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");
    let e = env.strict_client(Some("osa_not-a-key")).await.list_jobs(&[]).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::Unauthenticated), "{e}");

    // Images: too large, corrupt, faceless.
    let big = std::fs::read(sample("portrait.png")).unwrap();
    assert!(big.len() > 400_000);
    let e = client.create_avatar(big.clone(), "big").await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("image"), "{e}");
    let mut corrupt = big[..2000].to_vec();
    corrupt.extend(std::iter::repeat_n(7u8, 2000));
    let e = client.create_avatar(corrupt, "corrupt").await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    let e = client.create_avatar(b"hello".to_vec(), "text").await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    assert!(client.list_avatars().await.unwrap().is_empty(), "no avatar from a failed upload");
    assert!(env.stored("avatars").is_empty(), "no image kept from a failed upload");

    // A small copy of the portrait is accepted.
    let small = dir.join("small.jpg");
    let status = std::process::Command::new("ffmpeg")
        .args(["-y", "-v", "error", "-i"])
        .arg(sample("portrait.png"))
        .args(["-vf", "scale=384:-2"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(status.success());
    let avatar = client.create_avatar_from_file(&small).await.expect("small portrait");

    // Audio: too long, corrupt, empty.
    let long = speech_excerpt(dir, 4.0);
    let request = |audio: Vec<u8>| RenderRequest {
        avatar_id: avatar.avatar_id.clone(),
        audio,
        seed: Some(SEED),
        ..RenderRequest::default()
    };
    let e = client.submit_render(request(std::fs::read(&long).unwrap())).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    assert!(e.to_string().contains("audio"), "{e}");
    let e = client.submit_render(request(vec![1, 2, 3, 4, 5, 6, 7, 8])).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    let e = client.submit_render(request(Vec::new())).await.unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    let e = client
        .submit_render(RenderRequest {
            fps: 60,
            ..request(std::fs::read(speech_excerpt(dir, 1.0)).unwrap())
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::InvalidArgument), "{e}");
    assert!(client.list_jobs(&[]).await.unwrap().is_empty(), "no job from a refused submit");
    assert!(env.stored("jobs").is_empty(), "no upload kept from a refused submit");

    // Tenants: another tenant sees none of acme's avatars or jobs.
    let short = speech_excerpt(dir, 1.0);
    let out = dir.join("ok.mp4");
    let (job, _) = render(&client, &avatar.avatar_id, &short, &out).await;
    let (_, other_key) = env.keys.create("globex").await.unwrap();
    let globex = env.strict_client(Some(&other_key)).await;
    for e in [
        globex.get_job(&job.job_id).await.unwrap_err(),
        globex.cancel_job(&job.job_id).await.unwrap_err(),
        globex.download_result(&job.job_id, &dir.join("stolen.mp4")).await.unwrap_err(),
        globex.get_avatar(&avatar.avatar_id).await.unwrap_err(),
        globex
            .submit_render(RenderRequest {
                avatar_id: avatar.avatar_id.clone(),
                audio: std::fs::read(&short).unwrap(),
                ..RenderRequest::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(code(&e), Some(Code::NotFound), "{e}");
    }
    assert!(!dir.join("stolen.mp4").exists());
    assert!(globex.list_jobs(&[]).await.unwrap().is_empty());
    assert!(globex.list_avatars().await.unwrap().is_empty());

    // Idempotency: the same key and body is the same job; another body under
    // the same key is refused.
    let keyed = |audio: Vec<u8>| RenderRequest {
        idempotency_key: Some("order-1".into()),
        ..request(audio)
    };
    let first = client.submit_render(keyed(std::fs::read(&short).unwrap())).await.unwrap();
    let second = client.submit_render(keyed(std::fs::read(&short).unwrap())).await.unwrap();
    assert_eq!(first.job_id, second.job_id);
    let e = client
        .submit_render(keyed(std::fs::read(speech_excerpt(dir, 0.5)).unwrap()))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(Code::AlreadyExists), "{e}");

    // Live sessions per key: the second concurrent one is refused with a
    // retry hint.
    let start = LiveStart { avatar_id: avatar.avatar_id.clone(), ..LiveStart::default() };
    let (_tx, mut rx) = client.live(start.clone()).await.unwrap();
    assert!(matches!(rx.next().await, Some(Ok(LiveEvent::Started(_)))));
    let refused = match client.live(start).await {
        Err(e) => e,
        Ok((_t, mut r)) => r.next().await.expect("an answer").unwrap_err(),
    };
    assert_eq!(code(&refused), Some(Code::ResourceExhausted), "{refused}");
    assert!(refused.retry_after().is_some(), "retry-after-ms metadata");
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_over_the_rate_are_refused_with_a_retry_hint() {
    let env = Env::start(|o| o.gateway.gateway.requests_per_second_per_key = 2.0).await;
    let client = env.strict_client(Some(&env.key)).await;
    let mut refused = None;
    for _ in 0..10 {
        if let Err(e) = client.list_jobs(&[]).await {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("10 calls at once exceed 2 per second");
    assert_eq!(code(&e), Some(Code::ResourceExhausted), "{e}");
    assert!(e.retry_after().is_some());
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_sessions_interrupt_keep_going_and_time_out_when_idle() {
    let env = Env::start(|o| o.gateway.live.idle_timeout = Duration::from_millis(1500)).await;
    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 2.0);
    let pcm = pcm16(&audio);
    let start = LiveStart {
        avatar_id: avatar.avatar_id.clone(),
        output: VideoOutput::RawFrames as i32,
        ..LiveStart::default()
    };

    // An utterance, an interrupt, a second utterance, the end.
    let (tx, mut rx) = client.live(start.clone()).await.unwrap();
    tx.send_pcm16(&pcm).await.unwrap();
    tx.interrupt().await.unwrap();
    tx.send_pcm16(&pcm[..16_000]).await.unwrap();
    tx.end().await.unwrap();
    let mut indices = Vec::new();
    let mut interrupted = None;
    let mut ended = None;
    let mut frames = 0;
    while let Some(event) = rx.next().await {
        match event.expect("event") {
            LiveEvent::Started(_) => {}
            LiveEvent::Clip(c) => {
                indices.push(c.timing.unwrap().clip_index);
                if let Some(v1::live_clip::Video::Frames(f)) = &c.video {
                    frames += c.timing.unwrap().real_frames;
                    assert!(f.rgb.is_some());
                }
            }
            LiveEvent::Interrupted(i) => interrupted = Some(i),
            LiveEvent::Ended(e) => ended = Some(e),
        }
    }
    let interrupted = interrupted.expect("the interrupt is acknowledged");
    let ended = ended.expect("the session ends");
    assert_eq!(indices, (0..indices.len() as u64).collect::<Vec<_>>(), "consecutive clips");
    assert_eq!(ended.clips, indices.len() as u64);
    // The second utterance (1 s = 25 frames = 3 clips) always follows.
    assert!(indices.len() as u64 >= interrupted.next_clip_index + 3, "{indices:?} {interrupted:?}");
    assert!((ended.audio_seconds - 3.0).abs() < 0.01);
    assert!(frames > 0);

    // Silence past the idle timeout ends the session.
    let (_tx, mut rx) = client.live(start).await.unwrap();
    assert!(matches!(rx.next().await, Some(Ok(LiveEvent::Started(_)))));
    let e = rx.next().await.expect("an answer").unwrap_err();
    assert_eq!(code(&e), Some(Code::DeadlineExceeded), "{e}");
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finished_job_calls_its_webhook_with_a_valid_signature() {
    use std::sync::{Arc, Mutex};
    let env = Env::start(|o| {
        o.gateway.webhooks.allow_http = true;
        o.gateway.webhooks.allow_private_addresses = true;
    })
    .await;
    type Calls = Arc<Mutex<Vec<(String, Vec<u8>)>>>;
    let received: Calls = Arc::default();
    let app = {
        let received = received.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let received = received.clone();
                async move {
                    let sig = headers
                        .get("osa-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    received.lock().unwrap().push((sig, body.to_vec()));
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 1.0);
    let options = RenderOptions { webhook_url: Some(url), ..opts() };
    let out = env.data.path().join("hooked.mp4");
    let job = client.render_file(&avatar.avatar_id, &audio, &out, options, |_| {}).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no webhook call");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sig, body) = received.lock().unwrap()[0].clone();
    let secrets = osa_gateway::webhook::WebhookSecrets::new(
        osa_gateway::redis_connection(&osa_gateway::settings::RedisSettings {
            url: env.redis.url(),
            ..Default::default()
        })
        .unwrap(),
        "osa:",
    );
    let secret = secrets.get_or_create("acme").await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(
        osa_gateway::webhook::verify(secret.as_bytes(), &sig, &body, now, Duration::from_secs(300)),
        "signature {sig:?} verifies under the tenant's secret"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["job_id"], job.job_id.as_str());
    assert_eq!(json["state"], "succeeded");
    let other = osa_gateway::webhook::sign(b"another secret", now, &body);
    assert!(!osa_gateway::webhook::verify(
        secret.as_bytes(),
        &other,
        &body,
        now,
        Duration::from_secs(300)
    ));
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_session_survives_its_generator_dying() {
    let mut env = Env::start(|o| {
        o.hard_stop = true;
        o.standby_generators = 1;
    })
    .await;
    let client = env.client().await;
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 3.0);
    let pcm = pcm16(&audio);
    let start = LiveStart {
        avatar_id: avatar.avatar_id.clone(),
        output: VideoOutput::RawFrames as i32,
        sampling: Some(v1::SamplingOptions { steps: 1, seed: SEED }),
        ..LiveStart::default()
    };
    let (tx, mut rx) = client.live(start).await.unwrap();
    let (half, rest) = pcm.split_at(pcm.len() * 2 / 3);
    tx.send_pcm16(half).await.unwrap();
    let mut indices = Vec::new();
    let mut killed = false;
    let mut ended = None;
    let mut rest = Some(rest.to_vec());
    while let Some(event) = rx.next().await {
        match event.expect("the session survives") {
            LiveEvent::Clip(c) => indices.push(c.timing.unwrap().clip_index),
            LiveEvent::Ended(e) => ended = Some(e),
            _ => {}
        }
        if !killed && !indices.is_empty() {
            killed = true;
            let dead = env.cluster.generators.remove(0);
            dead.stop().await.unwrap();
            env.cluster.start_standby(0).await.unwrap();
            let (tx, rest) = (tx.clone(), rest.take().unwrap());
            tokio::spawn(async move {
                tx.send_pcm16(&rest).await.unwrap();
                tx.end().await.unwrap();
            });
        }
    }
    assert!(killed, "the generator died mid-session");
    let ended = ended.expect("the session ends normally");
    assert_eq!(
        indices,
        (0..indices.len() as u64).collect::<Vec<_>>(),
        "no clip skipped or repeated"
    );
    assert_eq!(ended.clips, expected_frames(&audio, 25).div_ceil(12));
    env.cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_api_is_served_over_tls_when_configured() {
    let pki = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert, key) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let env = Env::start(|o| {
        o.gateway.grpc.tls = osa_runtime::settings::TlsSettings {
            cert_path: Some(cert.clone()),
            key_path: Some(key.clone()),
            client_ca_path: None,
        };
        o.gateway_ca = Some(cert.clone());
    })
    .await;
    assert!(env.url().starts_with("https://"), "{}", env.url());
    let mut config = osa_client::ClientConfig::new(env.url());
    config.api_key = Some(env.key.clone());
    config.ca_pem = Some(std::fs::read(&cert).unwrap());
    let client = Client::with_config(config).await.expect("a TLS client");
    let avatar = client.create_avatar_from_file(&sample("portrait.png")).await.unwrap();
    let audio = speech_excerpt(env.data.path(), 1.0);
    let out = env.data.path().join("tls.mp4");
    render(&client, &avatar.avatar_id, &audio, &out).await;
    assert_eq!(probe(&out).video_frames, expected_frames(&audio, 25));

    // Plain HTTP/2 to the TLS port gets no answer.
    let plain = env.url().replacen("https://", "http://", 1);
    let refused = match Client::connect(&plain, Some(&env.key)).await {
        Err(e) => e,
        Ok(c) => c.list_avatars().await.unwrap_err(),
    };
    assert!(refused.code() != Some(Code::Ok), "{refused}");
    env.cluster.stop().await.unwrap();
}
