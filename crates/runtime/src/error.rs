//! Service errors and their gRPC status codes, mapped in exactly one place
//! ([`From<ServiceError> for tonic::Status`]).

use std::time::Duration;

/// Everything a service can answer besides success. Messages are written for
/// the client: they say which input was wrong and how.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Bad input: `field` names the request field, `reason` the problem.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    AlreadyExists(String),
    /// Over a quota or over capacity. `retry_after` goes into the
    /// `retry-after-ms` metadata.
    #[error("{what}")]
    ResourceExhausted { what: String, retry_after: Option<Duration> },
    /// The request is valid but the target is in the wrong state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Lost a race (e.g. a compare-and-set on the rolling context).
    #[error("{0}")]
    Aborted(String),
    /// A dependency (Redis, another stage) is down; retrying may help.
    #[error("{dependency} unavailable: {detail}")]
    Unavailable { dependency: &'static str, detail: String },
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// The server is starting or draining.
    #[error("{0}")]
    NotServing(String),
    /// A bug or an unexpected failure; logged in full.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Shorthand for [`ServiceError::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.to_string() }
    }

    /// Shorthand for [`ServiceError::Internal`].
    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Aborted(_) => Code::Aborted,
            Self::Unavailable { .. } | Self::NotServing(_) => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::Cancelled(_) => Code::Cancelled,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// Metadata key carrying how long to wait before retrying, in milliseconds.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        let code = e.code();
        if code == tonic::Code::Internal {
            tracing::error!(error = %e, "internal error");
        }
        let mut status = tonic::Status::new(code, e.to_string());
        if let ServiceError::ResourceExhausted { retry_after: Some(d), .. } = &e
            && let Ok(v) = d.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_MS, v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_maps_to_its_code_with_a_precise_message() {
        let s: tonic::Status = ServiceError::invalid("audio", "not a WAV file").into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(s.message(), "invalid audio: not a WAV file");

        let s: tonic::Status = ServiceError::NotFound { kind: "job", id: "abc".into() }.into();
        assert_eq!((s.code(), s.message()), (tonic::Code::NotFound, "job \"abc\" not found"));

        let s: tonic::Status =
            ServiceError::Unavailable { dependency: "redis", detail: "connection refused".into() }
                .into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("redis"));
    }

    #[test]
    fn resource_exhausted_carries_retry_metadata() {
        let s: tonic::Status = ServiceError::ResourceExhausted {
            what: "queue full".into(),
            retry_after: Some(Duration::from_millis(250)),
        }
        .into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
    }
}
