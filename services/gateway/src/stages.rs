//! Clients of the three stages (audio-encoder, generator, decoder) and the
//! policy for their failures.
//!
//! Each stage is reached through one balanced channel over all its replicas
//! ([`osa_runtime::balance`]): every call picks the less loaded of two
//! replicas by streams in flight. A call that fails because a replica died
//! is retried by the caller on a fresh call, which lands on a live replica;
//! the generator's rolling context lives in Redis, so a stream resumes on
//! any replica from its last committed clip.

use std::time::Duration;

use osa_proto::v1::{
    audio_encoder_service_client::AudioEncoderServiceClient,
    decoder_service_client::DecoderServiceClient, generator_service_client::GeneratorServiceClient,
};
use osa_runtime::{
    balance::{BalancedChannel, StageEndpoints},
    client::{ClientError, ClientOptions, TraceContextInterceptor},
};
use tonic::{Code, Status, service::interceptor::InterceptedService};

/// The transport every stage client uses.
pub type Transport = InterceptedService<BalancedChannel, TraceContextInterceptor>;

/// Clients of the three stages. Cheap to clone.
#[derive(Clone)]
pub struct Stages {
    pub audio: AudioEncoderServiceClient<Transport>,
    pub generator: GeneratorServiceClient<Transport>,
    pub decoder: DecoderServiceClient<Transport>,
    audio_channel: BalancedChannel,
    generator_channel: BalancedChannel,
    decoder_channel: BalancedChannel,
}

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stages").finish_non_exhaustive()
    }
}

/// Where the stages are.
#[derive(Debug, Clone)]
pub struct StageAddresses {
    pub audio_encoder: StageEndpoints,
    pub generator: StageEndpoints,
    pub decoder: StageEndpoints,
}

impl Stages {
    /// Channels to every stage; lazy: a stage that is down makes calls fail
    /// with UNAVAILABLE, not this.
    pub fn new(
        addrs: &StageAddresses,
        opts: &ClientOptions,
        max_message_bytes: usize,
    ) -> Result<Self, ClientError> {
        let audio_channel =
            osa_runtime::balance::balanced("audio-encoder", &addrs.audio_encoder, opts)?;
        let generator_channel =
            osa_runtime::balance::balanced("generator", &addrs.generator, opts)?;
        let decoder_channel = osa_runtime::balance::balanced("decoder", &addrs.decoder, opts)?;
        let t = |c: &BalancedChannel| InterceptedService::new(c.clone(), TraceContextInterceptor);
        Ok(Self {
            audio: AudioEncoderServiceClient::new(t(&audio_channel))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            generator: GeneratorServiceClient::new(t(&generator_channel))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            decoder: DecoderServiceClient::new(t(&decoder_channel))
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            audio_channel,
            generator_channel,
            decoder_channel,
        })
    }

    /// Streams in flight per stage and replica, for metrics.
    pub fn in_flight(&self) -> Vec<(&'static str, String, usize)> {
        let mut out = Vec::new();
        for (stage, ch) in [
            ("audio-encoder", &self.audio_channel),
            ("generator", &self.generator_channel),
            ("decoder", &self.decoder_channel),
        ] {
            out.extend(ch.in_flight().into_iter().map(|(addr, n)| (stage, addr, n)));
        }
        out
    }
}

/// Whether a failed stage call may succeed when repeated on a fresh call
/// (another replica, or the same one after a restart): transport failures,
/// overload and lost races. Bad input and model failures are final.
pub fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::DeadlineExceeded => true,
        // A replica cut by its drain deadline or losing its connection
        // mid-stream reports an h2 or transport error as INTERNAL.
        Code::Internal => {
            let m = status.message();
            m.contains("h2 protocol error") || m.contains("transport error")
        }
        _ => false,
    }
}

/// How long to wait before retry `attempt` (1-based): the server's
/// `retry-after-ms` when it sent one, else exponential from 100 ms, capped.
pub fn backoff(attempt: u32, status: &Status) -> Duration {
    if let Some(ms) = status
        .metadata()
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        return Duration::from_millis(ms.min(10_000));
    }
    // Capped before the jitter, so a wait never exceeds 5 s + a quarter.
    let base = (100u64 << attempt.saturating_sub(1).min(6)).min(5_000);
    Duration::from_millis(base + fastrand::u64(0..=base / 4))
}

/// The status that ended a stage stream whose request side closed under
/// the caller (the stage failed): read on to its trailers.
pub async fn ending_status<T>(out: &mut tonic::Streaming<T>, stage: &str) -> Status {
    loop {
        match out.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Status::unavailable(format!("{stage} closed the stream")),
            Err(s) => return s,
        }
    }
}

/// True when `status` says the generator no longer holds `avatar` (evicted
/// from its store): prepare it again and retry.
pub fn avatar_missing(status: &Status) -> bool {
    status.code() == Code::NotFound && status.message().starts_with("avatar ")
}

/// True when `status` says the generator has no stored context for a
/// stream (never created, finished or expired).
pub fn stream_missing(status: &Status) -> bool {
    status.code() == Code::NotFound && status.message().starts_with("stream ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_are_retried_and_bad_input_is_not() {
        assert!(retryable(&Status::unavailable("connection refused")));
        assert!(retryable(&Status::unknown("error reading a body from connection")));
        assert!(retryable(&Status::internal("h2 protocol error: stream reset")));
        assert!(!retryable(&Status::internal("model failed: NaN")));
        assert!(!retryable(&Status::invalid_argument("clip.features")));
        assert!(!retryable(&Status::not_found("avatar \"a\" not found")));
    }

    #[test]
    fn backoff_follows_retry_after_metadata() {
        let mut s = Status::resource_exhausted("busy");
        s.metadata_mut().insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(backoff(1, &s), Duration::from_millis(250));
        let plain = Status::unavailable("down");
        assert!(backoff(1, &plain) >= Duration::from_millis(100));
        assert!(backoff(20, &plain) <= Duration::from_millis(5_000 + 1_250));
        assert!(avatar_missing(&Status::not_found("avatar \"t.x\" not found")));
        assert!(stream_missing(&Status::not_found("stream \"j\" not found")));
    }
}
