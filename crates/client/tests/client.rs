//! The client against a fake in-process gateway: a minimal implementation of
//! the public services, bound to 127.0.0.1:0, whose behaviour each test
//! scripts (failures, broken streams, quotas) and whose record of what it was
//! sent the tests check. The real gateway is exercised by the e2e tests.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{Stream, StreamExt};
use osa_client::{
    Client, ClientConfig, Error, LiveEvent, RenderOptions, RenderRequest, RetryPolicy, v1,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Code, Request, Response, Status};
use v1::{
    JobState, avatar_service_server::AvatarServiceServer, info_service_server::InfoServiceServer,
    live_request, live_response, live_service_server::LiveServiceServer,
    render_service_server::RenderServiceServer,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const KEY: &str = "osa_test_key";
const CHUNK: usize = 16 * 1024;

/// The finished MP4 the fake serves: not a real video, but bytes whose
/// position matters, so a resume at the wrong offset shows.
fn result_bytes() -> Vec<u8> {
    (0..100_003u32).map(|i| (i.wrapping_mul(31) % 251) as u8).collect()
}

/// What the fake was sent and how it should misbehave.
#[derive(Default)]
struct State {
    /// (method, authorization header) of every call.
    auth: Vec<(&'static str, Option<String>)>,
    submits: Vec<v1::SubmitRenderRequest>,
    creates: u32,
    /// SubmitRender answers UNAVAILABLE this many times first.
    unavailable_submits: u32,
    /// GetJob answers RESOURCE_EXHAUSTED (retry-after-ms 50) this many times.
    busy_gets: u32,
    watch_calls: u32,
    /// The first WatchJob stream breaks (UNAVAILABLE) after two updates.
    break_first_watch: bool,
    /// Each job's states in order, and how many were sent.
    timelines: HashMap<String, (Vec<v1::Job>, usize)>,
    fetch_offsets: Vec<u64>,
    /// FetchResult streams break after this many bytes (from their start)
    /// while `fetch_breaks` lasts, with `fetch_break_code`.
    fetch_break_after: usize,
    fetch_breaks: u32,
    fetch_break_code: Option<Code>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn record<T>(&self, method: &'static str, request: &Request<T>) {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("<not ascii>").to_owned());
        self.0.lock().unwrap().auth.push((method, auth));
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }
}

fn job(id: &str, avatar: &str, state: JobState, done: u64) -> v1::Job {
    v1::Job {
        job_id: id.into(),
        avatar_id: avatar.into(),
        state: state as i32,
        progress: Some(v1::Progress {
            clips_done: done,
            clips_total: 3,
            media_seconds_done: done as f64 * 0.48,
            media_seconds_total: 1.44,
        }),
        fps: 25,
        ..Default::default()
    }
}

/// The states a job goes through: avatar "fail" fails after one clip, any
/// other succeeds after three.
fn timeline(id: &str, avatar: &str) -> Vec<v1::Job> {
    let mut t = vec![job(id, avatar, JobState::Queued, 0), job(id, avatar, JobState::Running, 0)];
    if avatar == "fail" {
        t.push(job(id, avatar, JobState::Running, 1));
        let mut failed = job(id, avatar, JobState::Failed, 1);
        failed.failure_code = "INVALID_ARGUMENT".into();
        failed.failure_reason = "audio: no speech found".into();
        t.push(failed);
    } else {
        for done in 1..=3 {
            t.push(job(id, avatar, JobState::Running, done));
        }
        let mut ok = job(id, avatar, JobState::Succeeded, 3);
        ok.result_bytes = result_bytes().len() as u64;
        t.push(ok);
    }
    t
}

fn avatar(id: &str) -> v1::Avatar {
    v1::Avatar { avatar_id: id.into(), display_name: id.into(), ..Default::default() }
}

#[tonic::async_trait]
impl v1::avatar_service_server::AvatarService for Fake {
    async fn create_avatar(
        &self,
        request: Request<v1::CreateAvatarRequest>,
    ) -> Result<Response<v1::Avatar>, Status> {
        self.record("CreateAvatar", &request);
        self.state().creates += 1;
        let r = request.into_inner();
        if r.display_name == "quota" {
            let mut status = Status::resource_exhausted("too many avatars");
            status.metadata_mut().insert("retry-after-ms", "1234".parse().unwrap());
            return Err(status);
        }
        let mut a = avatar("av-1");
        a.display_name = r.display_name;
        a.image_width = r.image.len() as u32;
        Ok(Response::new(a))
    }

    async fn get_avatar(
        &self,
        request: Request<v1::GetAvatarRequest>,
    ) -> Result<Response<v1::Avatar>, Status> {
        self.record("GetAvatar", &request);
        let id = request.into_inner().avatar_id;
        if id != "av-1" {
            return Err(Status::not_found(format!("avatar {id} not found")));
        }
        Ok(Response::new(avatar(&id)))
    }

    async fn list_avatars(
        &self,
        request: Request<v1::ListAvatarsRequest>,
    ) -> Result<Response<v1::ListAvatarsResponse>, Status> {
        self.record("ListAvatars", &request);
        // Two pages: a, b then c.
        let page = match request.into_inner().page_token.as_str() {
            "" => v1::ListAvatarsResponse {
                avatars: vec![avatar("a"), avatar("b")],
                next_page_token: "p2".into(),
            },
            "p2" => {
                v1::ListAvatarsResponse { avatars: vec![avatar("c")], next_page_token: "".into() }
            }
            other => return Err(Status::invalid_argument(format!("page_token {other:?}"))),
        };
        Ok(Response::new(page))
    }

    async fn delete_avatar(
        &self,
        request: Request<v1::DeleteAvatarRequest>,
    ) -> Result<Response<v1::DeleteAvatarResponse>, Status> {
        self.record("DeleteAvatar", &request);
        Ok(Response::new(v1::DeleteAvatarResponse {}))
    }
}

#[tonic::async_trait]
impl v1::render_service_server::RenderService for Fake {
    type WatchJobStream = BoxStream<v1::Job>;
    type FetchResultStream = BoxStream<v1::ByteChunk>;

    async fn submit_render(
        &self,
        request: Request<v1::SubmitRenderRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        self.record("SubmitRender", &request);
        let r = request.into_inner();
        let mut s = self.state();
        s.submits.push(r.clone());
        if s.unavailable_submits > 0 {
            s.unavailable_submits -= 1;
            return Err(Status::unavailable("redis is down"));
        }
        let id = format!("job-{}", r.avatar_id);
        let t = timeline(&id, &r.avatar_id);
        let first = t[0].clone();
        s.timelines.insert(id, (t, 1));
        Ok(Response::new(first))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        self.record("GetJob", &request);
        let mut s = self.state();
        if s.busy_gets > 0 {
            s.busy_gets -= 1;
            let mut status = Status::resource_exhausted("requests per second");
            status.metadata_mut().insert("retry-after-ms", "50".parse().unwrap());
            return Err(status);
        }
        let id = request.into_inner().job_id;
        match s.timelines.get(&id) {
            Some((t, sent)) => Ok(Response::new(t[sent - 1].clone())),
            None => Err(Status::not_found(format!("job {id} not found"))),
        }
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        self.record("ListJobs", &request);
        let r = request.into_inner();
        let jobs = self
            .state()
            .timelines
            .values()
            .map(|(t, sent)| t[sent - 1].clone())
            .filter(|j| r.states.is_empty() || r.states.contains(&j.state))
            .collect();
        Ok(Response::new(v1::ListJobsResponse { jobs, next_page_token: String::new() }))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        self.record("CancelJob", &request);
        let id = request.into_inner().job_id;
        let mut s = self.state();
        let Some((t, sent)) = s.timelines.get_mut(&id) else {
            return Err(Status::not_found(format!("job {id} not found")));
        };
        let mut cancelled = t[*sent - 1].clone();
        cancelled.state = JobState::Cancelled as i32;
        t.truncate(*sent);
        t.push(cancelled.clone());
        *sent += 1;
        Ok(Response::new(cancelled))
    }

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.record("WatchJob", &request);
        let id = request.into_inner().job_id;
        let (mut items, break_now) = {
            let mut s = self.state();
            s.watch_calls += 1;
            let break_now = s.break_first_watch && s.watch_calls == 1;
            let Some((t, sent)) = s.timelines.get_mut(&id) else {
                return Err(Status::not_found(format!("job {id} not found")));
            };
            // The current state at once, then every later one.
            let items: Vec<_> = t[*sent - 1..].iter().cloned().map(Ok).collect();
            *sent = t.len();
            (items, break_now)
        };
        if break_now {
            items.truncate(2);
            items.push(Err(Status::unavailable("gateway restarting")));
            // What the client has not seen yet must be sent again.
            let mut s = self.state();
            let (_, sent) = s.timelines.get_mut(&id).unwrap();
            *sent = 2;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }

    async fn fetch_result(
        &self,
        request: Request<v1::FetchResultRequest>,
    ) -> Result<Response<Self::FetchResultStream>, Status> {
        self.record("FetchResult", &request);
        let r = request.into_inner();
        let mut s = self.state();
        match s.timelines.get(&r.job_id) {
            Some((t, sent)) if t[sent - 1].state() == JobState::Succeeded => {}
            Some(_) => return Err(Status::failed_precondition("the job has not succeeded")),
            None => return Err(Status::not_found("no such job")),
        }
        s.fetch_offsets.push(r.offset);
        let data = result_bytes();
        let total = data.len() as u64;
        let breaks = s.fetch_breaks > 0;
        s.fetch_breaks = s.fetch_breaks.saturating_sub(1);
        let mut items = Vec::new();
        let mut sent = 0;
        let mut at = r.offset as usize;
        while at < data.len() {
            if breaks && sent >= s.fetch_break_after {
                let code = s.fetch_break_code.unwrap_or(Code::Unavailable);
                items.push(Err(Status::new(code, "connection lost")));
                break;
            }
            let end = (at + CHUNK).min(data.len());
            items.push(Ok(v1::ByteChunk {
                offset: at as u64,
                data: data[at..end].to_vec(),
                total_size: total,
                last: end == data.len(),
            }));
            sent += end - at;
            at = end;
        }
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
}

#[tonic::async_trait]
impl v1::live_service_server::LiveService for Fake {
    type LiveStream = BoxStream<v1::LiveResponse>;

    /// One clip per audio message; an interrupt is acknowledged; end closes.
    async fn live(
        &self,
        request: Request<tonic::Streaming<v1::LiveRequest>>,
    ) -> Result<Response<Self::LiveStream>, Status> {
        self.record("Live", &request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use live_request::Request as In;
            use live_response::Response as Out;
            let send = |r: Result<Out, Status>| {
                let tx = tx.clone();
                async move { tx.send(r.map(|r| v1::LiveResponse { response: Some(r) })).await }
            };
            let mut clips = 0u64;
            let mut audio_bytes = 0usize;
            while let Ok(Some(msg)) = inbound.message().await {
                let out = match msg.request {
                    Some(In::Start(s)) => Ok(Out::Started(v1::LiveStarted {
                        session_id: format!("session-{}", s.avatar_id),
                        fps: s.fps,
                        frames_per_clip: 12,
                        ..Default::default()
                    })),
                    Some(In::Audio(a)) => {
                        audio_bytes += a.pcm16le.len();
                        clips += 1;
                        Ok(Out::Clip(v1::LiveClip {
                            timing: Some(v1::ClipTiming {
                                clip_index: clips - 1,
                                real_frames: (a.pcm16le.len() / 2 / 640) as u32,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }))
                    }
                    Some(In::Interrupt(_)) => Ok(Out::Interrupted(v1::LiveInterrupted {
                        dropped_clips: 0,
                        next_clip_index: clips,
                    })),
                    Some(In::End(_)) => {
                        let ended = Out::Ended(v1::LiveEnded {
                            clips,
                            audio_seconds: audio_bytes as f64 / 32_000.0,
                        });
                        let _ = send(Ok(ended)).await;
                        return;
                    }
                    None => Err(Status::invalid_argument("empty request")),
                };
                if send(out).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl v1::info_service_server::InfoService for Fake {
    async fn get_server_info(
        &self,
        request: Request<v1::GetServerInfoRequest>,
    ) -> Result<Response<v1::ServerInfo>, Status> {
        self.record("GetServerInfo", &request);
        Ok(Response::new(v1::ServerInfo {
            version: "0.1.0-fake".into(),
            supported_fps: vec![24, 25, 30],
            ..Default::default()
        }))
    }
}

/// Starts the fake on a free loopback port; returns it and its URL. The
/// server task ends with the test's runtime.
async fn start(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AvatarServiceServer::new(fake.clone()))
            .add_service(RenderServiceServer::new(fake.clone()))
            .add_service(LiveServiceServer::new(fake.clone()))
            .add_service(InfoServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

/// Short backoffs so retry tests stay fast.
fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(200),
        max_resumes: 6,
    }
}

async fn client_with(url: &str, retry: RetryPolicy) -> Client {
    let mut config = ClientConfig::new(url).api_key(KEY);
    config.retry = retry;
    Client::with_config(config).await.unwrap()
}

async fn client(url: &str) -> Client {
    client_with(url, policy()).await
}

fn audio_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("speech.WAV");
    std::fs::write(&path, b"RIFF fake audio").unwrap();
    path
}

/// Files in `dir` whose name ends with ".partial".
fn partials(dir: &tempfile::TempDir) -> Vec<String> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect()
}

#[tokio::test]
async fn every_call_carries_the_bearer_key() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = Client::connect(&url, Some(KEY)).await.unwrap();
    assert_eq!(c.server_info().await.unwrap().version, "0.1.0-fake");
    let a = c.create_avatar(vec![1, 2, 3], "me").await.unwrap();
    assert_eq!((a.display_name.as_str(), a.image_width), ("me", 3));
    assert_eq!(c.get_avatar("av-1").await.unwrap().avatar_id, "av-1");
    c.delete_avatar("av-1").await.unwrap();

    let auth = fake.state().auth.clone();
    assert_eq!(auth.len(), 4, "{auth:?}");
    for (method, header) in auth {
        assert_eq!(header.as_deref(), Some("Bearer osa_test_key"), "{method}");
    }

    // Without a key, no header at all (the server decides what that means).
    let anonymous = Client::connect(&url, None).await.unwrap();
    anonymous.server_info().await.unwrap();
    assert_eq!(fake.state().auth.last().unwrap().1, None);
}

#[tokio::test]
async fn render_file_reports_progress_and_writes_the_exact_bytes() {
    let fake = Fake::default();
    {
        let mut s = fake.state();
        // A submit that meets a blip is retried under the same key, and a
        // watch that breaks is reopened.
        s.unavailable_submits = 1;
        s.break_first_watch = true;
    }
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let opts = RenderOptions { fps: 30, steps: 2, seed: Some(7), ..Default::default() };
    let mut seen = Vec::new();
    let job = c
        .render_file("av-1", &audio_file(&dir), &out, opts, |j| {
            seen.push((j.state(), j.progress.as_ref().map_or(0, |p| p.clips_done)))
        })
        .await
        .unwrap();

    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(std::fs::read(&out).unwrap(), result_bytes());
    assert!(partials(&dir).is_empty());

    assert_eq!(seen.first(), Some(&(JobState::Queued, 0)));
    assert_eq!(seen.last(), Some(&(JobState::Succeeded, 3)));
    for done in 0..=3 {
        assert!(seen.contains(&(JobState::Running, done)), "{seen:?}");
    }
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "progress went back: {seen:?}");

    let s = fake.state();
    assert_eq!(s.watch_calls, 2, "the broken watch is reopened once");
    assert_eq!(s.submits.len(), 2, "one UNAVAILABLE submit, one retry");
    let key = &s.submits[0].idempotency_key;
    assert!(key.starts_with("osa-client-") && key.len() <= 128, "{key}");
    assert_eq!(&s.submits[1].idempotency_key, key, "the retry reuses the key");
    let r = &s.submits[0];
    assert_eq!((r.fps, r.sampling.unwrap().steps, r.sampling.unwrap().seed), (30, 2, 7));
    let audio = r.audio.as_ref().unwrap();
    assert_eq!(
        (audio.data.as_slice(), audio.format_hint.as_str()),
        (&b"RIFF fake audio"[..], "wav")
    );
}

#[tokio::test]
async fn a_broken_download_resumes_at_the_right_offset() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    c.submit_render(RenderRequest { avatar_id: "av-1".into(), ..Default::default() })
        .await
        .unwrap();
    let mut watch = c.watch_job("job-av-1").await.unwrap();
    while let Some(j) = watch.next().await {
        j.unwrap();
    }
    {
        let mut s = fake.state();
        s.fetch_breaks = 2;
        s.fetch_break_after = 40_000;
        // A cut connection reaches the client as UNKNOWN, not UNAVAILABLE.
        s.fetch_break_code = Some(Code::Unknown);
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/result.mp4");
    let n = c.download_result("job-av-1", &out).await.unwrap();

    let data = result_bytes();
    assert_eq!(n, data.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Each broken stream delivered three whole 16 KiB chunks (49152 bytes)
    // before breaking; each resume starts exactly where the file ended.
    assert_eq!(fake.state().fetch_offsets, vec![0, 49_152, 98_304]);
    assert!(
        std::fs::read_dir(out.parent().unwrap()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".partial"))
    );
}

#[tokio::test]
async fn a_failed_download_leaves_no_file() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    c.submit_render(RenderRequest { avatar_id: "av-1".into(), ..Default::default() })
        .await
        .unwrap();
    let mut watch = c.watch_job("job-av-1").await.unwrap();
    while watch.next().await.is_some() {}
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result.mp4");

    // Not worth resuming: the server's own error mid-stream.
    {
        let mut s = fake.state();
        s.fetch_breaks = 1;
        s.fetch_break_after = 20_000;
        s.fetch_break_code = Some(Code::Internal);
    }
    let err = c.download_result("job-av-1", &out).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Internal), "{err}");
    assert!(!out.exists() && partials(&dir).is_empty());

    // No progress at all: max_attempts (4) opens in a row, then given up.
    {
        let mut s = fake.state();
        s.fetch_offsets.clear();
        s.fetch_breaks = u32::MAX;
        s.fetch_break_after = 0;
        s.fetch_break_code = Some(Code::Unavailable);
    }
    let err = c.download_result("job-av-1", &out).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(!out.exists() && partials(&dir).is_empty());
    assert_eq!(fake.state().fetch_offsets, vec![0; 4]);

    // Progress on every stream but never the end: max_resumes bounds it.
    {
        let mut s = fake.state();
        s.fetch_offsets.clear();
        s.fetch_break_after = 10_000;
    }
    let tight = client_with(&url, RetryPolicy { max_resumes: 3, ..policy() }).await;
    let err = tight.download_result("job-av-1", &out).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
    assert!(!out.exists() && partials(&dir).is_empty());
    assert_eq!(fake.state().fetch_offsets, vec![0, 16_384, 32_768, 49_152]);

    // An unfinished job: FAILED_PRECONDITION, not retried, no file.
    c.submit_render(RenderRequest { avatar_id: "fail".into(), ..Default::default() })
        .await
        .unwrap();
    let err = c.download_result("job-fail", &out).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(!out.exists() && partials(&dir).is_empty());
}

#[tokio::test]
async fn a_failed_job_is_job_failed_and_writes_nothing() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let mut updates = 0;
    let err = c
        .render_file("fail", &audio_file(&dir), &out, RenderOptions::default(), |_| updates += 1)
        .await
        .unwrap_err();
    match err {
        Error::JobFailed { code, reason } => {
            assert_eq!(code, "INVALID_ARGUMENT");
            assert_eq!(reason, "audio: no speech found");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    // Queued (the submit's answer), then the watch: queued, running 0 and 1, failed.
    assert_eq!(updates, 5);
    assert!(!out.exists() && partials(&dir).is_empty());
    assert!(fake.state().fetch_offsets.is_empty());

    // A missing audio file names the file.
    let missing = dir.path().join("nope.wav");
    let err = c.render_file("av-1", &missing, &out, RenderOptions::default(), |_| {}).await;
    assert!(matches!(&err, Err(Error::Io { path, .. }) if *path == missing), "{err:?}");
}

#[tokio::test]
async fn a_cancelled_job_is_job_cancelled() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    let submitted = c
        .submit_render(RenderRequest { avatar_id: "av-1".into(), ..Default::default() })
        .await
        .unwrap();
    let cancelled = c.cancel_job(&submitted.job_id).await.unwrap();
    assert_eq!(cancelled.state(), JobState::Cancelled);
    let cancelled_jobs = c.list_jobs(&[JobState::Cancelled]).await.unwrap();
    assert_eq!(cancelled_jobs.len(), 1);
    assert!(c.list_jobs(&[JobState::Running]).await.unwrap().is_empty());
    let mut watch = c.watch_job(&submitted.job_id).await.unwrap();
    let last = watch.next().await.unwrap().unwrap();
    assert_eq!(last.state(), JobState::Cancelled);
    assert!(watch.next().await.is_none(), "the watch ends after a terminal state");
}

#[tokio::test]
async fn retry_after_is_parsed_and_honoured() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;

    // Not idempotent: the error reaches the caller with the server's hint.
    let err = c.create_avatar(vec![0; 8], "quota").await.unwrap_err();
    match &err {
        Error::Status { code, message, retry_after } => {
            assert_eq!(*code, Code::ResourceExhausted);
            assert_eq!(message, "too many avatars");
            assert_eq!(*retry_after, Some(Duration::from_millis(1234)));
        }
        other => panic!("expected Status, got {other:?}"),
    }
    assert_eq!(err.to_string(), "RESOURCE_EXHAUSTED: too many avatars");
    assert_eq!(fake.state().creates, 1, "a create is never retried");

    // Idempotent: retried after the hinted 50 ms each time.
    c.submit_render(RenderRequest { avatar_id: "av-1".into(), ..Default::default() })
        .await
        .unwrap();
    fake.state().busy_gets = 2;
    let started = Instant::now();
    let j = c.get_job("job-av-1").await.unwrap();
    assert_eq!(j.job_id, "job-av-1");
    assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
    assert_eq!(fake.state().busy_gets, 0);

    // Bounded: more refusals than attempts give the last error back.
    fake.state().busy_gets = 10;
    let err = c.get_job("job-av-1").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_millis(50)));
    assert_eq!(fake.state().busy_gets, 6, "4 attempts");

    // Not retryable: NOT_FOUND at once.
    fake.state().busy_gets = 0;
    let err = c.get_job("job-nope").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound));
}

#[tokio::test]
async fn list_avatars_follows_every_page() {
    let url = start(Fake::default()).await;
    let c = client(&url).await;
    let ids: Vec<_> = c.list_avatars().await.unwrap().into_iter().map(|a| a.avatar_id).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let page = c.list_avatars_page(2, "").await.unwrap();
    assert_eq!(page.next_page_token, "p2");
}

#[tokio::test]
async fn live_round_trip_with_interrupt() {
    let fake = Fake::default();
    let url = start(fake.clone()).await;
    let c = client(&url).await;
    let start = v1::LiveStart { avatar_id: "av-1".into(), fps: 25, ..Default::default() };
    let (tx, mut rx) = c.live(start).await.unwrap();

    match rx.next().await {
        Some(Ok(LiveEvent::Started(s))) => assert_eq!(s.session_id, "session-av-1"),
        other => panic!("expected Started, got {other:?}"),
    }
    tx.send_pcm16(&[0i16; 7680]).await.unwrap();
    match rx.next().await {
        Some(Ok(LiveEvent::Clip(clip))) => {
            let t = clip.timing.unwrap();
            assert_eq!((t.clip_index, t.real_frames), (0, 12));
        }
        other => panic!("expected Clip, got {other:?}"),
    }
    tx.interrupt().await.unwrap();
    match rx.next().await {
        Some(Ok(LiveEvent::Interrupted(i))) => assert_eq!(i.next_clip_index, 1),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let err = tx.send_pcm16le(bytes::Bytes::from_static(&[1, 2, 3])).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    tx.send_pcm16le(bytes::Bytes::from(vec![0u8; 15_360])).await.unwrap();
    assert!(matches!(rx.next().await, Some(Ok(LiveEvent::Clip(_)))));
    tx.end().await.unwrap();
    match rx.next().await {
        Some(Ok(LiveEvent::Ended(e))) => {
            assert_eq!(e.clips, 2);
            assert!((e.audio_seconds - 0.96).abs() < 1e-9, "{}", e.audio_seconds);
        }
        other => panic!("expected Ended, got {other:?}"),
    }
    assert!(rx.next().await.is_none(), "nothing after Ended");
    assert_eq!(fake.state().auth.last().unwrap(), &("Live", Some(format!("Bearer {KEY}"))));
}

#[tokio::test]
async fn connect_errors_are_clear() {
    // A port nothing listens on (bound, then released).
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let err = Client::connect(&format!("http://{addr}"), None).await.unwrap_err();
    assert!(matches!(&err, Error::Connect(m) if m.contains(&addr.to_string())), "{err}");

    let err = Client::connect("http://exa mple", None).await.unwrap_err();
    assert!(matches!(&err, Error::Connect(m) if m.contains("invalid server URL")), "{err}");

    let url = start(Fake::default()).await;
    let err = Client::connect(&url, Some("bad\nkey")).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    // host:port without a scheme means plain http.
    let bare = url.trim_start_matches("http://");
    Client::connect(bare, Some(KEY)).await.unwrap().server_info().await.unwrap();
}
