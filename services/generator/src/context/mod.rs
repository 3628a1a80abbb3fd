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
//!
//! The commit of clip n also stores clip n's answer ([`LastClip`]) in the
//! same atomic write. A replica that dies after committing clip n but before
//! its answer reaches the caller would otherwise lose clip n for good: the
//! stream has moved on and cannot generate it again. With the stored answer
//! another replica replays clip n exactly (see the service's resume rules).

mod memory;
mod redis;

pub use memory::MemoryStore;
pub use redis::{RedisStore, RedisStoreConfig};

use osa_proto::v1::ClipTiming;
use osa_runtime::ServiceError;

/// What a stream carries from one clip to the next.
#[derive(Debug, Clone, PartialEq)]
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
    /// The answer for clip `next_clip - 1`, committed with it so that a
    /// retry of the clip in flight can be answered again; `None` before
    /// clip 0 (and for contexts written before this field existed).
    pub last: Option<LastClip>,
}

/// A generated clip as it was answered: enough to send the identical
/// `GeneratedClip` again without running the model.
#[derive(Debug, Clone, PartialEq)]
pub struct LastClip {
    /// The clip's timing as answered (its `clip_index` names the clip).
    pub timing: ClipTiming,
    /// The latents' exact bytes: little-endian f32, frames x 4 x h x w.
    pub latents: Vec<u8>,
    /// Seconds the denoising network took when the clip was generated.
    pub unet_seconds: f64,
}

/// Version byte of the [`LastClip`] encoding.
const LAST_CLIP_VERSION: u8 = 1;
/// Version, clip_index, first_frame, frame_count, real_frames,
/// start_seconds, duration_seconds, unet_seconds.
const LAST_CLIP_HEADER: usize = 1 + 8 + 8 + 4 + 4 + 8 + 8 + 8;

impl LastClip {
    /// Encoding for stores that keep bytes: a version byte, the timing and
    /// `unet_seconds` as little-endian fixed-width fields (floats by their
    /// bit patterns, so nothing is rounded), then the latents' bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let t = &self.timing;
        let mut out = Vec::with_capacity(LAST_CLIP_HEADER + self.latents.len());
        out.push(LAST_CLIP_VERSION);
        out.extend_from_slice(&t.clip_index.to_le_bytes());
        out.extend_from_slice(&t.first_frame.to_le_bytes());
        out.extend_from_slice(&t.frame_count.to_le_bytes());
        out.extend_from_slice(&t.real_frames.to_le_bytes());
        out.extend_from_slice(&t.start_seconds.to_bits().to_le_bytes());
        out.extend_from_slice(&t.duration_seconds.to_bits().to_le_bytes());
        out.extend_from_slice(&self.unet_seconds.to_bits().to_le_bytes());
        out.extend_from_slice(&self.latents);
        out
    }

    /// Decodes [`LastClip::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < LAST_CLIP_HEADER {
            return Err(format!(
                "last clip: {} bytes, shorter than its {LAST_CLIP_HEADER}-byte header",
                bytes.len()
            ));
        }
        if bytes[0] != LAST_CLIP_VERSION {
            return Err(format!(
                "last clip: unsupported version {} (expected {LAST_CLIP_VERSION})",
                bytes[0]
            ));
        }
        if !(bytes.len() - LAST_CLIP_HEADER).is_multiple_of(4) {
            return Err("last clip: latent bytes are not whole f32 values".into());
        }
        let mut pos = 1;
        let mut field = |n: usize| {
            let s = &bytes[pos..pos + n];
            pos += n;
            s
        };
        let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
        let timing = ClipTiming {
            clip_index: u64_of(field(8)),
            first_frame: u64_of(field(8)),
            frame_count: u32_of(field(4)),
            real_frames: u32_of(field(4)),
            start_seconds: f64::from_bits(u64_of(field(8))),
            duration_seconds: f64::from_bits(u64_of(field(8))),
        };
        let unet_seconds = f64::from_bits(u64_of(field(8)));
        Ok(Self { timing, latents: bytes[LAST_CLIP_HEADER..].to_vec(), unet_seconds })
    }
}

/// A context as stored, with the version the next commit must name.
#[derive(Debug, Clone, PartialEq)]
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
mod tests {
    use super::*;

    #[test]
    fn last_clip_bytes_round_trip_and_bad_bytes_are_named() {
        let last = conformance::ctx_with_last(3, b"").last.unwrap();
        let bytes = last.to_bytes();
        assert_eq!(LastClip::from_bytes(&bytes).unwrap(), last);
        let err = LastClip::from_bytes(&bytes[..10]).unwrap_err();
        assert!(err.contains("header"), "{err}");
        let err = LastClip::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.contains("whole f32"), "{err}");
        let mut other = bytes.clone();
        other[0] = 9;
        let err = LastClip::from_bytes(&other).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
    }
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
            last: None,
        }
    }

    /// A context after clip `next_clip - 1`, carrying that clip's answer.
    pub(crate) fn ctx_with_last(next_clip: u64, state: &[u8]) -> StreamContext {
        let latents: Vec<u8> = (0..=255u8).cycle().take(4 * 3000).collect();
        StreamContext {
            last: Some(LastClip {
                timing: ClipTiming {
                    clip_index: next_clip - 1,
                    first_frame: (next_clip - 1) * 12,
                    frame_count: 12,
                    real_frames: 7,
                    start_seconds: 0.1 + 0.2, // not exactly representable: bits must survive
                    duration_seconds: 7.0 / 25.0,
                },
                latents,
                unet_seconds: 0.012_345,
            }),
            ..ctx(next_clip, state)
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

        // The last clip's answer is stored with the commit, bit for bit, and
        // a later commit without one clears it.
        assert_eq!(store.commit(id, 2, &ctx_with_last(2, b"s2")).await.unwrap(), 3);
        assert_eq!(store.load(id).await.unwrap().context, ctx_with_last(2, b"s2"));
        assert_eq!(store.commit(id, 3, &ctx(2, &state)).await.unwrap(), 4);
        assert_eq!(store.load(id).await.unwrap().context, ctx(2, &state));

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
