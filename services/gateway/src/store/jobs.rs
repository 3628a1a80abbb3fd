//! Render jobs: records, per-tenant listing, idempotency, quotas, the work
//! queue that gateways' job runners share, and change notifications.
//!
//! Layout (`<p>` = prefix):
//! - `<p>job:<id>` hash: `job` (the [`v1::Job`], prost bytes), `rev` (bumped
//!   by every change), `state` (the job's state as a number, for scripts),
//!   `tenant`, `seq` (listing order), `entry` (queue entry id) and the
//!   [`JobSpec`] fields. A terminal record expires after the retention.
//! - `<p>jobs:<tenant>` sorted set of job ids by `seq`, newest first.
//! - `<p>active:<tenant>` set of the tenant's queued and running job ids
//!   (the quota counts it).
//! - `<p>idem:<tenant>:<key>` hash {job, digest}, kept 24 hours.
//! - `<p>queue` stream of `{job: <id>}` entries read by the consumer group
//!   [`GROUP`]. An entry stays pending while a runner works on it; runners
//!   heartbeat to keep it, and an entry idle for longer than the reclaim
//!   timeout (its gateway died) is claimed by another runner, which resumes
//!   the job. Finishing acknowledges and deletes the entry, so the stream
//!   only holds waiting and in-flight work.
//! - `<p>job-events:<id>` pub/sub channel: `<rev>:<job bytes>` after every
//!   change, for [`Jobs::watch`].
//!
//! Changes are read-modify-write in Rust (the state machine lives here, not
//! in Lua) committed by a script that checks `rev` did not move meanwhile
//! (compare-and-set), retried on a lost race.

use std::{
    pin::Pin,
    sync::{Arc, LazyLock},
    time::{Duration, Instant, SystemTime},
};

use futures::{Stream, StreamExt as _};
use osa_proto::v1::{self, JobState};
use prost::Message as _;
use redis::{
    AsyncCommands as _,
    aio::{ConnectionManager, MultiplexedConnection},
    streams::{StreamAutoClaimReply, StreamId, StreamReadReply},
};

use super::{Fields, Listing, StoreError};

/// The consumer group of job runners on the queue stream.
pub const GROUP: &str = "runners";

/// How long a finished job's record is kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long an idempotency key maps to its job.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 3600);

/// How often [`Jobs::watch`] re-reads the job besides pub/sub, so that a
/// missed message (pub/sub is fire-and-forget) delays it at most this long.
const WATCH_REREAD: Duration = Duration::from_secs(1);

/// How often [`Jobs::claim`] polls the queue when it has no dedicated
/// connection to block on (see [`Jobs::with_client`]).
const CLAIM_POLL: Duration = Duration::from_millis(100);

/// Compare-and-set attempts before giving up on a hot record.
const MAX_CAS_TRIES: usize = 16;

/// Stale queue entries (jobs already finished or gone) one claim may skip
/// before it returns, so a claim call stays bounded.
const MAX_SKIPS: usize = 64;

/// What a job renders, as submitted (validated by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Owner of the job.
    pub tenant: String,
    /// The avatar to animate.
    pub avatar_id: String,
    /// Blob key of the uploaded audio.
    pub audio_key: String,
    /// Duration of the audio in seconds.
    pub audio_seconds: f64,
    /// Clips the job renders in all.
    pub clips_total: u64,
    /// Output frame rate.
    pub fps: u32,
    /// Sampling options in effect (seed filled in).
    pub sampling: v1::SamplingOptions,
    /// Video encoding options, if given.
    pub encoding: Option<v1::VideoEncoding>,
    /// URL to call when the job ends; empty for none.
    pub webhook_url: String,
    /// The client's idempotency key; empty for none.
    pub idempotency_key: String,
    /// Digest of the request body, to tell a retry from a different request
    /// under the same idempotency key.
    pub body_digest: String,
}

/// What [`Jobs::submit`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// A new job was queued.
    Created(v1::Job),
    /// The idempotency key already named this job (same body): nothing new.
    Existing(v1::Job),
}

impl Submitted {
    /// The job, new or existing.
    pub fn job(&self) -> &v1::Job {
        match self {
            Self::Created(j) | Self::Existing(j) => j,
        }
    }

    /// The job, new or existing.
    pub fn into_job(self) -> v1::Job {
        match self {
            Self::Created(j) | Self::Existing(j) => j,
        }
    }
}

/// A job taken from the queue by one runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub job_id: String,
    /// The queue entry (heartbeats and finishing name it).
    pub entry_id: String,
    pub spec: JobSpec,
    /// The job as it was when claimed (resume from its progress).
    pub job: v1::Job,
    /// True when the entry was taken over from a runner that stopped
    /// heartbeating (its gateway died): the job may be half done.
    pub reclaimed: bool,
    /// The consumer that claimed it.
    pub consumer: String,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Still ours: keep going.
    Held,
    /// Another runner owns the job now (ours was too slow to heartbeat), or
    /// it finished elsewhere: stop without finishing it.
    Lost,
    /// The job was cancelled: stop, then call [`Jobs::finish`] to release it.
    Cancelled,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The MP4 is stored; its size.
    Succeeded { result_bytes: u64 },
    /// It failed with `code`; `reason` is for a human.
    Failed { code: tonic::Code, reason: String },
}

/// The job store and queue; cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    conn: ConnectionManager,
    prefix: Arc<str>,
    retention: Duration,
    /// For the dedicated connections of blocking reads and pub/sub; without
    /// it claims poll and watches only re-read.
    client: Option<(redis::Client, Duration)>,
    /// The connection blocking XREADGROUPs run on: a blocking command on the
    /// shared multiplexed connection would stall every other command behind
    /// it.
    blocking: Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("prefix", &self.prefix)
            .field("retention", &self.retention)
            .field("dedicated_connections", &self.client.is_some())
            .finish()
    }
}

/// The submit transaction; see [`Jobs::submit`]. Replies `{outcome, detail}`.
static SUBMIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if ARGV[2] == '1' then
  local idem = redis.call('HMGET', KEYS[1], 'job', 'digest')
  if idem[1] then
    local job = redis.call('HGET', ARGV[6] .. idem[1], 'job')
    if job then
      if idem[2] == ARGV[3] then return {'existing', job} end
      return {'conflict', idem[1]}
    end
  end
end
local active = redis.call('SCARD', KEYS[2])
if active >= tonumber(ARGV[4]) then
  -- Before refusing, drop ids whose job is no longer queued or running (a
  -- release interrupted by an outage), so a lost update cannot hold a place.
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local st = redis.call('HGET', ARGV[6] .. id, 'state')
    if st ~= ARGV[9] and st ~= ARGV[10] then redis.call('SREM', KEYS[2], id) end
  end
  active = redis.call('SCARD', KEYS[2])
  if active >= tonumber(ARGV[4]) then return {'quota', tostring(active)} end
end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'duplicate', ''} end
local seq = redis.call('INCR', KEYS[6])
local entry = redis.call('XADD', KEYS[5], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[3], 'job', ARGV[7], 'rev', 1, 'state', ARGV[8], 'seq', seq, 'entry', entry, unpack(ARGV, 11))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[4], seq, ARGV[1])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'job', ARGV[1], 'digest', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
return {'created', entry}
",
    )
});

/// Compare-and-set of a job record; see [`Jobs::update`].
static UPDATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return 'gone' end
if rev ~= ARGV[1] then return 'conflict' end
if ARGV[10] ~= '' then
  local p = redis.call('XPENDING', KEYS[3], ARGV[9], ARGV[11], ARGV[11], 1)
  if #p > 0 and p[1][2] ~= ARGV[10] then return 'lost' end
end
local new = tonumber(rev) + 1
redis.call('HSET', KEYS[1], 'job', ARGV[2], 'rev', new, 'state', ARGV[3])
if ARGV[4] == '1' then redis.call('SREM', KEYS[2], ARGV[7]) end
if ARGV[5] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
if ARGV[8] ~= '' then
  redis.call('XACK', KEYS[3], ARGV[9], ARGV[8])
  redis.call('XDEL', KEYS[3], ARGV[8])
end
redis.call('PUBLISH', ARGV[6], new .. ':' .. ARGV[2])
return 'ok'
",
    )
});

/// A runner's heartbeat: resets the entry's idle time if it still owns it.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local state = redis.call('HGET', KEYS[2], 'state')
if not state then return 'lost' end
if state == ARGV[4] then return 'cancelled' end
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #p == 0 or p[1][2] ~= ARGV[3] then return 'lost' end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 'held'
",
    )
});

/// A job record as stored.
struct Stored {
    tenant: String,
    job: v1::Job,
    rev: u64,
    spec: JobSpec,
}

/// A change decided by [`Jobs::update`]'s closure.
struct Change {
    job: v1::Job,
    /// Commit only if this consumer still owns this queue entry.
    owner: Option<(String, String)>,
    /// Acknowledge and delete this queue entry.
    ack: Option<String>,
}

/// What [`Jobs::update`] did.
enum Updated {
    /// Wrote this job.
    Written(v1::Job),
    /// The closure chose to change nothing; the current job.
    Kept(v1::Job),
    /// The owner check failed; the current job.
    Lost(v1::Job),
}

fn is_active(state: JobState) -> bool {
    matches!(state, JobState::Queued | JobState::Running)
}

/// True for succeeded, failed and cancelled.
pub fn is_terminal(state: JobState) -> bool {
    matches!(state, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl Jobs {
    /// The store over `conn`, with every key under `prefix` (e.g. `osa:`).
    /// Without [`Jobs::with_client`], claims poll the queue and watches
    /// re-read the record once a second.
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
            retention: DEFAULT_RETENTION,
            client: None,
            blocking: Arc::default(),
        }
    }

    /// Keeps finished jobs for `retention` (default 7 days).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Lets claims block on the queue and watches subscribe to changes, over
    /// dedicated connections from `client` (one for blocking reads, one per
    /// watch); `timeout` bounds opening them. Use it in a server.
    pub fn with_client(mut self, client: redis::Client, timeout: Duration) -> Self {
        self.client = Some((client, timeout));
        self
    }

    fn job_key(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    fn queue_key(&self) -> String {
        format!("{}queue", self.prefix)
    }

    fn active_key(&self, tenant: &str) -> String {
        format!("{}active:{tenant}", self.prefix)
    }

    fn channel(&self, id: &str) -> String {
        format!("{}job-events:{id}", self.prefix)
    }

    /// Creates the queue and its consumer group if missing (idempotent; the
    /// claim calls it again when Redis lost them, e.g. after a restart).
    pub async fn ensure_group(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.queue_key())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => Ok(r?),
        }
    }

    /// Queues job `job_id`, atomically (one script, nothing half-written on
    /// any error):
    /// - with an idempotency key already used by `spec.tenant` within 24
    ///   hours: the same `body_digest` returns [`Submitted::Existing`], a
    ///   different one fails with [`StoreError::IdempotencyConflict`];
    /// - a tenant with `max_active_per_tenant` jobs queued or running already
    ///   gets [`StoreError::QuotaExceeded`];
    /// - else the job is stored as QUEUED, listed for the tenant and added to
    ///   the queue: [`Submitted::Created`].
    pub async fn submit(
        &self,
        job_id: &str,
        spec: JobSpec,
        max_active_per_tenant: u32,
    ) -> Result<Submitted, StoreError> {
        if job_id.is_empty() {
            return Err(StoreError::Invalid {
                field: "job_id".into(),
                reason: "must not be empty".into(),
            });
        }
        let job = v1::Job {
            job_id: job_id.to_owned(),
            avatar_id: spec.avatar_id.clone(),
            state: JobState::Queued as i32,
            progress: Some(v1::Progress {
                clips_done: 0,
                clips_total: spec.clips_total,
                media_seconds_done: 0.0,
                media_seconds_total: spec.audio_seconds,
            }),
            idempotency_key: spec.idempotency_key.clone(),
            fps: spec.fps,
            sampling: Some(spec.sampling),
            created_at: Some(now()),
            ..Default::default()
        };
        let p = &self.prefix;
        let tenant = &spec.tenant;
        let use_idem = !spec.idempotency_key.is_empty();
        let mut invocation = SUBMIT.prepare_invoke();
        invocation
            .key(format!("{p}idem:{tenant}:{}", spec.idempotency_key))
            .key(self.active_key(tenant))
            .key(self.job_key(job_id))
            .key(format!("{p}jobs:{tenant}"))
            .key(self.queue_key())
            .key(format!("{p}seq"))
            .arg(job_id)
            .arg(if use_idem { "1" } else { "0" })
            .arg(&spec.body_digest)
            .arg(max_active_per_tenant)
            .arg(IDEMPOTENCY_TTL.as_millis() as u64)
            .arg(format!("{p}job:"))
            .arg(job.encode_to_vec())
            .arg(JobState::Queued as i32)
            .arg(JobState::Queued as i32)
            .arg(JobState::Running as i32);
        for (field, value) in spec_fields(&spec) {
            invocation.arg(field).arg(value);
        }
        let mut conn = self.conn.clone();
        let (outcome, detail): (String, Vec<u8>) = invocation.invoke_async(&mut conn).await?;
        match outcome.as_str() {
            "created" => Ok(Submitted::Created(job)),
            "existing" => Ok(Submitted::Existing(decode_job(&detail)?)),
            "conflict" => Err(StoreError::IdempotencyConflict(format!(
                "idempotency key {:?} was used for job {} with a different request",
                spec.idempotency_key,
                String::from_utf8_lossy(&detail)
            ))),
            "quota" => Err(StoreError::QuotaExceeded {
                what: format!(
                    "{} jobs are queued or running, the most allowed at once is \
                     {max_active_per_tenant}",
                    String::from_utf8_lossy(&detail)
                ),
            }),
            "duplicate" => Err(StoreError::Invalid {
                field: "job_id".into(),
                reason: format!("job {job_id} exists already"),
            }),
            other => Err(StoreError::Corrupt(format!("submit script answered {other:?}"))),
        }
    }

    /// Reads a record; `None` when absent.
    async fn read(&self, job_id: &str) -> Result<Option<Stored>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: std::collections::HashMap<String, Vec<u8>> =
            conn.hgetall(self.job_key(job_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let f = Fields(fields);
        let tenant = f.string("tenant")?;
        Ok(Some(Stored {
            job: f.message("job")?,
            rev: f.parse("rev")?,
            spec: JobSpec {
                tenant: tenant.clone(),
                avatar_id: f.string("avatar_id")?,
                audio_key: f.string("audio_key")?,
                audio_seconds: f.parse("audio_seconds")?,
                clips_total: f.parse("clips_total")?,
                fps: f.parse("fps")?,
                sampling: f.message("sampling")?,
                encoding: if f.0.contains_key("encoding") {
                    Some(f.message("encoding")?)
                } else {
                    None
                },
                webhook_url: f.string("webhook_url")?,
                idempotency_key: f.string("idempotency_key")?,
                body_digest: f.string("body_digest")?,
            },
            tenant,
        }))
    }

    /// `tenant`'s job `job_id` and what it renders; `None` when absent
    /// (never submitted, expired, or another tenant's).
    pub async fn get(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> Result<Option<(v1::Job, JobSpec)>, StoreError> {
        Ok(self.read(job_id).await?.filter(|s| s.tenant == tenant).map(|s| (s.job, s.spec)))
    }

    /// One page of `tenant`'s jobs, newest first, only those in `states`
    /// (all when empty), and the next token (empty on the last page). A page
    /// may hold fewer than `page_size` jobs when a filter skips many (each
    /// call examines at most 1000). `page_size` 0 means 50; over 100, or a
    /// token not from a previous page, is [`StoreError::Invalid`].
    pub async fn list(
        &self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
        states: &[JobState],
    ) -> Result<(Vec<v1::Job>, String), StoreError> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        let listing = Listing {
            index: &format!("{}jobs:{tenant}", self.prefix),
            record_prefix: &self.job_key(""),
            field: "job",
            states: &states,
        };
        let (raw, next) = listing.page(&self.conn, page_size, page_token).await?;
        let jobs = raw.iter().map(|b| decode_job(b)).collect::<Result<_, _>>()?;
        Ok((jobs, next))
    }

    /// Read-modify-write of job `job_id` (of `tenant` when given): `change`
    /// sees the current record and returns the change to commit, or `None`
    /// to leave it. Retried when the record moved in between. `None` when
    /// the job is absent or another tenant's.
    async fn update(
        &self,
        job_id: &str,
        tenant: Option<&str>,
        mut change: impl FnMut(&Stored) -> Option<Change>,
    ) -> Result<Option<Updated>, StoreError> {
        for _ in 0..MAX_CAS_TRIES {
            let Some(s) = self.read(job_id).await? else { return Ok(None) };
            if tenant.is_some_and(|t| t != s.tenant) {
                return Ok(None);
            }
            let Some(c) = change(&s) else { return Ok(Some(Updated::Kept(s.job))) };
            let state = c.job.state();
            let terminal = is_terminal(state);
            let (owner_consumer, owner_entry) = c.owner.clone().unwrap_or_default();
            let mut conn = self.conn.clone();
            let r: String = UPDATE
                .key(self.job_key(job_id))
                .key(self.active_key(&s.tenant))
                .key(self.queue_key())
                .arg(s.rev)
                .arg(c.job.encode_to_vec())
                .arg(state as i32)
                .arg(if is_active(state) { "0" } else { "1" })
                .arg(if terminal { self.retention.as_millis().max(1) as u64 } else { 0 })
                .arg(self.channel(job_id))
                .arg(job_id)
                .arg(c.ack.as_deref().unwrap_or(""))
                .arg(GROUP)
                .arg(owner_consumer)
                .arg(owner_entry)
                .invoke_async(&mut conn)
                .await?;
            match r.as_str() {
                "ok" => return Ok(Some(Updated::Written(c.job))),
                "conflict" => continue,
                "gone" => return Ok(None),
                "lost" => return Ok(Some(Updated::Lost(s.job))),
                other => {
                    return Err(StoreError::Corrupt(format!("update script answered {other:?}")));
                }
            }
        }
        Err(StoreError::Redis(format!(
            "job {job_id} changed {MAX_CAS_TRIES} times while being updated; try again"
        )))
    }

    /// Cancels `tenant`'s job: a queued or running job becomes CANCELLED (its
    /// runner notices at its next heartbeat; a queued one is skipped by the
    /// queue); a finished job is returned unchanged. `None` when absent.
    pub async fn cancel(&self, tenant: &str, job_id: &str) -> Result<Option<v1::Job>, StoreError> {
        let r = self
            .update(job_id, Some(tenant), |s| {
                is_active(s.job.state()).then(|| {
                    let mut job = s.job.clone();
                    job.set_state(JobState::Cancelled);
                    job.finished_at = Some(now());
                    Change { job, owner: None, ack: None }
                })
            })
            .await?;
        Ok(r.map(Updated::into_job))
    }

    /// Streams `tenant`'s job: the current state at once, then every change
    /// (in order; each carries a revision, so duplicates are dropped), ending
    /// after a terminal state. An absent job, or another tenant's, gives an
    /// empty stream: call [`Jobs::get`] first to answer NOT_FOUND. With
    /// [`Jobs::with_client`] changes come through pub/sub (one connection
    /// per watch), and a re-read every second covers a lost message; without,
    /// the re-reads alone drive it. A Redis failure ends the stream with that
    /// error; a job whose record expires ends it.
    pub fn watch(
        &self,
        tenant: &str,
        job_id: &str,
    ) -> impl Stream<Item = Result<v1::Job, StoreError>> + Send + 'static {
        let mut reread =
            tokio::time::interval_at(tokio::time::Instant::now() + WATCH_REREAD, WATCH_REREAD);
        reread.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let state = WatchState {
            jobs: self.clone(),
            tenant: tenant.to_owned(),
            job_id: job_id.to_owned(),
            rev: 0,
            started: false,
            done: false,
            messages: None,
            reread,
        };
        futures::stream::unfold(state, WatchState::next)
    }

    /// Takes the next job for runner `consumer`: first a job whose runner
    /// stopped heartbeating for `reclaim_idle` (`reclaimed` = true), else a
    /// new one, waiting up to `block` for it. Queue entries of jobs that
    /// ended meanwhile (cancelled while queued) are acknowledged and
    /// skipped. `None` when nothing came within `block`.
    pub async fn claim(
        &self,
        consumer: &str,
        block: Duration,
        reclaim_idle: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let deadline = Instant::now() + block;
        let mut skips = 0;
        let mut cursor = "0-0".to_owned();
        // Entries of dead runners first: those jobs have waited longest.
        // Each XAUTOCLAIM scans a few pending entries; the scans are bounded
        // too, so a long pending list costs one claim call a bounded time.
        let mut scans = 0;
        while skips < MAX_SKIPS && scans < MAX_SKIPS {
            scans += 1;
            let reply: StreamAutoClaimReply = self
                .with_group(|mut conn, queue| {
                    let cursor = cursor.clone();
                    let consumer = consumer.to_owned();
                    async move {
                        redis::cmd("XAUTOCLAIM")
                            .arg(queue)
                            .arg(GROUP)
                            .arg(consumer)
                            .arg(reclaim_idle.as_millis() as u64)
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(1)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            for entry in reply.claimed {
                skips += 1;
                if let Some(c) = self.accept(entry, consumer, true).await? {
                    return Ok(Some(c));
                }
            }
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
        while skips < MAX_SKIPS {
            let entries = self.read_new(consumer, deadline).await?;
            if entries.is_empty() && Instant::now() >= deadline {
                return Ok(None);
            }
            for entry in entries {
                skips += 1;
                if let Some(c) = self.accept(entry, consumer, false).await? {
                    return Ok(Some(c));
                }
            }
        }
        Ok(None)
    }

    /// Runs a queue command, creating the group and retrying once when Redis
    /// lost it (a restart without persistence).
    async fn with_group<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager, String) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match f(self.conn.clone(), self.queue_key()).await {
            Err(e) if is_nogroup(&e) => {
                self.ensure_group().await?;
                Ok(f(self.conn.clone(), self.queue_key()).await?)
            }
            r => Ok(r?),
        }
    }

    /// New entries for `consumer`, waiting until `deadline` at most.
    async fn read_new(
        &self,
        consumer: &str,
        deadline: Instant,
    ) -> Result<Vec<StreamId>, StoreError> {
        let wait = deadline.saturating_duration_since(Instant::now());
        let read = |block: Option<Duration>| {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(GROUP).arg(consumer).arg("COUNT").arg(1);
            if let Some(b) = block {
                cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
            }
            cmd.arg("STREAMS").arg(self.queue_key()).arg(">");
            cmd
        };
        let flatten = |r: Option<StreamReadReply>| {
            r.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect()).unwrap_or_default()
        };
        if let (Some((client, timeout)), true) = (&self.client, wait >= Duration::from_millis(1)) {
            // One blocking read at a time per store; a claim that cannot get
            // the connection within its wait simply finds nothing.
            let Ok(mut guard) = tokio::time::timeout(wait, self.blocking.lock()).await else {
                return Ok(Vec::new());
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait < Duration::from_millis(1) {
                return Ok(Vec::new());
            }
            let mut conn = match guard.take() {
                Some(c) => c,
                None => {
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(*timeout))
                        .set_response_timeout(None);
                    tokio::time::timeout(
                        *timeout,
                        client.get_multiplexed_async_connection_with_config(&config),
                    )
                    .await
                    .map_err(|_| StoreError::Redis("timed out connecting for the queue".into()))??
                }
            };
            let cmd = read(Some(wait));
            let r = tokio::time::timeout(wait + *timeout, async {
                match cmd.query_async::<Option<StreamReadReply>>(&mut conn).await {
                    Err(e) if is_nogroup(&e) => {
                        self.ensure_group().await?;
                        Ok(None)
                    }
                    r => Ok::<_, StoreError>(r?),
                }
            })
            .await
            .map_err(|_| StoreError::Redis("blocking queue read timed out".into()))?;
            // A failed connection is dropped; the next claim opens a new one.
            let r = r?;
            *guard = Some(conn);
            return Ok(flatten(r));
        }
        let cmd = read(None);
        let r: Option<StreamReadReply> = self
            .with_group(|mut conn, _| {
                let cmd = cmd.clone();
                async move { cmd.query_async(&mut conn).await }
            })
            .await?;
        let entries = flatten(r);
        if entries.is_empty() && !wait.is_zero() {
            tokio::time::sleep(wait.min(CLAIM_POLL)).await;
        }
        Ok(entries)
    }

    /// Turns a queue entry into a claim, or acknowledges and drops it when
    /// its job is gone, finished or unreadable.
    async fn accept(
        &self,
        entry: StreamId,
        consumer: &str,
        reclaimed: bool,
    ) -> Result<Option<Claim>, StoreError> {
        let job_id: Option<String> = entry.get("job");
        let stored = match &job_id {
            Some(id) => match self.read(id).await {
                Ok(s) => s,
                Err(StoreError::Corrupt(e)) => {
                    tracing::error!(job_id = %id, error = %e, "dropping a job whose record does not decode");
                    None
                }
                Err(e) => return Err(e),
            },
            None => None,
        };
        match (job_id, stored) {
            (Some(job_id), Some(s)) if !is_terminal(s.job.state()) => Ok(Some(Claim {
                job_id,
                entry_id: entry.id,
                spec: s.spec,
                job: s.job,
                reclaimed,
                consumer: consumer.to_owned(),
            })),
            _ => {
                self.ack(&entry.id).await?;
                Ok(None)
            }
        }
    }

    /// Acknowledges and deletes a queue entry.
    async fn ack(&self, entry_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let () = redis::pipe()
            .atomic()
            .xack(self.queue_key(), GROUP, &[entry_id])
            .ignore()
            .xdel(self.queue_key(), &[entry_id])
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Tells the queue that `consumer` still works on `claim` (call it well
    /// within the reclaim timeout). Resets the entry's idle time only while
    /// `consumer` still owns it.
    pub async fn heartbeat(&self, claim: &Claim, consumer: &str) -> Result<Lease, StoreError> {
        let mut conn = self.conn.clone();
        let r: String = HEARTBEAT
            .key(self.queue_key())
            .key(self.job_key(&claim.job_id))
            .arg(GROUP)
            .arg(&claim.entry_id)
            .arg(consumer)
            .arg(JobState::Cancelled as i32)
            .invoke_async(&mut conn)
            .await?;
        match r.as_str() {
            "held" => Ok(Lease::Held),
            "lost" => Ok(Lease::Lost),
            "cancelled" => Ok(Lease::Cancelled),
            other => Err(StoreError::Corrupt(format!("heartbeat script answered {other:?}"))),
        }
    }

    /// Marks the claimed job RUNNING (keeping `started_at` from a first
    /// attempt). A job that ended meanwhile, or whose entry another runner
    /// took, is returned unchanged: check its state.
    pub async fn start(&self, claim: &Claim) -> Result<v1::Job, StoreError> {
        let r = self
            .update(&claim.job_id, None, |s| {
                is_active(s.job.state()).then(|| {
                    let mut job = s.job.clone();
                    job.set_state(JobState::Running);
                    job.started_at.get_or_insert_with(now);
                    Change {
                        job,
                        owner: Some((claim.consumer.clone(), claim.entry_id.clone())),
                        ack: None,
                    }
                })
            })
            .await?;
        r.map(Updated::into_job).ok_or_else(|| gone(&claim.job_id))
    }

    /// Records the progress of a running job (ignored once it is not running).
    pub async fn progress(&self, job_id: &str, p: v1::Progress) -> Result<(), StoreError> {
        self.update(job_id, None, |s| {
            (s.job.state() == JobState::Running).then(|| {
                let mut job = s.job.clone();
                job.progress = Some(p);
                Change { job, owner: None, ack: None }
            })
        })
        .await?;
        Ok(())
    }

    /// Ends the claimed job with `outcome` and releases its queue entry and
    /// quota place. A job that already ended (cancelled) keeps its state; a
    /// job whose entry another runner took is left to that runner. Returns
    /// the job as it now is.
    pub async fn finish(&self, claim: &Claim, outcome: Outcome) -> Result<v1::Job, StoreError> {
        let r = self
            .update(&claim.job_id, None, |s| {
                if !is_active(s.job.state()) {
                    return None;
                }
                let mut job = s.job.clone();
                job.finished_at = Some(now());
                match &outcome {
                    Outcome::Succeeded { result_bytes } => {
                        job.set_state(JobState::Succeeded);
                        job.result_bytes = *result_bytes;
                        if let Some(p) = &mut job.progress {
                            p.clips_done = p.clips_total;
                            p.media_seconds_done = p.media_seconds_total;
                        }
                    }
                    Outcome::Failed { code, reason } => {
                        job.set_state(JobState::Failed);
                        job.failure_code = code_name(*code).to_owned();
                        job.failure_reason.clone_from(reason);
                    }
                }
                Some(Change {
                    job,
                    owner: Some((claim.consumer.clone(), claim.entry_id.clone())),
                    ack: Some(claim.entry_id.clone()),
                })
            })
            .await?;
        match r {
            Some(Updated::Written(job)) | Some(Updated::Lost(job)) => Ok(job),
            Some(Updated::Kept(job)) => {
                // Ended elsewhere (cancelled): release the entry and place.
                let mut conn = self.conn.clone();
                let () = redis::pipe()
                    .atomic()
                    .xack(self.queue_key(), GROUP, &[&claim.entry_id])
                    .ignore()
                    .xdel(self.queue_key(), &[&claim.entry_id])
                    .ignore()
                    .srem(self.active_key(&claim.spec.tenant), &claim.job_id)
                    .ignore()
                    .query_async(&mut conn)
                    .await?;
                Ok(job)
            }
            None => {
                self.ack(&claim.entry_id).await?;
                Err(gone(&claim.job_id))
            }
        }
    }

    /// Queue entries waiting for a runner or being worked on.
    pub async fn queue_depth(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.xlen(self.queue_key()).await?)
    }
}

/// A job record vanished under a runner (expired, or Redis lost its data).
fn gone(job_id: &str) -> StoreError {
    StoreError::Corrupt(format!("job {job_id} has no record any more"))
}

impl Updated {
    fn into_job(self) -> v1::Job {
        match self {
            Self::Written(j) | Self::Kept(j) | Self::Lost(j) => j,
        }
    }
}

/// The spec's hash fields.
fn spec_fields(spec: &JobSpec) -> Vec<(&'static str, Vec<u8>)> {
    let mut f = vec![
        ("tenant", spec.tenant.clone().into_bytes()),
        ("avatar_id", spec.avatar_id.clone().into_bytes()),
        ("audio_key", spec.audio_key.clone().into_bytes()),
        // `{}` of an f64 is the shortest text that parses back to it exactly.
        ("audio_seconds", spec.audio_seconds.to_string().into_bytes()),
        ("clips_total", spec.clips_total.to_string().into_bytes()),
        ("fps", spec.fps.to_string().into_bytes()),
        ("sampling", spec.sampling.encode_to_vec()),
        ("webhook_url", spec.webhook_url.clone().into_bytes()),
        ("idempotency_key", spec.idempotency_key.clone().into_bytes()),
        ("body_digest", spec.body_digest.clone().into_bytes()),
    ];
    if let Some(e) = &spec.encoding {
        f.push(("encoding", e.encode_to_vec()));
    }
    f
}

fn decode_job(b: &[u8]) -> Result<v1::Job, StoreError> {
    v1::Job::decode(b).map_err(|e| StoreError::Corrupt(format!("job does not decode: {e}")))
}

/// The canonical name of a gRPC code, as in `failure_code`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The state of one [`Jobs::watch`] stream.
struct WatchState {
    jobs: Jobs,
    tenant: String,
    job_id: String,
    /// Revision of the last job sent.
    rev: u64,
    /// The job was read once (the first item).
    started: bool,
    /// A terminal state was sent: end.
    done: bool,
    /// Pub/sub messages `<rev>:<job>`; `None` without a client or once the
    /// subscription broke (then the re-reads carry on).
    messages: Option<Pin<Box<dyn Stream<Item = redis::Msg> + Send>>>,
    reread: tokio::time::Interval,
}

impl WatchState {
    /// Subscribes to the job's changes, then reads it (in this order, so no
    /// change falls between the two).
    async fn open(&mut self) -> Result<Option<v1::Job>, StoreError> {
        if let Some((client, timeout)) = &self.jobs.client {
            let mut pubsub =
                tokio::time::timeout(*timeout, client.get_async_pubsub()).await.map_err(
                    |_| StoreError::Redis("timed out opening a pub/sub connection".into()),
                )??;
            pubsub.subscribe(self.jobs.channel(&self.job_id)).await?;
            self.messages = Some(Box::pin(pubsub.into_on_message()));
        }
        let Some(s) = self.jobs.read(&self.job_id).await?.filter(|s| s.tenant == self.tenant)
        else {
            return Ok(None);
        };
        self.rev = s.rev;
        Ok(Some(s.job))
    }

    async fn next(mut self) -> Option<(Result<v1::Job, StoreError>, Self)> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            return match self.open().await {
                Ok(Some(job)) => {
                    self.done = is_terminal(job.state());
                    Some((Ok(job), self))
                }
                Ok(None) => None,
                Err(e) => {
                    self.done = true;
                    Some((Err(e), self))
                }
            };
        }
        loop {
            let message = match &mut self.messages {
                Some(m) => tokio::select! {
                    msg = m.next() => Some(msg),
                    _ = self.reread.tick() => None,
                },
                None => {
                    self.reread.tick().await;
                    None
                }
            };
            let (rev, job) = match message {
                Some(Some(msg)) => match parse_event(msg.get_payload_bytes()) {
                    Ok(ev) => ev,
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                },
                Some(None) => {
                    self.messages = None;
                    continue;
                }
                None => match self.jobs.read(&self.job_id).await {
                    Ok(Some(s)) if s.tenant == self.tenant => (s.rev, s.job),
                    Ok(_) => return None,
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                },
            };
            if rev > self.rev {
                self.rev = rev;
                self.done = is_terminal(job.state());
                return Some((Ok(job), self));
            }
        }
    }
}

/// Decodes a `<rev>:<job bytes>` change message.
fn parse_event(payload: &[u8]) -> Result<(u64, v1::Job), StoreError> {
    let bad = || StoreError::Corrupt("job change message is malformed".into());
    let colon = payload.iter().position(|&b| b == b':').ok_or_else(bad)?;
    let rev =
        std::str::from_utf8(&payload[..colon]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    Ok((rev, decode_job(&payload[colon + 1..])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_messages_round_trip() {
        let job = v1::Job { job_id: "j".into(), state: 2, ..Default::default() };
        let mut payload = b"42:".to_vec();
        payload.extend(job.encode_to_vec());
        assert_eq!(parse_event(&payload).unwrap(), (42, job));
        assert!(parse_event(b"nocolon").is_err());
        assert!(parse_event(b"x:").is_err());
    }

    #[test]
    fn code_names_are_the_canonical_ones() {
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
