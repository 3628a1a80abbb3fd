//! Render jobs: submit, watch (reconnecting), and the whole file-to-file
//! round trip with progress.

use std::{
    hash::{BuildHasher, Hasher},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use futures::{Stream, StreamExt};
use tonic::Streaming;

use crate::{
    Client, Error,
    avatars::MAX_PAGES,
    error::code_name,
    retry::resumable,
    v1::{self, JobState},
};

mod download;

/// A render job to submit (see `SubmitRenderRequest` in the API).
#[derive(Clone, Default)]
pub struct RenderRequest {
    /// The avatar to animate.
    pub avatar_id: String,
    /// A whole audio file (WAV, MP3, FLAC, Ogg, M4A).
    pub audio: Vec<u8>,
    /// Optional container hint ("wav", "mp3", ...); the content is probed
    /// either way.
    pub format_hint: String,
    /// 24, 25 or 30; 0 means the server default (25).
    pub fps: u32,
    /// Sampling steps per clip (1, 2 or 4); 0 means the server default.
    pub steps: u32,
    /// Noise seed; `None` lets the server pick one (reported in the job).
    pub seed: Option<u64>,
    /// Video encoding settings; `None` means the server defaults.
    pub encoding: Option<v1::VideoEncoding>,
    /// Makes the submit safe to retry: the same key and body give the same
    /// job. With a key, [`Client::submit_render`] retries on UNAVAILABLE and
    /// RESOURCE_EXHAUSTED; without one it does not.
    pub idempotency_key: Option<String>,
    /// An https URL the server POSTs the finished job to.
    pub webhook_url: Option<String>,
}

impl std::fmt::Debug for RenderRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The audio's length, not its bytes.
        f.debug_struct("RenderRequest")
            .field("avatar_id", &self.avatar_id)
            .field("audio_bytes", &self.audio.len())
            .field("format_hint", &self.format_hint)
            .field("fps", &self.fps)
            .field("steps", &self.steps)
            .field("seed", &self.seed)
            .field("encoding", &self.encoding)
            .field("idempotency_key", &self.idempotency_key)
            .field("webhook_url", &self.webhook_url)
            .finish()
    }
}

/// Options of [`Client::render_file`]; the defaults are the server's.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// 24, 25 or 30; 0 means the server default (25).
    pub fps: u32,
    /// Sampling steps per clip (1, 2 or 4); 0 means the server default.
    pub steps: u32,
    /// Noise seed; `None` lets the server pick one.
    pub seed: Option<u64>,
    /// Video encoding settings.
    pub encoding: Option<v1::VideoEncoding>,
    /// Idempotency key; `None` generates a fresh one, so the submit can be
    /// retried safely either way.
    pub idempotency_key: Option<String>,
    /// An https URL the server POSTs the finished job to.
    pub webhook_url: Option<String>,
}

/// Whether a job will change no more.
pub(crate) fn is_terminal(job: &v1::Job) -> bool {
    matches!(job.state(), JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

impl Client {
    /// Queues a render job. Retried on UNAVAILABLE / RESOURCE_EXHAUSTED only
    /// when the request carries an idempotency key.
    pub async fn submit_render(&self, req: RenderRequest) -> Result<v1::Job, Error> {
        self.check_upload("the audio", req.audio.len())?;
        let idempotent = req.idempotency_key.is_some();
        let request = v1::SubmitRenderRequest {
            avatar_id: req.avatar_id,
            audio: Some(v1::AudioInput { data: req.audio, format_hint: req.format_hint }),
            fps: req.fps,
            sampling: Some(v1::SamplingOptions { steps: req.steps, seed: req.seed.unwrap_or(0) }),
            encoding: req.encoding,
            idempotency_key: req.idempotency_key.unwrap_or_default(),
            webhook_url: req.webhook_url.unwrap_or_default(),
        };
        if !idempotent {
            return Ok(self.render.clone().submit_render(request).await?.into_inner());
        }
        self.retrying("SubmitRender", || {
            let (mut c, r) = (self.render.clone(), request.clone());
            async move { c.submit_render(r).await }
        })
        .await
    }

    /// One job.
    pub async fn get_job(&self, job_id: &str) -> Result<v1::Job, Error> {
        let request = v1::GetJobRequest { job_id: job_id.to_owned() };
        self.retrying("GetJob", || {
            let (mut c, r) = (self.render.clone(), request.clone());
            async move { c.get_job(r).await }
        })
        .await
    }

    /// Cancels a queued or running job and returns it. Cancelling a
    /// finished job changes nothing, which makes this safe to retry.
    pub async fn cancel_job(&self, job_id: &str) -> Result<v1::Job, Error> {
        let request = v1::CancelJobRequest { job_id: job_id.to_owned() };
        self.retrying("CancelJob", || {
            let (mut c, r) = (self.render.clone(), request.clone());
            async move { c.cancel_job(r).await }
        })
        .await
    }

    /// One page of the caller's jobs, newest first.
    pub async fn list_jobs_page(
        &self,
        request: v1::ListJobsRequest,
    ) -> Result<v1::ListJobsResponse, Error> {
        self.retrying("ListJobs", || {
            let (mut c, r) = (self.render.clone(), request.clone());
            async move { c.list_jobs(r).await }
        })
        .await
    }

    /// All of the caller's jobs in `states` (all states when empty), newest
    /// first, following every page.
    pub async fn list_jobs(&self, states: &[JobState]) -> Result<Vec<v1::Job>, Error> {
        let mut all = Vec::new();
        let mut request = v1::ListJobsRequest {
            page_size: 0,
            page_token: String::new(),
            states: states.iter().map(|s| *s as i32).collect(),
        };
        for _ in 0..MAX_PAGES {
            let page = self.list_jobs_page(request.clone()).await?;
            all.extend(page.jobs);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            if page.next_page_token == request.page_token {
                return Err(Error::Protocol("ListJobs returned the same page token twice".into()));
            }
            request.page_token = page.next_page_token;
        }
        Err(Error::Protocol(format!("ListJobs did not end after {MAX_PAGES} pages")))
    }

    /// The job's state now and at every change, ending after a terminal
    /// state. A stream that breaks (gateway restart, network) is reopened —
    /// the server re-sends the current state, so nothing is missed — within
    /// the retry policy's bounds; an error that ends the watch is the
    /// stream's last item.
    pub async fn watch_job(
        &self,
        job_id: &str,
    ) -> Result<impl Stream<Item = Result<v1::Job, Error>> + Send + Unpin + 'static, Error> {
        let first = self.open_watch(job_id).await?;
        let watch = Watch {
            client: self.clone(),
            job_id: job_id.to_owned(),
            stream: Some(first),
            failures: 0,
            resumes: 0,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(watch, Watch::step)))
    }

    /// Opens a WatchJob stream, retrying while the gateway is unavailable.
    async fn open_watch(&self, job_id: &str) -> Result<Streaming<v1::Job>, Error> {
        let request = v1::WatchJobRequest { job_id: job_id.to_owned() };
        self.retrying("WatchJob", || {
            let (mut c, r) = (self.render.clone(), request.clone());
            async move { c.watch_job(r).await }
        })
        .await
    }

    /// Renders `audio` with the avatar into the MP4 at `out`: submits (with
    /// an idempotency key, so a retried submit cannot make a second job),
    /// calls `progress` with the job as submitted and at every change, and
    /// downloads the result. A failed job is [`Error::JobFailed`], a
    /// cancelled one [`Error::JobCancelled`]; `out` is only written once the
    /// whole file is there. Returns the finished job.
    ///
    /// Dropping the future leaves the job running on the server; call
    /// [`Client::cancel_job`] to stop it.
    pub async fn render_file(
        &self,
        avatar_id: &str,
        audio: &Path,
        out: &Path,
        opts: RenderOptions,
        mut progress: impl FnMut(&v1::Job) + Send,
    ) -> Result<v1::Job, Error> {
        let data = tokio::fs::read(audio).await.map_err(|e| Error::io(audio, e))?;
        let format_hint = audio
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let request = RenderRequest {
            avatar_id: avatar_id.to_owned(),
            audio: data,
            format_hint,
            fps: opts.fps,
            steps: opts.steps,
            seed: opts.seed,
            encoding: opts.encoding,
            idempotency_key: Some(opts.idempotency_key.unwrap_or_else(new_idempotency_key)),
            webhook_url: opts.webhook_url,
        };
        let mut job = self.submit_render(request).await?;
        tracing::debug!(job_id = %job.job_id, "render job submitted");
        progress(&job);
        if !is_terminal(&job) {
            let mut updates = self.watch_job(&job.job_id).await?;
            while let Some(update) = updates.next().await {
                job = update?;
                progress(&job);
            }
        }
        match job.state() {
            JobState::Succeeded => {}
            JobState::Failed => {
                return Err(Error::JobFailed {
                    code: if job.failure_code.is_empty() {
                        code_name(tonic::Code::Unknown).to_owned()
                    } else {
                        job.failure_code.clone()
                    },
                    reason: job.failure_reason.clone(),
                });
            }
            JobState::Cancelled => return Err(Error::JobCancelled(job.job_id.clone())),
            other => {
                return Err(Error::Protocol(format!(
                    "the watch of job {} ended in state {}",
                    job.job_id,
                    other.as_str_name()
                )));
            }
        }
        self.download_result(&job.job_id, out).await?;
        Ok(job)
    }
}

/// A fresh idempotency key: unique per call in this process and, with the
/// time and a per-process random seed, across processes. Printable ASCII,
/// well under the API's 128 characters.
fn new_idempotency_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    // RandomState is seeded from the OS's randomness: no extra dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(n);
    format!("osa-client-{nanos:x}-{:x}-{:016x}-{n}", std::process::id(), h.finish())
}

/// State of a reconnecting job watch.
struct Watch {
    client: Client,
    job_id: String,
    /// The open stream; `None` after it broke.
    stream: Option<Streaming<v1::Job>>,
    /// Breaks in a row without a job update in between.
    failures: u32,
    /// Breaks in all.
    resumes: u32,
    /// Set after a terminal state or a final error.
    done: bool,
}

impl Watch {
    async fn step(mut self) -> Option<(Result<v1::Job, Error>, Self)> {
        loop {
            if self.done {
                return None;
            }
            let broken = match &mut self.stream {
                Some(stream) => match stream.message().await {
                    Ok(Some(job)) => {
                        self.failures = 0;
                        self.done = is_terminal(&job);
                        return Some((Ok(job), self));
                    }
                    Ok(None) => Error::Protocol(format!(
                        "the watch of job {} ended before a terminal state",
                        self.job_id
                    )),
                    Err(status) => Error::from(status),
                },
                None => match self.client.open_watch(&self.job_id).await {
                    Ok(stream) => {
                        self.stream = Some(stream);
                        continue;
                    }
                    // open_watch already retried what can be retried.
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                },
            };
            self.stream = None;
            self.failures += 1;
            self.resumes += 1;
            let policy = &self.client.retry;
            let may_resume = matches!(broken, Error::Protocol(_)) || resumable(&broken);
            if !may_resume
                || self.failures >= policy.max_attempts
                || self.resumes > policy.max_resumes
            {
                self.done = true;
                return Some((Err(broken), self));
            }
            let wait = policy.backoff(self.failures, broken.retry_after());
            tracing::debug!(job_id = %self.job_id, error = %broken, "job watch broken; reconnecting");
            tokio::time::sleep(wait).await;
        }
    }
}
