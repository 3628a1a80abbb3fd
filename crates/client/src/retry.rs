//! Bounded retries of calls that are safe to repeat.

use std::future::Future;

use crate::{Client, Error};

/// Whether a failed unary call may be sent again: the gateway answers
/// UNAVAILABLE when a stage or Redis is down, RESOURCE_EXHAUSTED when over a
/// quota (with a `retry-after-ms` hint); both reject the call as a whole.
pub(crate) fn retryable(err: &Error) -> bool {
    matches!(err.code(), Some(tonic::Code::Unavailable | tonic::Code::ResourceExhausted))
}

/// Whether a stream that broke after it opened may be resumed. Besides the
/// retryable codes, a connection cut mid-stream reaches tonic as an HTTP/2 or
/// I/O error without a gRPC status, which it reports as UNKNOWN; resuming a
/// read (bounded) is harmless even when the cause was something else.
pub(crate) fn resumable(err: &Error) -> bool {
    retryable(err) || err.code() == Some(tonic::Code::Unknown)
}

impl Client {
    /// Runs `call` until it succeeds, fails with a non-retryable error, or
    /// the policy's attempts are used up. Only for calls that are safe to
    /// repeat.
    pub(crate) async fn retrying<T, F, Fut>(
        &self,
        what: &'static str,
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 1;
        loop {
            let err = match call().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => Error::from(status),
            };
            if !retryable(&err) || attempt >= self.retry.max_attempts {
                return Err(err);
            }
            let wait = self.retry.backoff(attempt, err.retry_after());
            tracing::debug!(call = what, attempt, wait_ms = wait.as_millis() as u64, error = %err, "retrying");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}
