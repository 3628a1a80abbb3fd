//! The gateway's data in Redis: avatars ([`avatars`]), render jobs and their
//! queue ([`jobs`]), and cluster-wide live-session slots ([`sessions`]).
//!
//! Every gateway of a deployment shares one Redis, so everything here is safe
//! for concurrent callers on many machines: multi-key changes run as Lua
//! scripts (atomic on the server), and a gateway that dies leaves nothing that
//! blocks the others (jobs are reclaimed, session slots expire).
//!
//! Records are tenant-scoped: every read takes the caller's tenant, and
//! another tenant's id behaves exactly as an absent one, so the API answers
//! NOT_FOUND and leaks nothing.
//!
//! Key layout (`<p>` is the prefix, `osa:` by default):
//! - `<p>avatar:<tenant>:<id>` hash, `<p>avatars:<tenant>` listing index
//! - `<p>job:<id>` hash, `<p>jobs:<tenant>` listing index, `<p>active:<tenant>`
//!   set of queued and running job ids, `<p>idem:<tenant>:<key>` idempotency
//!   record, `<p>queue` stream (consumer group `runners`), `<p>job-events:<id>`
//!   pub/sub channel
//! - `<p>seq` the counter that orders listings
//! - `<p>slots:<owner>` sorted set of live sessions

pub mod avatars;
pub mod jobs;
pub mod sessions;

use std::time::Duration;

use redis::aio::ConnectionManager;

pub use avatars::{AvatarRecord, Avatars};
pub use jobs::{Claim, JobSpec, Jobs, Lease, Outcome, Submitted};
pub use sessions::{SessionSlots, SlotGuard};

/// How long a client over a quota is told to wait before retrying: a queued
/// or running job usually frees its place within seconds.
pub const QUOTA_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Largest `page_size` a listing accepts.
pub const MAX_PAGE_SIZE: u32 = 100;

/// `page_size` used when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// What the store can fail with. Each variant maps to one gRPC code through
/// [`osa_runtime::ServiceError`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis is unreachable, timed out or refused the command: UNAVAILABLE.
    #[error("redis: {0}")]
    Redis(String),
    /// A bad listing argument (`page_size`, `page_token`): INVALID_ARGUMENT.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// An idempotency key reused with a different request body: ALREADY_EXISTS.
    #[error("{0}")]
    IdempotencyConflict(String),
    /// A per-tenant limit is reached: RESOURCE_EXHAUSTED (retry later).
    #[error("{what}")]
    QuotaExceeded { what: String },
    /// A record that cannot be decoded (a bug or a foreign writer): INTERNAL.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<StoreError> for osa_runtime::ServiceError {
    fn from(e: StoreError) -> Self {
        use osa_runtime::ServiceError as S;
        match e {
            StoreError::Redis(detail) => S::Unavailable { dependency: "redis", detail },
            StoreError::Invalid { field, reason } => S::InvalidArgument { field, reason },
            StoreError::IdempotencyConflict(m) => S::AlreadyExists(m),
            StoreError::QuotaExceeded { what } => {
                S::ResourceExhausted { what, retry_after: Some(QUOTA_RETRY_AFTER) }
            }
            StoreError::Corrupt(m) => S::Internal(format!("corrupt record: {m}")),
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        match e.kind() {
            // A reply of an unexpected shape is our bug, not an outage.
            redis::ErrorKind::UnexpectedReturnType | redis::ErrorKind::Parse => {
                Self::Corrupt(format!("unexpected redis reply: {e}"))
            }
            _ => Self::Redis(e.to_string()),
        }
    }
}

/// Opens a Redis client for `url` (`redis://host:port[/db]`).
pub fn client(url: &str) -> Result<redis::Client, StoreError> {
    redis::Client::open(url).map_err(|e| StoreError::Redis(format!("bad redis url {url:?}: {e}")))
}

/// Connects to `url`; `timeout` bounds connecting and every response, so a
/// Redis outage surfaces as [`StoreError::Redis`] within about `timeout`.
/// The manager reconnects by itself once Redis is back.
pub async fn connect(url: &str, timeout: Duration) -> Result<ConnectionManager, StoreError> {
    ConnectionManager::new_with_config(client(url)?, manager_config(timeout))
        .await
        .map_err(|e| StoreError::Redis(format!("cannot connect to {url}: {e}")))
}

/// How every gateway connection to Redis behaves: `timeout` bounds
/// connecting and each response, one retry, then the error surfaces.
pub fn manager_config(timeout: Duration) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_number_of_retries(1)
}

/// The page size to use for a requested `page_size`.
fn page_size(requested: u32) -> Result<u32, StoreError> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(StoreError::Invalid {
            field: "page_size".into(),
            reason: format!("{n} is over the maximum of {MAX_PAGE_SIZE}"),
        }),
        n => Ok(n),
    }
}

/// Listing position: the sequence number of the last item returned. Tokens
/// are opaque to clients (16 hex digits); sequence numbers only grow, so a
/// token stays valid and no item repeats or goes missing under inserts.
fn decode_token(token: &str) -> Result<Option<u64>, StoreError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || StoreError::Invalid {
        field: "page_token".into(),
        reason: "not a token returned by a previous page".into(),
    };
    if token.len() != 16 {
        return Err(bad());
    }
    u64::from_str_radix(token, 16).map(Some).map_err(|_| bad())
}

fn encode_token(seq: u64) -> String {
    format!("{seq:016x}")
}

/// One page of a listing index (a sorted set of ids scored by sequence
/// number, newest = highest). Reads `field` of each record `<record_prefix><id>`;
/// with `states`, keeps only records whose `state` field is one of them.
/// Index entries whose record has expired are removed on the way. At most
/// `SCAN_CAP` entries are examined per call, so a filter that matches little
/// returns a short page with a token rather than scanning without bound.
const PAGE_SCRIPT: &str = r"
local n = tonumber(ARGV[2])
local cap = tonumber(ARGV[5])
local filter = ARGV[4] ~= ''
local want = {}
for s in string.gmatch(ARGV[4], '%d+') do want[s] = true end
local max = '+inf'
if ARGV[1] ~= '' then max = '(' .. ARGV[1] end
local out = {}
local scanned = 0
local last = ''
local exhausted = false
while #out < n and scanned < cap do
  local batch = redis.call('ZREVRANGEBYSCORE', KEYS[1], max, '-inf', 'WITHSCORES', 'LIMIT', 0, 100)
  if #batch == 0 then exhausted = true break end
  for i = 1, #batch, 2 do
    local id = batch[i]
    scanned = scanned + 1
    last = batch[i + 1]
    local rec = redis.call('HMGET', ARGV[6] .. id, ARGV[3], 'state')
    if not rec[1] then
      redis.call('ZREM', KEYS[1], id)
    elseif (not filter) or want[rec[2]] then
      out[#out + 1] = rec[1]
    end
    if #out >= n or scanned >= cap then break end
  end
  max = '(' .. last
end
local more = ''
if not exhausted and last ~= '' then
  if #redis.call('ZREVRANGEBYSCORE', KEYS[1], '(' .. last, '-inf', 'LIMIT', 0, 1) > 0 then
    more = last
  end
end
return {more, out}
";

/// Most index entries one listing call examines.
const SCAN_CAP: u32 = 1000;

/// What one listing reads: see [`PAGE_SCRIPT`].
struct Listing<'a> {
    /// The sorted set of ids.
    index: &'a str,
    /// Key of a record = this prefix + id.
    record_prefix: &'a str,
    /// The record field returned for each item.
    field: &'a str,
    /// Wanted values of the records' `state` field; empty = all.
    states: &'a [i32],
}

static PAGE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PAGE_SCRIPT));

impl Listing<'_> {
    /// One page: the raw records, newest first, and the next token (empty on
    /// the last page).
    async fn page(
        &self,
        conn: &ConnectionManager,
        page_size_requested: u32,
        page_token: &str,
    ) -> Result<(Vec<Vec<u8>>, String), StoreError> {
        let n = page_size(page_size_requested)?;
        let after = decode_token(page_token)?;
        let states: Vec<String> = self.states.iter().map(i32::to_string).collect();
        let mut conn = conn.clone();
        let (more, records): (String, Vec<Vec<u8>>) = PAGE
            .key(self.index)
            .arg(after.map(|s| s.to_string()).unwrap_or_default())
            .arg(n)
            .arg(self.field)
            .arg(states.join(","))
            .arg(SCAN_CAP)
            .arg(self.record_prefix)
            .invoke_async(&mut conn)
            .await?;
        let next = if more.is_empty() {
            String::new()
        } else {
            let seq: u64 = more.parse().map_err(|_| {
                StoreError::Corrupt(format!("listing score {more:?} is not a sequence"))
            })?;
            encode_token(seq)
        };
        Ok((records, next))
    }
}

/// A hash read with HGETALL, decoded field by field.
struct Fields(std::collections::HashMap<String, Vec<u8>>);

impl Fields {
    /// From a script's flat `[field, value, field, value, ...]` reply.
    fn from_flat(flat: Vec<Vec<u8>>) -> Result<Self, StoreError> {
        if !flat.len().is_multiple_of(2) {
            return Err(StoreError::Corrupt("odd field/value list".into()));
        }
        let mut map = std::collections::HashMap::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            let k = String::from_utf8(k)
                .map_err(|_| StoreError::Corrupt("field name is not UTF-8".into()))?;
            map.insert(k, v);
        }
        Ok(Self(map))
    }

    fn bytes(&self, name: &str) -> Result<&[u8], StoreError> {
        self.0
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| StoreError::Corrupt(format!("field {name:?} is missing")))
    }

    fn string(&self, name: &str) -> Result<String, StoreError> {
        String::from_utf8(self.bytes(name)?.to_vec())
            .map_err(|_| StoreError::Corrupt(format!("field {name:?} is not UTF-8")))
    }

    fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T, StoreError> {
        self.string(name)?
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("field {name:?} is not a number")))
    }

    fn message<M: prost::Message + Default>(&self, name: &str) -> Result<M, StoreError> {
        M::decode(self.bytes(name)?)
            .map_err(|e| StoreError::Corrupt(format!("field {name:?} does not decode: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_and_tokens_are_checked() {
        assert_eq!(page_size(0).unwrap(), 50);
        assert_eq!(page_size(100).unwrap(), 100);
        assert!(
            matches!(page_size(101), Err(StoreError::Invalid { field, .. }) if field == "page_size")
        );
        assert_eq!(decode_token("").unwrap(), None);
        assert_eq!(decode_token(&encode_token(12345)).unwrap(), Some(12345));
        for bad in ["x", "zzzzzzzzzzzzzzzz", "00000000000000001"] {
            assert!(
                matches!(decode_token(bad), Err(StoreError::Invalid { field, .. }) if field == "page_token"),
                "{bad}"
            );
        }
    }

    #[test]
    fn errors_map_to_their_codes() {
        let code = |e: StoreError| tonic::Status::from(osa_runtime::ServiceError::from(e)).code();
        assert_eq!(code(StoreError::Redis("down".into())), tonic::Code::Unavailable);
        assert_eq!(
            code(StoreError::Invalid { field: "page_size".into(), reason: "x".into() }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(code(StoreError::IdempotencyConflict("x".into())), tonic::Code::AlreadyExists);
        assert_eq!(
            code(StoreError::QuotaExceeded { what: "x".into() }),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(code(StoreError::Corrupt("x".into())), tonic::Code::Internal);
    }
}
