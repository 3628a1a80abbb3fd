//! In-memory context store: the embedded mode and unit tests. Bounded in
//! the number of streams; idle streams expire like Redis keys do.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::{ContextError, ContextStore, StreamContext, Versioned, validate_stream_id};

#[derive(Debug)]
struct Entry {
    version: u64,
    context: StreamContext,
    expires: Instant,
}

/// A [`ContextStore`] in process memory.
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Entry>>,
    /// Prepared avatars (tens of MB each at full size), oldest dropped
    /// first beyond `max_avatars`.
    avatars: Mutex<Vec<(String, std::sync::Arc<Vec<u8>>)>>,
    max_avatars: usize,
    idle_timeout: Duration,
    max_streams: usize,
}

impl MemoryStore {
    /// At most `max_streams` open streams and `max_avatars` prepared avatars.
    pub fn new(idle_timeout: Duration, max_streams: usize, max_avatars: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            avatars: Mutex::new(Vec::new()),
            max_avatars: max_avatars.max(1),
            idle_timeout,
            max_streams,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave an entry half-written
        // (every mutation is a single insert/remove), so poisoning is benign.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Live entry for `id`, dropping it if it has expired.
    fn live<'a>(
        map: &'a mut HashMap<String, Entry>,
        id: &str,
        now: Instant,
    ) -> Option<&'a mut Entry> {
        if map.get(id).is_some_and(|e| e.expires <= now) {
            map.remove(id);
        }
        map.get_mut(id)
    }
}

#[async_trait::async_trait]
impl ContextStore for MemoryStore {
    async fn create(&self, stream_id: &str, context: &StreamContext) -> Result<u64, ContextError> {
        validate_stream_id(stream_id)?;
        let now = Instant::now();
        let mut map = self.lock();
        if Self::live(&mut map, stream_id, now).is_some() {
            return Err(ContextError::Exists(stream_id.to_owned()));
        }
        if map.len() >= self.max_streams {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.max_streams {
                return Err(ContextError::Full(self.max_streams));
            }
        }
        let entry =
            Entry { version: 1, context: context.clone(), expires: now + self.idle_timeout };
        map.insert(stream_id.to_owned(), entry);
        Ok(1)
    }

    async fn load(&self, stream_id: &str) -> Result<Versioned, ContextError> {
        validate_stream_id(stream_id)?;
        let now = Instant::now();
        let mut map = self.lock();
        let entry = Self::live(&mut map, stream_id, now)
            .ok_or_else(|| ContextError::NotFound(stream_id.to_owned()))?;
        entry.expires = now + self.idle_timeout;
        Ok(Versioned { version: entry.version, context: entry.context.clone() })
    }

    async fn commit(
        &self,
        stream_id: &str,
        expected: u64,
        context: &StreamContext,
    ) -> Result<u64, ContextError> {
        validate_stream_id(stream_id)?;
        let now = Instant::now();
        let mut map = self.lock();
        let entry = Self::live(&mut map, stream_id, now)
            .ok_or_else(|| ContextError::NotFound(stream_id.to_owned()))?;
        if entry.version != expected {
            return Err(ContextError::Conflict {
                stream: stream_id.to_owned(),
                expected,
                found: entry.version,
            });
        }
        entry.version += 1;
        entry.context = context.clone();
        entry.expires = now + self.idle_timeout;
        Ok(entry.version)
    }

    async fn delete(&self, stream_id: &str) -> Result<(), ContextError> {
        validate_stream_id(stream_id)?;
        self.lock().remove(stream_id);
        Ok(())
    }

    async fn put_avatar(&self, avatar_id: &str, bytes: &[u8]) -> Result<(), ContextError> {
        validate_stream_id(avatar_id)?;
        let mut avatars = self.avatars.lock().unwrap_or_else(|e| e.into_inner());
        avatars.retain(|(id, _)| id != avatar_id);
        while avatars.len() >= self.max_avatars {
            avatars.remove(0);
        }
        avatars.push((avatar_id.to_owned(), std::sync::Arc::new(bytes.to_vec())));
        Ok(())
    }

    async fn get_avatar(&self, avatar_id: &str) -> Result<Option<Vec<u8>>, ContextError> {
        let avatars = self.avatars.lock().unwrap_or_else(|e| e.into_inner());
        Ok(avatars.iter().find(|(id, _)| id == avatar_id).map(|(_, b)| b.as_ref().clone()))
    }

    async fn ping(&self) -> Result<(), ContextError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::context::conformance;

    #[tokio::test]
    async fn conformance() {
        let store = MemoryStore::new(Duration::from_secs(60), 100, 4);
        conformance::create_load_commit(&store).await;
        conformance::racing_commits_have_one_winner(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn idle_streams_expire_and_use_refreshes_them() {
        let store = MemoryStore::new(Duration::from_millis(200), 100, 4);
        store.create("a", &conformance::ctx(0, b"")).await.unwrap();
        store.create("b", &conformance::ctx(0, b"")).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(80)).await;
            store.load("a").await.unwrap(); // keeps "a" alive
        }
        assert!(store.load("a").await.is_ok());
        assert!(matches!(store.load("b").await, Err(ContextError::NotFound(_))));
    }

    #[tokio::test]
    async fn the_number_of_streams_is_bounded() {
        let store = MemoryStore::new(Duration::from_secs(60), 2, 4);
        store.create("a", &conformance::ctx(0, b"")).await.unwrap();
        store.create("b", &conformance::ctx(0, b"")).await.unwrap();
        assert!(matches!(
            store.create("c", &conformance::ctx(0, b"")).await,
            Err(ContextError::Full(2))
        ));
        store.delete("a").await.unwrap();
        store.create("c", &conformance::ctx(0, b"")).await.unwrap();
    }

    #[tokio::test]
    async fn prepared_avatars_are_bounded_oldest_first() {
        let store = MemoryStore::new(Duration::from_secs(60), 10, 2);
        for id in ["a", "b", "c"] {
            store.put_avatar(id, id.as_bytes()).await.unwrap();
        }
        assert_eq!(store.get_avatar("a").await.unwrap(), None);
        assert_eq!(store.get_avatar("c").await.unwrap().as_deref(), Some(&b"c"[..]));
    }

    #[tokio::test]
    async fn bad_stream_ids_are_rejected() {
        let store = MemoryStore::new(Duration::from_secs(60), 2, 4);
        for id in ["", "has space", "{tag}", &"x".repeat(129)] {
            let err = store.create(id, &conformance::ctx(0, b"")).await.unwrap_err();
            assert!(matches!(err, ContextError::InvalidStreamId(_)), "{id:?}");
        }
    }
}
