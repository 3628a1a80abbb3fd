//! Result and upload storage through the `object_store` crate: a local
//! directory by default, any S3-compatible store when `storage.url` is
//! `s3://BUCKET/PREFIX`.
//!
//! Keys are the gateway's own (e.g. `jobs/<id>/result.mp4`), never a client's
//! string, so they are held to a strict alphabet; a bad key is a bug and maps
//! to INTERNAL. Objects appear whole or not at all: the local store writes a
//! staging file and renames it, S3 commits a PUT or a multipart upload at
//! once. Large files go up in [`PART_BYTES`] parts with at most
//! [`PARTS_IN_FLIGHT`] in flight, so memory stays bounded whatever the size.

use std::{
    fmt,
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig,
    WriteMultipart, aws::AmazonS3Builder, local::LocalFileSystem, path::Path,
};
use osa_runtime::ServiceError;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

/// Size of one part of a multipart upload (S3 wants at least 5 MiB).
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts uploaded concurrently by [`Blobs::put_file`]; with the part being
/// filled, memory stays under `(PARTS_IN_FLIGHT + 1) * PART_BYTES`.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Longest key accepted (S3 allows 1024 bytes including the prefix).
const MAX_KEY_BYTES: usize = 512;

/// Where results and uploads are stored (`[storage]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// A directory (`./osa-data`, `file:///var/lib/osa`), created if
    /// missing, or `s3://BUCKET[/PREFIX]`.
    pub url: String,
    /// S3-compatible endpoint (MinIO, R2, ...), e.g. `https://minio:9000`;
    /// unset for AWS itself. `AWS_ENDPOINT` in the environment works too.
    pub s3_endpoint: Option<String>,
    /// S3 region; unset: `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1.
    pub s3_region: Option<String>,
    /// Allow a plain-http endpoint (local MinIO in tests; never on a network).
    pub s3_allow_http: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self { url: "./osa-data".into(), s3_endpoint: None, s3_region: None, s3_allow_http: false }
    }
}

/// Where `storage.url` points.
#[derive(Debug, PartialEq)]
enum Location<'a> {
    Local(&'a str),
    S3 { bucket: &'a str, prefix: &'a str },
}

impl StorageSettings {
    fn location(&self) -> Result<Location<'_>, String> {
        let url = self.url.trim();
        if url.is_empty() {
            return Err("storage.url must not be empty".into());
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            return Ok(Location::S3 { bucket, prefix: prefix.trim_matches('/') });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("storage.url \"file://\" names no directory".into());
            }
            return Ok(Location::Local(path));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!(
                "storage.url scheme {scheme:?} is not supported: use a directory, file://PATH or \
                 s3://BUCKET/PREFIX"
            ));
        }
        Ok(Location::Local(url))
    }

    /// Checks the settings; the error names the setting and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self.location()? {
            Location::Local(_) => {
                for (name, set) in [
                    ("storage.s3_endpoint", self.s3_endpoint.is_some()),
                    ("storage.s3_region", self.s3_region.is_some()),
                    ("storage.s3_allow_http", self.s3_allow_http),
                ] {
                    if set {
                        return Err(format!("{name} is set but storage.url is not s3://"));
                    }
                }
            }
            Location::S3 { bucket, prefix } => {
                // S3 bucket naming rules (the common subset of providers).
                let bucket_ok = (3..=63).contains(&bucket.len())
                    && bucket.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                    })
                    && bucket.as_bytes()[0].is_ascii_alphanumeric()
                    && bucket.as_bytes()[bucket.len() - 1].is_ascii_alphanumeric();
                if !bucket_ok {
                    return Err(format!(
                        "storage.url bucket {bucket:?} must be 3 to 63 characters of a-z 0-9 . - \
                         starting and ending with a letter or digit"
                    ));
                }
                if !prefix.is_empty() {
                    check_key(prefix)
                        .map_err(|e| format!("storage.url prefix {prefix:?}: {}", e.reason()))?;
                }
                if let Some(endpoint) = &self.s3_endpoint {
                    let rest = if let Some(rest) = endpoint.strip_prefix("https://") {
                        rest
                    } else if let Some(rest) = endpoint.strip_prefix("http://") {
                        if !self.s3_allow_http {
                            return Err(format!(
                                "storage.s3_endpoint {endpoint:?} is plain http: use https or set \
                                 storage.s3_allow_http"
                            ));
                        }
                        rest
                    } else {
                        return Err(format!(
                            "storage.s3_endpoint {endpoint:?} must be an http(s):// URL"
                        ));
                    };
                    if rest.split('/').next().is_none_or(str::is_empty) {
                        return Err(format!("storage.s3_endpoint {endpoint:?} has no host"));
                    }
                }
                if self.s3_region.as_deref().is_some_and(|r| r.trim().is_empty()) {
                    return Err("storage.s3_region must not be empty when set".into());
                }
            }
        }
        Ok(())
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// `storage.*` settings are unusable (see [`StorageSettings::validate`]).
    #[error("{0}")]
    Settings(String),
    /// A key outside the accepted alphabet or shape (a bug in the caller).
    #[error("invalid object key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },
    /// [`Blobs::read_from`] on a key that does not exist.
    #[error("object {0:?} not found")]
    NotFound(String),
    /// [`Blobs::read_from`] past the end of the object.
    #[error("offset {offset} is past the end of the object ({size} bytes)")]
    OffsetPastEnd { offset: u64, size: u64 },
    /// [`Blobs::read_from`] with a zero chunk size.
    #[error("chunk size must be positive")]
    ZeroChunk,
    /// A local file given to [`Blobs::put_file`] could not be read.
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The store failed (disk, network, credentials, ...).
    #[error("{0}")]
    Backend(String),
}

impl BlobError {
    fn reason(&self) -> String {
        match self {
            Self::BadKey { reason, .. } => (*reason).to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<object_store::Error> for BlobError {
    fn from(e: object_store::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(key) => ServiceError::NotFound { kind: "object", id: key },
            BlobError::OffsetPastEnd { .. } => ServiceError::invalid("offset", e),
            BlobError::Backend(detail) => {
                ServiceError::Unavailable { dependency: "object store", detail }
            }
            BlobError::Settings(_)
            | BlobError::BadKey { .. }
            | BlobError::ZeroChunk
            | BlobError::Read { .. } => ServiceError::internal(e),
        }
    }
}

/// Keys are `/`-separated segments of `A-Z a-z 0-9 - _ . =`, no empty, `.`
/// or `..` segment: safe as file names and as S3 keys alike (and free of the
/// `#` the local store uses for its staging files).
fn check_key(key: &str) -> Result<(), BlobError> {
    let bad = |reason| Err(BlobError::BadKey { key: key.to_owned(), reason });
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return bad("longer than 512 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.=/".contains(&b)) {
        return bad("only A-Z a-z 0-9 - _ . = and / are allowed");
    }
    if key.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return bad("empty, . or .. segment");
    }
    Ok(())
}

/// The object store holding results and uploads. Cheap to clone.
#[derive(Clone)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key (`s3://bucket/PREFIX`); empty for a directory,
    /// which is the store's root itself.
    root: String,
    /// For logs: the directory or `s3://bucket/prefix`.
    describe: String,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs").field("store", &self.describe).finish()
    }
}

impl fmt::Display for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe)
    }
}

impl Blobs {
    /// Opens the store `settings` name. A local directory is created if
    /// missing; S3 credentials come from the standard `AWS_*` variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...)
    /// or the instance metadata service. Nothing is contacted here: a wrong
    /// credential shows on the first call (UNAVAILABLE).
    pub fn from_settings(settings: &StorageSettings) -> Result<Self, BlobError> {
        settings.validate().map_err(BlobError::Settings)?;
        match settings.location().map_err(BlobError::Settings)? {
            Location::Local(dir) => Self::local(FsPath::new(dir)),
            Location::S3 { bucket, prefix } => {
                // The default (10 retries over up to 3 minutes) would hold a
                // client's call that long when the store is down; fail sooner.
                let retry = RetryConfig {
                    max_retries: 3,
                    retry_timeout: Duration::from_secs(20),
                    ..Default::default()
                };
                let mut builder =
                    AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(retry);
                if let Some(endpoint) = &settings.s3_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(region) = &settings.s3_region {
                    builder = builder.with_region(region);
                }
                if settings.s3_allow_http {
                    builder = builder.with_allow_http(true);
                }
                let store = builder
                    .build()
                    .map_err(|e| BlobError::Settings(format!("storage.url {bucket:?}: {e}")))?;
                Ok(Self {
                    store: Arc::new(store),
                    root: prefix.to_owned(),
                    describe: format!("s3://{bucket}/{prefix}"),
                })
            }
        }
    }

    /// A store in directory `dir`, created if missing.
    pub fn local(dir: &FsPath) -> Result<Self, BlobError> {
        let settings_err = |e: &dyn fmt::Display| {
            BlobError::Settings(format!("storage directory {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| settings_err(&e))?;
        // Automatic cleanup removes directories left empty by deletes, so
        // finished jobs leave no empty folders behind.
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| settings_err(&e))?
            .with_automatic_cleanup(true);
        let describe = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        Ok(Self {
            store: Arc::new(store),
            root: String::new(),
            describe: describe.display().to_string(),
        })
    }

    fn path(&self, key: &str) -> Result<Path, BlobError> {
        check_key(key)?;
        let full =
            if self.root.is_empty() { key.to_owned() } else { format!("{}/{key}", self.root) };
        Path::parse(&full).map_err(|_| BlobError::BadKey {
            key: key.to_owned(),
            reason: "not a valid object path",
        })
    }

    /// Stores `bytes` under `key`, replacing any object there. Atomic:
    /// readers see the old object or the whole new one.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let path = self.path(key)?;
        self.store.put(&path, PutPayload::from_bytes(bytes)).await?;
        Ok(())
    }

    /// Stores the file at `path` under `key` and returns its size. Files over
    /// one part go up as a multipart upload ([`PART_BYTES`] parts, at most
    /// [`PARTS_IN_FLIGHT`] at once) committed at the end, so the object
    /// appears whole and memory stays bounded; a failure aborts the upload.
    pub async fn put_file(&self, key: &str, path: &FsPath) -> Result<u64, BlobError> {
        let location = self.path(key)?;
        let read_err = |source| BlobError::Read { path: path.to_owned(), source };
        let mut file = tokio::fs::File::open(path).await.map_err(read_err)?;
        let len = file.metadata().await.map_err(read_err)?.len();
        if len <= PART_BYTES as u64 {
            // One request is cheaper than a multipart upload for small files.
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(read_err)?;
            let n = buf.len() as u64;
            self.store.put(&location, PutPayload::from(buf)).await?;
            return Ok(n);
        }
        let upload = self.store.put_multipart(&location).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1024 * 1024];
        let mut total = 0u64;
        let copied: Result<(), BlobError> = async {
            loop {
                writer.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                let n = file.read(&mut buf).await.map_err(read_err)?;
                if n == 0 {
                    return Ok(());
                }
                writer.write(&buf[..n]);
                total += n as u64;
            }
        }
        .await;
        match copied {
            Ok(()) => {
                writer.finish().await?;
                Ok(total)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key, error = %abort, "aborting a multipart upload failed");
                }
                Err(e)
            }
        }
    }

    /// The whole object, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let path = self.path(key)?;
        match self.store.get(&path).await {
            Ok(got) => Ok(Some(got.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object's size in bytes, or `None` when there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The object from byte `offset` to its end, in pieces of exactly `chunk`
    /// bytes (the last may be shorter): one ranged read, re-cut as it
    /// arrives, so memory stays near one chunk. An offset equal to the size
    /// gives an empty stream; past it, [`BlobError::OffsetPastEnd`]; a
    /// missing object, [`BlobError::NotFound`]. Errors end the stream.
    pub fn read_from(
        &self,
        key: &str,
        offset: u64,
        chunk: usize,
    ) -> impl Stream<Item = Result<Bytes, BlobError>> + Send + 'static {
        let store = Arc::clone(&self.store);
        let path = self.path(key);
        let key = key.to_owned();
        let open = async move {
            if chunk == 0 {
                return Err(BlobError::ZeroChunk);
            }
            let path = path?;
            let size = match store.head(&path).await {
                Ok(meta) => meta.size,
                Err(object_store::Error::NotFound { .. }) => return Err(BlobError::NotFound(key)),
                Err(e) => return Err(e.into()),
            };
            if offset > size {
                return Err(BlobError::OffsetPastEnd { offset, size });
            }
            if offset == size {
                // Stores reject empty ranges; there is nothing to read anyway.
                return Ok(futures::stream::empty().boxed());
            }
            let options =
                GetOptions { range: Some(GetRange::Bounded(offset..size)), ..Default::default() };
            let body = store.get_opts(&path, options).await?.into_stream();
            Ok(rechunk(body, chunk))
        };
        futures::stream::once(open).try_flatten()
    }

    /// Deletes `key`; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every object under `prefix` (whole segments: `jobs/a`
    /// covers `jobs/a/x`, not `jobs/ab`); returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let prefix = self.path(prefix.trim_end_matches('/'))?;
        let locations = self.store.list(Some(&prefix)).map_ok(|meta| meta.location).boxed();
        let mut deleted = self.store.delete_stream(locations);
        let mut n = 0;
        while let Some(res) = deleted.next().await {
            match res {
                Ok(_) => n += 1,
                // Someone else deleted it between the listing and now.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }
}

/// Re-cuts `body` into `chunk`-byte pieces (the last may be shorter).
fn rechunk(
    body: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: usize,
) -> BoxStream<'static, Result<Bytes, BlobError>> {
    struct State {
        body: BoxStream<'static, object_store::Result<Bytes>>,
        buf: BytesMut,
        done: bool,
    }
    let state = State { body, buf: BytesMut::new(), done: false };
    futures::stream::unfold(state, move |mut s| async move {
        loop {
            if s.buf.len() >= chunk {
                let piece = s.buf.split_to(chunk).freeze();
                return Some((Ok(piece), s));
            }
            if s.done {
                if s.buf.is_empty() {
                    return None;
                }
                let piece = s.buf.split().freeze();
                return Some((Ok(piece), s));
            }
            match s.body.next().await {
                Some(Ok(bytes)) => s.buf.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    s.done = true;
                    s.buf.clear();
                    return Some((Err(e.into()), s));
                }
                None => s.done = true,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_held_to_a_safe_shape() {
        for ok in ["a", "jobs/0190-ab/result.mp4", "x=1/y_2.bin"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "../a", "a/./b", "a b", "a#1", "é", &"k".repeat(513)] {
            assert!(matches!(check_key(bad), Err(BlobError::BadKey { .. })), "{bad:?}");
        }
    }

    #[test]
    fn urls_are_parsed() {
        let s = |url: &str| StorageSettings { url: url.into(), ..Default::default() };
        assert_eq!(s("./osa-data").location(), Ok(Location::Local("./osa-data")));
        assert_eq!(s("file:///var/osa").location(), Ok(Location::Local("/var/osa")));
        assert_eq!(s("s3://b").location(), Ok(Location::S3 { bucket: "b", prefix: "" }));
        assert_eq!(
            s("s3://bkt/a/b/").location(),
            Ok(Location::S3 { bucket: "bkt", prefix: "a/b" })
        );
        assert!(s("gs://b").location().unwrap_err().contains("\"gs\""));
    }
}
