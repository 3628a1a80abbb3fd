//! The hard stop at the end of a drain.
//!
//! tonic's graceful shutdown stops accepting and waits for in-flight calls,
//! but connection tasks outlive the server future: dropping it does not cut
//! a stream that would run for an hour. [`HardStopLayer`] makes the drain
//! deadline real: once its token is cancelled, a call still computing gets
//! UNAVAILABLE, and a response stream still open is closed with UNAVAILABLE
//! trailers, so clients learn to retry elsewhere and the handlers' producer
//! tasks see their receivers gone.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

const MESSAGE: &str = "server is shutting down; retry on another replica";

/// Tower layer cutting calls when `token` is cancelled.
#[derive(Debug, Clone)]
pub struct HardStopLayer {
    token: CancellationToken,
}

impl HardStopLayer {
    pub fn new(token: CancellationToken) -> Self {
        Self { token }
    }
}

impl<S> tower::Layer<S> for HardStopLayer {
    type Service = HardStop<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HardStop { inner, token: self.token.clone() }
    }
}

/// See [`HardStopLayer`].
#[derive(Debug, Clone)]
pub struct HardStop<S> {
    inner: S,
    token: CancellationToken,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for HardStop<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Body<Data = Bytes> + Default + Send + 'static,
{
    type Response = http::Response<StopBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let token = self.token.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = tokio::select! {
                biased;
                res = fut => res?,
                () = token.cancelled() => {
                    return Ok(tonic::Status::unavailable(MESSAGE)
                        .into_http::<RB>()
                        .map(|b| StopBody::new(b, token)));
                }
            };
            Ok(resp.map(|b| StopBody::new(b, token)))
        })
    }
}

/// A response body that ends with UNAVAILABLE trailers when the token is
/// cancelled before the inner body finished.
pub struct StopBody<B> {
    inner: Pin<Box<B>>,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    Cut,
    Done,
}

impl<B> std::fmt::Debug for StopBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopBody").field("state", &self.state).finish()
    }
}

impl<B> StopBody<B> {
    fn new(inner: B, token: CancellationToken) -> Self {
        Self {
            inner: Box::pin(inner),
            stop: Box::pin(token.cancelled_owned()),
            state: State::Streaming,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for StopBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.state {
            State::Done => return Poll::Ready(None),
            State::Cut => {
                self.state = State::Done;
                return Poll::Ready(None);
            }
            State::Streaming => {}
        }
        if self.stop.as_mut().poll(cx).is_ready() {
            self.state = State::Cut;
            let mut trailers = http::HeaderMap::new();
            trailers
                .insert("grpc-status", http::HeaderValue::from(tonic::Code::Unavailable as i32));
            trailers
                .insert("grpc-message", http::HeaderValue::from_static("server is shutting down"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = ready!(self.inner.as_mut().poll_frame(cx));
        if frame.is_none() {
            self.state = State::Done;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.state == State::Done || (self.state == State::Streaming && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
