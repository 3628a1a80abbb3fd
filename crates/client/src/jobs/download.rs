//! Downloading a finished job's MP4: streamed to `<out>.partial`, resumed at
//! the byte it stopped when the stream breaks, renamed into place only when
//! complete, and removed on any failure (or when the caller gives up).

use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};
use tonic::Streaming;

use crate::{Client, Error, retry::resumable, v1};

impl Client {
    /// Streams the finished MP4 of `job_id` into `out` and returns its size
    /// in bytes. FAILED_PRECONDITION until the job succeeded.
    ///
    /// Bytes go to `<out>.partial`, which is renamed to `out` only once the
    /// last chunk arrived and its size matches the server's; a broken stream
    /// is resumed with `FetchResult.offset` within the retry policy's bounds.
    /// On failure (or if the future is dropped) the partial file is removed
    /// and `out` is untouched.
    pub async fn download_result(&self, job_id: &str, out: &Path) -> Result<u64, Error> {
        let partial = partial_path(out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(dir, e))?;
        }
        let guard = RemoveOnDrop(Some(partial.clone()));
        let file = tokio::fs::File::create(&partial).await.map_err(|e| Error::io(&partial, e))?;
        let mut sink = Sink { file: BufWriter::new(file), path: &partial, offset: 0, total: None };

        let mut failures = 0u32;
        let mut resumes = 0u32;
        loop {
            let offset_before = sink.offset;
            let broken = match self.open_fetch(job_id, sink.offset).await {
                Ok(stream) => match sink.copy(stream).await? {
                    None => break,
                    Some(broken) => broken,
                },
                Err(e) => e,
            };
            if sink.offset > offset_before {
                failures = 0;
            }
            failures += 1;
            resumes += 1;
            let policy = &self.retry;
            let may_resume = matches!(broken, Error::Protocol(_)) || resumable(&broken);
            if !may_resume || failures >= policy.max_attempts || resumes > policy.max_resumes {
                return Err(broken);
            }
            let wait = policy.backoff(failures, broken.retry_after());
            tracing::warn!(job_id, offset = sink.offset, error = %broken, "result download broken; resuming");
            tokio::time::sleep(wait).await;
        }

        let size = sink.offset;
        sink.file.flush().await.map_err(|e| Error::io(&partial, e))?;
        // Durable before the rename makes it visible under its real name.
        sink.file.get_mut().sync_all().await.map_err(|e| Error::io(&partial, e))?;
        drop(sink);
        tokio::fs::rename(&partial, out).await.map_err(|e| Error::io(out, e))?;
        guard.disarm();
        tracing::debug!(job_id, bytes = size, out = %out.display(), "result downloaded");
        Ok(size)
    }

    /// Opens a FetchResult stream at `offset` (one attempt: the caller's
    /// loop does the retrying, so the bounds hold across opens and breaks).
    async fn open_fetch(
        &self,
        job_id: &str,
        offset: u64,
    ) -> Result<Streaming<v1::ByteChunk>, Error> {
        let request = v1::FetchResultRequest { job_id: job_id.to_owned(), offset };
        Ok(self.render.clone().fetch_result(request).await?.into_inner())
    }
}

/// `<out>.partial`, beside `out`.
fn partial_path(out: &Path) -> Result<PathBuf, Error> {
    let Some(name) = out.file_name() else {
        return Err(Error::InvalidInput(format!("{} is not a file path", out.display())));
    };
    let mut name = name.to_os_string();
    name.push(".partial");
    Ok(out.with_file_name(name))
}

/// The partial file being written and how far it got.
struct Sink<'a> {
    file: BufWriter<tokio::fs::File>,
    path: &'a Path,
    /// Bytes written so far = the offset the next chunk must have.
    offset: u64,
    /// The whole size, once the server said it.
    total: Option<u64>,
}

impl Sink<'_> {
    /// Appends the stream's chunks. `Ok(None)` when the last chunk arrived
    /// and the size adds up; `Ok(Some(e))` when the stream broke and may be
    /// resumed; `Err` for what resuming cannot fix (a local write error, a
    /// server that sends bytes at the wrong place).
    async fn copy(&mut self, mut stream: Streaming<v1::ByteChunk>) -> Result<Option<Error>, Error> {
        loop {
            let chunk = match stream.message().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => {
                    return Ok(Some(Error::Protocol(format!(
                        "the result stream ended at byte {} without its last chunk",
                        self.offset
                    ))));
                }
                Err(status) => return Ok(Some(Error::from(status))),
            };
            if chunk.offset != self.offset {
                return Err(Error::Protocol(format!(
                    "result chunk at offset {}, expected {}",
                    chunk.offset, self.offset
                )));
            }
            if chunk.total_size != 0 {
                match self.total {
                    Some(t) if t != chunk.total_size => {
                        return Err(Error::Protocol(format!(
                            "the result's size changed from {t} to {} bytes",
                            chunk.total_size
                        )));
                    }
                    _ => self.total = Some(chunk.total_size),
                }
            }
            let end = self.offset + chunk.data.len() as u64;
            if let Some(t) = self.total
                && end > t
            {
                return Err(Error::Protocol(format!("the result runs past its size of {t} bytes")));
            }
            self.file.write_all(&chunk.data).await.map_err(|e| Error::io(self.path, e))?;
            self.offset = end;
            if chunk.last {
                if let Some(t) = self.total
                    && t != end
                {
                    return Err(Error::Protocol(format!("the result ended at byte {end} of {t}")));
                }
                return Ok(None);
            }
        }
    }
}

/// Removes the partial file unless disarmed: on an error, and also when the
/// download's future is dropped halfway.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove partial download");
        }
    }
}
