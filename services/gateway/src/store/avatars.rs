//! Avatars: the uploaded portrait's metadata (an [`v1::Avatar`]) plus where
//! its image and its generator-side cache live.
//!
//! Layout: `<p>avatar:<tenant>:<id>` hash {avatar (prost bytes), image_key,
//! generator_id, seq}; `<p>avatars:<tenant>` sorted set of ids scored by
//! `seq` (from the shared `<p>seq` counter), for newest-first listing. The
//! tenant is part of the record's key, so another tenant's id is simply
//! absent.

use std::sync::LazyLock;

use osa_proto::v1;
use redis::{AsyncCommands as _, aio::ConnectionManager};

use super::{Fields, Listing, StoreError};

/// One stored avatar.
#[derive(Debug, Clone, PartialEq)]
pub struct AvatarRecord {
    /// What the API returns (`avatar_id` is the record's id).
    pub avatar: v1::Avatar,
    /// Blob key of the uploaded image.
    pub image_key: String,
    /// Id the generator caches the avatar's preparation under.
    pub generator_id: String,
}

/// The avatar store; cheap to clone.
#[derive(Clone)]
pub struct Avatars {
    conn: ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for Avatars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Avatars").field("prefix", &self.prefix).finish()
    }
}

/// Writes the record and indexes it; a replaced record keeps its place in
/// the listing.
static INSERT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local seq = redis.call('HGET', KEYS[1], 'seq')
if not seq then seq = redis.call('INCR', KEYS[3]) end
redis.call('HSET', KEYS[1], 'avatar', ARGV[1], 'image_key', ARGV[2], 'generator_id', ARGV[3], 'seq', seq)
redis.call('ZADD', KEYS[2], seq, ARGV[4])
return 1
",
    )
});

/// Removes the record and its index entry; returns the record's fields.
static DELETE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local fields = redis.call('HGETALL', KEYS[1])
if #fields > 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return fields
",
    )
});

impl Avatars {
    /// The store over `conn`, with every key under `prefix` (e.g. `osa:`).
    pub fn new(conn: ConnectionManager, prefix: &str) -> Self {
        Self { conn, prefix: prefix.to_owned() }
    }

    fn record_key(&self, tenant: &str, id: &str) -> String {
        format!("{}avatar:{tenant}:{id}", self.prefix)
    }

    fn index_key(&self, tenant: &str) -> String {
        format!("{}avatars:{tenant}", self.prefix)
    }

    /// Stores `rec` for `tenant` under `rec.avatar.avatar_id` (replacing a
    /// record with that id).
    pub async fn insert(&self, tenant: &str, rec: &AvatarRecord) -> Result<(), StoreError> {
        let id = &rec.avatar.avatar_id;
        if id.is_empty() {
            return Err(StoreError::Invalid {
                field: "avatar_id".into(),
                reason: "must not be empty".into(),
            });
        }
        let mut conn = self.conn.clone();
        let _: i64 = INSERT
            .key(self.record_key(tenant, id))
            .key(self.index_key(tenant))
            .key(format!("{}seq", self.prefix))
            .arg(prost::Message::encode_to_vec(&rec.avatar))
            .arg(&rec.image_key)
            .arg(&rec.generator_id)
            .arg(id)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// `tenant`'s avatar `avatar_id`; `None` when absent or another tenant's.
    pub async fn get(
        &self,
        tenant: &str,
        avatar_id: &str,
    ) -> Result<Option<AvatarRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let fields: std::collections::HashMap<String, Vec<u8>> =
            conn.hgetall(self.record_key(tenant, avatar_id)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        decode(Fields(fields)).map(Some)
    }

    /// One page of `tenant`'s avatars, newest first, and the token of the
    /// next page (empty on the last). `page_size` 0 means 50; over 100 or a
    /// token not from a previous page is [`StoreError::Invalid`].
    pub async fn list(
        &self,
        tenant: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<v1::Avatar>, String), StoreError> {
        let listing = Listing {
            index: &self.index_key(tenant),
            record_prefix: &self.record_key(tenant, ""),
            field: "avatar",
            states: &[],
        };
        let (raw, next) = listing.page(&self.conn, page_size, page_token).await?;
        let avatars = raw
            .iter()
            .map(|b| {
                <v1::Avatar as prost::Message>::decode(b.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("avatar does not decode: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok((avatars, next))
    }

    /// Deletes `tenant`'s avatar `avatar_id`; returns what was deleted, or
    /// `None` when there was no such avatar.
    pub async fn delete(
        &self,
        tenant: &str,
        avatar_id: &str,
    ) -> Result<Option<AvatarRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let flat: Vec<Vec<u8>> = DELETE
            .key(self.record_key(tenant, avatar_id))
            .key(self.index_key(tenant))
            .arg(avatar_id)
            .invoke_async(&mut conn)
            .await?;
        if flat.is_empty() {
            return Ok(None);
        }
        decode(Fields::from_flat(flat)?).map(Some)
    }
}

fn decode(f: Fields) -> Result<AvatarRecord, StoreError> {
    Ok(AvatarRecord {
        avatar: f.message("avatar")?,
        image_key: f.string("image_key")?,
        generator_id: f.string("generator_id")?,
    })
}
