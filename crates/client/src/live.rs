//! Live sessions: PCM audio in through a [`LiveSender`], clips out through a
//! [`LiveReceiver`], while the audio is still arriving.
//!
//! The two halves are independent so audio can be fed from one task while
//! another plays clips. Requests pass through a bounded channel: when the
//! network or the server falls behind, the sender's calls wait instead of
//! buffering audio without limit.

use bytes::Bytes;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{
    Client, Error,
    v1::{self, live_request::Request, live_response::Response},
};

/// Largest audio payload put in one request: 512 KiB is 16 s of 16 kHz
/// PCM, far above any sensible chunk, yet far below any message limit, so a
/// caller handing over a whole file cannot exceed one.
const MAX_AUDIO_CHUNK_BYTES: usize = 512 * 1024;

/// One event of a live session, in the order the server sends them.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The session is open (its id, frame size, clip length, seed).
    Started(v1::LiveStarted),
    /// One generated clip (an fMP4 segment or raw frames, with timing).
    Clip(v1::LiveClip),
    /// The server acknowledged an interrupt.
    Interrupted(v1::LiveInterrupted),
    /// The session ended normally; nothing follows.
    Ended(v1::LiveEnded),
}

/// Sends audio and control messages into a live session. Clones feed the
/// same session (e.g. one task for audio, another for interrupts).
#[derive(Clone)]
pub struct LiveSender {
    tx: mpsc::Sender<v1::LiveRequest>,
}

impl std::fmt::Debug for LiveSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSender").field("closed", &self.tx.is_closed()).finish()
    }
}

impl LiveSender {
    /// Sends mono 16 kHz samples.
    pub async fn send_pcm16(&self, samples: &[i16]) -> Result<(), Error> {
        for part in samples.chunks(MAX_AUDIO_CHUNK_BYTES / 2) {
            let pcm16le = part.iter().flat_map(|s| s.to_le_bytes()).collect();
            self.send(Request::Audio(v1::LiveAudio { pcm16le })).await?;
        }
        Ok(())
    }

    /// Sends mono 16 kHz signed 16-bit little-endian PCM (an even number of
    /// bytes).
    pub async fn send_pcm16le(&self, pcm: Bytes) -> Result<(), Error> {
        if !pcm.len().is_multiple_of(2) {
            return Err(Error::InvalidInput(format!(
                "PCM16 audio needs an even number of bytes, got {}",
                pcm.len()
            )));
        }
        if pcm.len() <= MAX_AUDIO_CHUNK_BYTES {
            // One message: hand the buffer over without copying when it is
            // not shared.
            return self.send(Request::Audio(v1::LiveAudio { pcm16le: pcm.into() })).await;
        }
        for part in pcm.chunks(MAX_AUDIO_CHUNK_BYTES) {
            self.send(Request::Audio(v1::LiveAudio { pcm16le: part.to_vec() })).await?;
        }
        Ok(())
    }

    /// Drops the audio and clips not generated yet; the session stays open
    /// and the next audio starts a new utterance. The receiver sees
    /// [`LiveEvent::Interrupted`].
    pub async fn interrupt(&self) -> Result<(), Error> {
        self.send(Request::Interrupt(v1::LiveInterrupt {})).await
    }

    /// No more audio: the server flushes the last clip and ends the session
    /// ([`LiveEvent::Ended`]).
    pub async fn end(self) -> Result<(), Error> {
        self.send(Request::End(v1::LiveEnd {})).await
    }

    async fn send(&self, request: Request) -> Result<(), Error> {
        self.tx
            .send(v1::LiveRequest { request: Some(request) })
            .await
            .map_err(|_| Error::SessionClosed)
    }
}

/// Receives a live session's events.
pub struct LiveReceiver {
    inner: Streaming<v1::LiveResponse>,
    finished: bool,
}

impl std::fmt::Debug for LiveReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveReceiver").field("finished", &self.finished).finish()
    }
}

impl LiveReceiver {
    /// The next event; `None` after [`LiveEvent::Ended`] or an error. A
    /// session that fails (idle timeout, a stage down, quota) yields its
    /// status as [`Error::Status`] once.
    pub async fn next(&mut self) -> Option<Result<LiveEvent, Error>> {
        if self.finished {
            return None;
        }
        let response = match self.inner.message().await {
            Ok(Some(response)) => response,
            Ok(None) => {
                self.finished = true;
                return Some(Err(Error::Protocol(
                    "the live session closed without an `ended` event".into(),
                )));
            }
            Err(status) => {
                self.finished = true;
                return Some(Err(status.into()));
            }
        };
        Some(match response.response {
            Some(Response::Started(s)) => Ok(LiveEvent::Started(s)),
            Some(Response::Clip(c)) => Ok(LiveEvent::Clip(c)),
            Some(Response::Interrupted(i)) => Ok(LiveEvent::Interrupted(i)),
            Some(Response::Ended(e)) => {
                self.finished = true;
                Ok(LiveEvent::Ended(e))
            }
            None => {
                self.finished = true;
                Err(Error::Protocol("a live response without an event".into()))
            }
        })
    }

    /// The events as a [`Stream`].
    pub fn into_stream(self) -> impl Stream<Item = Result<LiveEvent, Error>> + Send + Unpin {
        Box::pin(futures::stream::unfold(self, |mut rx| async move {
            rx.next().await.map(|event| (event, rx))
        }))
    }
}

impl Client {
    /// Opens a live session with `start` and returns its two halves. The
    /// first event is [`LiveEvent::Started`]; an invalid start (unknown
    /// avatar, bad fps) fails here or as the receiver's first item,
    /// depending on when the server checks it. Not retried: a session is
    /// stateful.
    pub async fn live(&self, start: v1::LiveStart) -> Result<(LiveSender, LiveReceiver), Error> {
        let (tx, rx) = mpsc::channel(self.live_buffer);
        // The start goes first and cannot fail: the channel is empty and its
        // receiver alive.
        tx.send(v1::LiveRequest { request: Some(Request::Start(start)) })
            .await
            .map_err(|_| Error::SessionClosed)?;
        let response = self.live.clone().live(ReceiverStream::new(rx)).await?;
        Ok((LiveSender { tx }, LiveReceiver { inner: response.into_inner(), finished: false }))
    }
}
