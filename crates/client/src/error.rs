//! What can go wrong when talking to an osa gateway.
//!
//! A gRPC status keeps its code, message and the server's `retry-after-ms`
//! hint, so a caller can tell "fix your input" (INVALID_ARGUMENT) from "wait
//! and retry" (RESOURCE_EXHAUSTED, UNAVAILABLE) without parsing text.

use std::{path::PathBuf, time::Duration};

/// Metadata key the gateway uses for how long to wait before retrying, in
/// milliseconds (set on RESOURCE_EXHAUSTED).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// An error from the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a gRPC status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message (names the field and the problem for
        /// INVALID_ARGUMENT).
        message: String,
        /// From the `retry-after-ms` metadata: how long the server asks the
        /// caller to wait before retrying.
        retry_after: Option<Duration>,
    },
    /// The server could not be reached, or the URL or TLS settings are
    /// unusable.
    #[error("{0}")]
    Connect(String),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The job ended in the FAILED state.
    #[error("job failed ({code}): {reason}")]
    JobFailed {
        /// gRPC status code name of the failure, e.g. "INVALID_ARGUMENT".
        code: String,
        /// What went wrong, for a human.
        reason: String,
    },
    /// The job (whose id this is) was cancelled.
    #[error("job {0} was cancelled")]
    JobCancelled(String),
    /// The server broke the protocol (e.g. a download chunk at the wrong
    /// offset, a stream that ended early).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The caller passed something the client rejects before sending it
    /// (e.g. an odd number of PCM bytes, an API key with non-ASCII bytes).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The live session is closed: nothing more can be sent. Its reason
    /// comes from the [`LiveReceiver`](crate::LiveReceiver).
    #[error("the live session is closed")]
    SessionClosed,
}

impl Error {
    /// The gRPC code, for [`Error::Status`].
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server's retry hint, for [`Error::Status`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let retry_after = status
            .metadata()
            .get(RETRY_AFTER_MS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_millis);
        let mut message = status.message().to_owned();
        if message.is_empty() {
            // Transport failures often carry their cause only in the source
            // chain; without it the user sees a bare code.
            if let Some(source) = std::error::Error::source(&status) {
                message = error_chain(source);
            }
        }
        Error::Status { code: status.code(), message, retry_after }
    }
}

/// `err` and its sources, joined with ": ".
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The canonical upper-case name of a gRPC code ("INVALID_ARGUMENT"), as
/// the API's `failure_code` fields spell it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_code_message_and_retry_hint() {
        let mut status = tonic::Status::resource_exhausted("too many live sessions");
        status.metadata_mut().insert(RETRY_AFTER_MS, "1500".parse().unwrap());
        let err = Error::from(status);
        assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted));
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert_eq!(err.to_string(), "RESOURCE_EXHAUSTED: too many live sessions");
    }

    #[test]
    fn malformed_retry_hint_is_ignored() {
        let mut status = tonic::Status::unavailable("redis down");
        status.metadata_mut().insert(RETRY_AFTER_MS, "soon".parse().unwrap());
        assert_eq!(Error::from(status).retry_after(), None);
    }
}
