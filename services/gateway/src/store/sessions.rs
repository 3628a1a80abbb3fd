//! Live-session slots: how many live sessions an owner (a tenant or an API
//! key) has open across every gateway of the cluster.
//!
//! Layout: `<p>slots:<owner>` sorted set of session ids scored by the
//! slot's expiry (milliseconds, Redis's clock, so gateways' clocks need not
//! agree). A session renews its slot while it lives; a gateway that dies
//! stops renewing, and its slots are pruned by the next acquire after they
//! expire, so a crash never leaks capacity for longer than the ttl.

use std::{sync::LazyLock, time::Duration};

use redis::{AsyncCommands as _, aio::ConnectionManager};

use super::StoreError;

/// The slot store; cheap to clone.
#[derive(Clone)]
pub struct SessionSlots {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for SessionSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSlots").field("prefix", &self.prefix).finish()
    }
}

/// Prunes expired slots, then takes (or refreshes) ARGV[1]'s slot if fewer
/// than ARGV[2] are held; 1 when held, 0 when full. The key itself expires
/// with its last slot, so idle owners leave nothing behind.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], 0, 0, 'REV', 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], last[2])
return 1
",
    )
});

impl SessionSlots {
    /// The store over `conn`, with every key under `prefix` (e.g. `osa:`).
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self { conn, prefix: prefix.to_owned() }
    }

    /// Takes a slot for `session_id` among `owner`'s at most `max`, held for
    /// `ttl` unless renewed. `None` when all `max` are taken.
    pub async fn acquire(
        &self,
        owner: &str,
        session_id: &str,
        max: u32,
        ttl: Duration,
    ) -> Result<Option<SlotGuard>, StoreError> {
        let slot = Slot {
            conn: self.conn.clone(),
            key: format!("{}slots:{owner}", self.prefix),
            session_id: session_id.to_owned(),
            max,
            ttl,
        };
        Ok(slot.take().await?.then(|| SlotGuard { slot: Some(slot) }))
    }
}

struct Slot {
    conn: ConnectionManager,
    key: String,
    session_id: String,
    max: u32,
    ttl: Duration,
}

impl Slot {
    async fn take(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let held: i64 = ACQUIRE
            .key(&self.key)
            .arg(&self.session_id)
            .arg(self.max)
            .arg(self.ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await?;
        Ok(held == 1)
    }

    async fn release(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(&self.key, &self.session_id).await?;
        Ok(())
    }
}

/// A held session slot. Renew it well within its ttl; release it when the
/// session ends. Dropping it releases it in the background (best effort: if
/// that fails, the slot expires after its ttl).
#[must_use = "the slot is released when the guard is dropped"]
pub struct SlotGuard {
    slot: Option<Slot>,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("SlotGuard");
        if let Some(s) = &self.slot {
            d.field("key", &s.key).field("session_id", &s.session_id);
        }
        d.finish()
    }
}

impl SlotGuard {
    /// Extends the slot by its ttl. A slot that already expired (this
    /// gateway was cut off from Redis for longer than the ttl) is taken
    /// again if there is room, else [`StoreError::QuotaExceeded`]: the
    /// session should end.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let Some(slot) = &self.slot else { return Ok(()) };
        if slot.take().await? {
            Ok(())
        } else {
            Err(StoreError::QuotaExceeded {
                what: format!(
                    "live session {} lost its slot: {} sessions are open already",
                    slot.session_id, slot.max
                ),
            })
        }
    }

    /// Gives the slot back now. Errors are logged: the slot then expires.
    pub async fn release(mut self) {
        if let Some(slot) = self.slot.take()
            && let Err(e) = slot.release().await
        {
            tracing::warn!(session_id = %slot.session_id, error = %e, "cannot release a session slot; it will expire");
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = slot.release().await {
                        tracing::warn!(session_id = %slot.session_id, error = %e, "cannot release a session slot; it will expire");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(session_id = %slot.session_id, "slot dropped outside a runtime; it will expire");
            }
        }
    }
}
