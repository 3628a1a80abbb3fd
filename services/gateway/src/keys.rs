//! API keys: created and revoked by an operator (`osa keys`), stored in
//! Redis as SHA-256 digests only (a leaked database reveals no key), each
//! bound to a tenant. The gateway resolves `authorization: Bearer <key>`
//! to the tenant whose avatars, jobs and sessions the call may touch.
//!
//! Layout (`<prefix>` = `osa:` by default):
//! - `<prefix>key:<sha256 hex>` hash {id, tenant, created_ms}
//! - `<prefix>keyid:<id>` the digest, to revoke by id
//! - `<prefix>keys` set of ids; `<prefix>tenant-keys:<tenant>` set of ids

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{AsyncCommands as _, aio::ConnectionManager};
use sha2::{Digest as _, Sha256};

/// Prefix of every key string: `osa_<32 hex id+secret>`.
pub const KEY_PREFIX: &str = "osa_";

/// A tenant: the owner of avatars, jobs and sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant(pub String);

/// A key as listed (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: String,
    pub tenant: String,
    pub created_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("tenant {0:?} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadTenant(String),
    #[error("redis: {0}")]
    Redis(String),
}

fn redis_err(e: redis::RedisError) -> KeyError {
    KeyError::Redis(e.to_string())
}

/// The key store.
#[derive(Clone)]
pub struct ApiKeys {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("prefix", &self.prefix).finish()
    }
}

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_tenant(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl ApiKeys {
    /// The key store on an existing connection (keys live under `prefix`).
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self { conn, prefix: prefix.to_owned() }
    }

    /// Connects to `url` (`redis://...`); `timeout` bounds each request.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, KeyError> {
        let conn = crate::store::connect(url, timeout).await.map_err(|e| match e {
            crate::store::StoreError::Redis(m) => KeyError::Redis(m),
            other => KeyError::Redis(other.to_string()),
        })?;
        Ok(Self::new(conn, prefix))
    }

    /// Creates a key for `tenant`; returns its id and the key itself (shown
    /// once: only its digest is stored).
    pub async fn create(&self, tenant: &str) -> Result<(String, String), KeyError> {
        if !valid_tenant(tenant) {
            return Err(KeyError::BadTenant(tenant.to_owned()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let key = format!("{KEY_PREFIX}{id}{secret}");
        let d = digest(&key);
        let created_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |t| t.as_millis() as u64);
        let p = &self.prefix;
        let mut conn = self.conn.clone();
        let () = redis::pipe()
            .atomic()
            .hset_multiple(
                format!("{p}key:{d}"),
                &[("id", id.as_str()), ("tenant", tenant), ("created_ms", &created_ms.to_string())],
            )
            .ignore()
            .set(format!("{p}keyid:{id}"), &d)
            .ignore()
            .sadd(format!("{p}keys"), &id)
            .ignore()
            .sadd(format!("{p}tenant-keys:{tenant}"), &id)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok((id, key))
    }

    /// Revokes key `id`; false when there is no such key.
    pub async fn revoke(&self, id: &str) -> Result<bool, KeyError> {
        let p = &self.prefix;
        let mut conn = self.conn.clone();
        let d: Option<String> = conn.get(format!("{p}keyid:{id}")).await.map_err(redis_err)?;
        let Some(d) = d else { return Ok(false) };
        let tenant: Option<String> =
            conn.hget(format!("{p}key:{d}"), "tenant").await.map_err(redis_err)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(format!("{p}key:{d}"))
            .ignore()
            .del(format!("{p}keyid:{id}"))
            .ignore()
            .srem(format!("{p}keys"), id)
            .ignore();
        if let Some(t) = tenant {
            pipe.srem(format!("{p}tenant-keys:{t}"), id).ignore();
        }
        let () = pipe.query_async(&mut conn).await.map_err(redis_err)?;
        Ok(true)
    }

    /// Keys, all or one tenant's, oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<KeyInfo>, KeyError> {
        let p = &self.prefix;
        let mut conn = self.conn.clone();
        let set = match tenant {
            Some(t) => format!("{p}tenant-keys:{t}"),
            None => format!("{p}keys"),
        };
        let ids: Vec<String> = conn.smembers(set).await.map_err(redis_err)?;
        let mut out = Vec::new();
        for id in ids {
            let d: Option<String> = conn.get(format!("{p}keyid:{id}")).await.map_err(redis_err)?;
            let Some(d) = d else { continue };
            let (tenant, created): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                .arg(format!("{p}key:{d}"))
                .arg("tenant")
                .arg("created_ms")
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            if let Some(tenant) = tenant {
                out.push(KeyInfo { id, tenant, created_ms: created.unwrap_or(0) });
            }
        }
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    /// The tenant of `key`; `None` for an unknown, revoked or malformed key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Tenant>, KeyError> {
        let well_formed = key.len() == KEY_PREFIX.len() + 44
            && key.starts_with(KEY_PREFIX)
            && key[KEY_PREFIX.len()..].bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return Ok(None);
        }
        let mut conn = self.conn.clone();
        let tenant: Option<String> = conn
            .hget(format!("{}key:{}", self.prefix, digest(key)), "tenant")
            .await
            .map_err(redis_err)?;
        Ok(tenant.map(Tenant))
    }
}
