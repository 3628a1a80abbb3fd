//! Redis context store: one hash per stream under
//! `<prefix>ctx:{<stream_id>}` (the braces are a cluster hash tag, so each
//! stream's keys share a slot), written only by Lua scripts that
//! compare-and-set the version atomically, with a TTL refreshed on every
//! read and write so idle streams clean themselves up.
//!
//! Fields: `v` (version), `avatar`, `steps`, `seed`, `next`, `state` (the
//! rolling state's bytes) and `last` (the last clip's answer,
//! [`LastClip::to_bytes`], empty when there is none). A hash without `last`
//! (written before the field existed) reads as having no last clip.

use std::time::Duration;

use redis::{AsyncCommands as _, Script, aio::ConnectionManager};

use super::{ContextError, ContextStore, LastClip, StreamContext, Versioned, validate_stream_id};

/// How to reach Redis and how long contexts live.
#[derive(Debug, Clone)]
pub struct RedisStoreConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key (several deployments can share one Redis).
    pub key_prefix: String,
    /// A stream untouched this long is deleted by Redis.
    pub idle_timeout: Duration,
    /// How long a prepared avatar stays cached in Redis after its last use.
    pub avatar_ttl: Duration,
    /// How long one Redis request may take before it fails.
    pub response_timeout: Duration,
    /// How long connecting may take.
    pub connection_timeout: Duration,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            key_prefix: "osa:".into(),
            idle_timeout: Duration::from_secs(300),
            avatar_ttl: Duration::from_secs(24 * 3600),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(2),
        }
    }
}

/// Returns 1 when created, 0 when the stream exists.
const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'v', 1, 'avatar', ARGV[2], 'steps', ARGV[3], 'seed', ARGV[4],
  'next', ARGV[5], 'state', ARGV[6], 'last', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
";

/// Returns {0, new_version} on success, {1, 0} when absent, {2, found} on a
/// version mismatch.
const COMMIT: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return {1, 0} end
if v ~= ARGV[2] then return {2, tonumber(v)} end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'v', nv, 'avatar', ARGV[3], 'steps', ARGV[4], 'seed', ARGV[5],
  'next', ARGV[6], 'state', ARGV[7], 'last', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {0, nv}
";

/// Returns the hash (flat field/value list) and refreshes the TTL.
const LOAD: &str = r"
local h = redis.call('HGETALL', KEYS[1])
if #h > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return h
";

/// A [`ContextStore`] in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    config: RedisStoreConfig,
    create: Script,
    commit: Script,
    load: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("config", &self.config).finish()
    }
}

fn redis_err(e: redis::RedisError) -> ContextError {
    ContextError::Redis(e.to_string())
}

impl RedisStore {
    /// Connects (fails when Redis is unreachable; later outages are retried
    /// by the connection manager on the next request).
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, ContextError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| ContextError::Redis(format!("bad redis url {:?}: {e}", config.url)))?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(config.response_timeout))
            .set_connection_timeout(Some(config.connection_timeout))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, manager_config)
            .await
            .map_err(|e| ContextError::Redis(format!("cannot connect to {}: {e}", config.url)))?;
        Ok(Self {
            conn,
            config,
            create: Script::new(CREATE),
            commit: Script::new(COMMIT),
            load: Script::new(LOAD),
        })
    }

    fn key(&self, stream_id: &str) -> String {
        format!("{}ctx:{{{stream_id}}}", self.config.key_prefix)
    }

    fn avatar_key(&self, avatar_id: &str) -> String {
        format!("{}avatar:{{{avatar_id}}}", self.config.key_prefix)
    }

    fn ttl_ms(&self) -> u64 {
        self.config.idle_timeout.as_millis().max(1) as u64
    }

    /// Remaining time to live of a stream's context (tests, debugging).
    pub async fn ttl(&self, stream_id: &str) -> Result<Option<Duration>, ContextError> {
        let mut conn = self.conn.clone();
        let ms: i64 = conn.pttl(self.key(stream_id)).await.map_err(redis_err)?;
        Ok((ms >= 0).then(|| Duration::from_millis(ms as u64)))
    }
}

fn parse(stream_id: &str, flat: Vec<Vec<u8>>) -> Result<Versioned, ContextError> {
    let corrupt = |reason: String| ContextError::Corrupt { stream: stream_id.to_owned(), reason };
    let mut fields = std::collections::HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        fields.insert(String::from_utf8_lossy(&k).into_owned(), v);
    }
    let mut take =
        |name: &str| fields.remove(name).ok_or_else(|| corrupt(format!("field {name} missing")));
    let text = |name: &str, v: Vec<u8>| {
        String::from_utf8(v).map_err(|_| corrupt(format!("field {name} is not UTF-8")))
    };
    fn num<T: std::str::FromStr>(name: &str, s: &str) -> Result<T, String> {
        s.parse().map_err(|_| format!("field {name} = {s:?} is not a number"))
    }
    let version = text("v", take("v")?)?;
    let avatar_id = text("avatar", take("avatar")?)?;
    let steps = text("steps", take("steps")?)?;
    let seed = text("seed", take("seed")?)?;
    let next = text("next", take("next")?)?;
    let state = take("state")?;
    let last = match fields.remove("last") {
        None => None,
        Some(b) if b.is_empty() => None,
        Some(b) => Some(LastClip::from_bytes(&b).map_err(corrupt)?),
    };
    Ok(Versioned {
        version: num("v", &version).map_err(corrupt)?,
        context: StreamContext {
            avatar_id,
            steps: num("steps", &steps).map_err(corrupt)?,
            seed: num("seed", &seed).map_err(corrupt)?,
            next_clip: num("next", &next).map_err(corrupt)?,
            state,
            last,
        },
    })
}

/// The `last` field's value: empty when the context has no last clip.
fn last_bytes(c: &StreamContext) -> Vec<u8> {
    c.last.as_ref().map(LastClip::to_bytes).unwrap_or_default()
}

#[async_trait::async_trait]
impl ContextStore for RedisStore {
    async fn create(&self, stream_id: &str, c: &StreamContext) -> Result<u64, ContextError> {
        validate_stream_id(stream_id)?;
        let mut conn = self.conn.clone();
        let created: i64 = self
            .create
            .key(self.key(stream_id))
            .arg(self.ttl_ms())
            .arg(&c.avatar_id)
            .arg(c.steps)
            .arg(c.seed.to_string())
            .arg(c.next_clip.to_string())
            .arg(c.state.as_slice())
            .arg(last_bytes(c))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if created == 1 { Ok(1) } else { Err(ContextError::Exists(stream_id.to_owned())) }
    }

    async fn load(&self, stream_id: &str) -> Result<Versioned, ContextError> {
        validate_stream_id(stream_id)?;
        let mut conn = self.conn.clone();
        let flat: Vec<Vec<u8>> = self
            .load
            .key(self.key(stream_id))
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        if flat.is_empty() {
            return Err(ContextError::NotFound(stream_id.to_owned()));
        }
        parse(stream_id, flat)
    }

    async fn commit(
        &self,
        stream_id: &str,
        expected: u64,
        c: &StreamContext,
    ) -> Result<u64, ContextError> {
        validate_stream_id(stream_id)?;
        let mut conn = self.conn.clone();
        let (status, version): (i64, i64) = self
            .commit
            .key(self.key(stream_id))
            .arg(self.ttl_ms())
            .arg(expected.to_string())
            .arg(&c.avatar_id)
            .arg(c.steps)
            .arg(c.seed.to_string())
            .arg(c.next_clip.to_string())
            .arg(c.state.as_slice())
            .arg(last_bytes(c))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        match status {
            0 => Ok(version as u64),
            1 => Err(ContextError::NotFound(stream_id.to_owned())),
            _ => Err(ContextError::Conflict {
                stream: stream_id.to_owned(),
                expected,
                found: version as u64,
            }),
        }
    }

    async fn delete(&self, stream_id: &str) -> Result<(), ContextError> {
        validate_stream_id(stream_id)?;
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(self.key(stream_id)).await.map_err(redis_err)?;
        Ok(())
    }

    async fn put_avatar(&self, avatar_id: &str, bytes: &[u8]) -> Result<(), ContextError> {
        validate_stream_id(avatar_id)?;
        let mut conn = self.conn.clone();
        let ttl = self.config.avatar_ttl.as_millis().max(1) as u64;
        let () = redis::cmd("SET")
            .arg(self.avatar_key(avatar_id))
            .arg(bytes)
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn get_avatar(&self, avatar_id: &str) -> Result<Option<Vec<u8>>, ContextError> {
        validate_stream_id(avatar_id)?;
        let mut conn = self.conn.clone();
        let ttl = self.config.avatar_ttl.as_millis().max(1) as u64;
        let bytes: Option<Vec<u8>> = redis::cmd("GETEX")
            .arg(self.avatar_key(avatar_id))
            .arg("PX")
            .arg(ttl)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(bytes)
    }

    async fn ping(&self) -> Result<(), ContextError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(redis_err)?;
        Ok(())
    }
}
