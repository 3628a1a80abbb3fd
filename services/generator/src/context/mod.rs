//! The rolling temporal context of each generation stream.
//!
//! OSA-LCM generates clip n+1 by editing clip n's latents (EFT rolling
//! sampling), so every stream carries state from clip to clip. It lives in a
//! [`ContextStore`] — Redis in a cluster, memory in the embedded mode — so
//! any generator replica can serve the next clip of any stream, and a stream
//! broken on one replica resumes on another with no clip repeated or skipped.
//!
//! Every write is a compare-and-set on a version number: two replicas can
//! never both commit clip n+1; the loser gets [`ContextError::Conflict`]
//! (gRPC ABORTED) and nothing is overwritten.

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreConfig};

use osa_runtime::ServiceError;

/// What a stream carries from one clip to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamContext {
    /// The prepared avatar the stream animates.
    pub avatar_id: String,
    /// Sampling steps per clip (1, 2 or 4), fixed for the stream.
    pub steps: u32,
    /// Noise seed, fixed for the stream.
    pub seed: u64,
    /// Index of the next clip to generate.
    pub next_clip: u64,
    /// Serialised rolling state (previous clip's latents and what the next
    /// window needs); empty before clip 0.
    pub state: Vec<u8>,
}

/// A context as stored, with the version the next commit must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: u64,
    pub context: StreamContext,
}

/// Why a context operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("stream {0:?} already exists")]
    Exists(String),
    #[error("stream {0:?} not found (never started, finished, or idle past its timeout)")]
    NotFound(String),
    #[error(
        "stream {stream:?} was advanced by another request (expected version {expected}, found {found}); retry from the stored context"
    )]
    Conflict { stream: String, expected: u64, found: u64 },
    #[error("{0}")]
    InvalidStreamId(String),
    #[error("too many open streams ({0}); retry later")]
    Full(usize),
    #[error("{0}")]
    Redis(String),
    #[error("stored context of stream {stream:?} is unreadable: {reason}")]
    Corrupt { stream: String, reason: String },
}

impl From<ContextError> for ServiceError {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::Exists(_) => ServiceError::AlreadyExists(e.to_string()),
            ContextError::NotFound(id) => ServiceError::NotFound { kind: "stream", id },
            ContextError::Conflict { .. } => ServiceError::Aborted(e.to_string()),
            ContextError::InvalidStreamId(reason) => ServiceError::invalid("stream_id", reason),
            ContextError::Full(_) => {
                ServiceError::ResourceExhausted { what: e.to_string(), retry_after: None }
            }
            ContextError::Redis(detail) => {
                ServiceError::Unavailable { dependency: "redis", detail }
            }
            ContextError::Corrupt { .. } => ServiceError::internal(e),
        }
    }
}

/// Where stream contexts live. Reads and writes refresh the stream's idle
/// timeout.
#[async_trait::async_trait]
pub trait ContextStore: Send + Sync + 'static {
    /// Creates a stream at version 1. `Exists` if it is already there.
    async fn create(&self, stream_id: &str, context: &StreamContext) -> Result<u64, ContextError>;

    /// The stored context and its version.
    async fn load(&self, stream_id: &str) -> Result<Versioned, ContextError>;

    /// Replaces the context if its version is still `expected`; returns the
    /// new version (`expected + 1`).
    async fn commit(
        &self,
        stream_id: &str,
        expected: u64,
        context: &StreamContext,
    ) -> Result<u64, ContextError>;

    /// Forgets a stream (finished or cancelled). Absent streams are fine.
    async fn delete(&self, stream_id: &str) -> Result<(), ContextError>;

    /// Stores a prepared avatar's bytes (so any replica can load it instead
    /// of recomputing), replacing an older copy.
    async fn put_avatar(&self, avatar_id: &str, bytes: &[u8]) -> Result<(), ContextError>;

    /// A prepared avatar's bytes, `None` when unknown or expired.
    async fn get_avatar(&self, avatar_id: &str) -> Result<Option<Vec<u8>>, ContextError>;

    /// Round-trip check for readiness.
    async fn ping(&self) -> Result<(), ContextError>;
}

/// Stream ids become Redis key parts: 1..=128 of `[A-Za-z0-9._:-]`.
pub fn validate_stream_id(id: &str) -> Result<(), ContextError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if id.is_empty() || id.len() > 128 || !id.chars().all(ok_char) {
        return Err(ContextError::InvalidStreamId(format!(
            "{id:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod conformance {
    //! Behaviour every store must have; run against each implementation.

    use super::*;

    pub(crate) fn ctx(next_clip: u64, state: &[u8]) -> StreamContext {
        StreamContext {
            avatar_id: "avatar-1".into(),
            steps: 1,
            seed: 42,
            next_clip,
            state: state.to_vec(),
        }
    }

    pub(crate) async fn create_load_commit(store: &dyn ContextStore) {
        let id = "job-1";
        assert!(matches!(store.load(id).await, Err(ContextError::NotFound(_))));
        assert_eq!(store.create(id, &ctx(0, b"")).await.unwrap(), 1);
        assert!(matches!(store.create(id, &ctx(0, b"")).await, Err(ContextError::Exists(_))));
        let got = store.load(id).await.unwrap();
        assert_eq!(got, Versioned { version: 1, context: ctx(0, b"") });

        // Binary state with every byte value survives.
        let state: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        assert_eq!(store.commit(id, 1, &ctx(1, &state)).await.unwrap(), 2);
        let got = store.load(id).await.unwrap();
        assert_eq!(got.version, 2);
        assert_eq!(got.context, ctx(1, &state));

        // A stale writer loses and changes nothing.
        let err = store.commit(id, 1, &ctx(7, b"stale")).await.unwrap_err();
        assert!(matches!(err, ContextError::Conflict { expected: 1, found: 2, .. }), "{err}");
        assert_eq!(store.load(id).await.unwrap().context, ctx(1, &state));

        assert!(matches!(
            store.commit("nope", 1, &ctx(0, b"")).await,
            Err(ContextError::NotFound(_))
        ));
        store.delete(id).await.unwrap();
        store.delete(id).await.unwrap();
        assert!(matches!(store.load(id).await, Err(ContextError::NotFound(_))));
    }

    /// Many writers race for the same version: exactly one wins each round.
    pub(crate) async fn racing_commits_have_one_winner(store: std::sync::Arc<dyn ContextStore>) {
        let id = "race";
        store.create(id, &ctx(0, b"")).await.unwrap();
        for round in 1..=5u64 {
            let mut tasks = Vec::new();
            for writer in 0..8u8 {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    store.commit(id, round, &ctx(round, &[writer])).await
                }));
            }
            let mut winners = Vec::new();
            for (writer, t) in tasks.into_iter().enumerate() {
                match t.await.unwrap() {
                    Ok(v) => {
                        assert_eq!(v, round + 1);
                        winners.push(writer as u8);
                    }
                    Err(ContextError::Conflict { .. }) => {}
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            let stored = store.load(id).await.unwrap();
            assert_eq!(stored.version, round + 1);
            assert_eq!(
                stored.context.state,
                vec![winners[0]],
                "the winner's write is the one kept"
            );
        }
    }
}
