//! Live audio: PCM16 little-endian mono 16 kHz chunks of any size (a client
//! may send 20 ms or 2 s at a time) in, `f32` samples out in order.
//!
//! Contract (the live-session API states it): every chunk holds whole
//! samples, i.e. an even number of bytes; a sample split across two chunks is
//! an error, not something to reassemble. Memory is bounded: samples wait in
//! the assembler until the consumer takes them, and a chunk that would push
//! the backlog past `max_buffered_samples` is refused whole (nothing of it is
//! kept), so the caller can answer RESOURCE_EXHAUSTED and the stream stays
//! consistent.

use std::collections::VecDeque;
use std::time::Duration;

use crate::{AudioError, TARGET_SAMPLE_RATE};

/// Bounds for one live stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcmAssemblerConfig {
    /// Most samples that may wait for the consumer. Default: 10 s of audio.
    pub max_buffered_samples: usize,
    /// Longest stream accepted in total, `None` for no limit. Default: none.
    pub max_total: Option<Duration>,
}

impl Default for PcmAssemblerConfig {
    fn default() -> Self {
        Self { max_buffered_samples: 10 * TARGET_SAMPLE_RATE as usize, max_total: None }
    }
}

/// Turns a stream of PCM16LE chunks into ordered `f32` samples in [-1, 1).
#[derive(Debug)]
pub struct PcmAssembler {
    config: PcmAssemblerConfig,
    buffered: VecDeque<f32>,
    /// Chunks offered so far, refused ones included: the next chunk's index.
    chunks: u64,
    /// Samples accepted so far.
    received: u64,
    /// Samples handed to the consumer so far.
    consumed: u64,
}

impl PcmAssembler {
    /// An empty assembler with the given bounds.
    pub fn new(config: PcmAssemblerConfig) -> Self {
        Self { config, buffered: VecDeque::new(), chunks: 0, received: 0, consumed: 0 }
    }

    /// Accepts one chunk; returns the number of samples it held. On error the
    /// chunk is dropped whole and the assembler is unchanged, except that the
    /// chunk still counts for the indices in later error messages.
    pub fn push(&mut self, chunk: &[u8]) -> Result<usize, AudioError> {
        let chunk_index = self.chunks;
        self.chunks += 1;
        if !chunk.len().is_multiple_of(2) {
            return Err(AudioError::PartialSample { chunk_index, len: chunk.len() });
        }
        let incoming = chunk.len() / 2;
        let limit = self.config.max_buffered_samples;
        if self.buffered.len().saturating_add(incoming) > limit {
            return Err(AudioError::BufferFull {
                chunk_index,
                buffered: self.buffered.len(),
                incoming,
                limit,
            });
        }
        if let Some(max) = self.config.max_total {
            let after = self.received + incoming as u64;
            if samples_to_duration(after) > max {
                return Err(AudioError::StreamTooLong { chunk_index, limit: max });
            }
        }
        self.buffered.extend(
            chunk.chunks_exact(2).map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
        );
        self.received += incoming as u64;
        Ok(incoming)
    }

    /// Moves up to `max` buffered samples to the end of `out`; returns how many.
    pub fn drain_into(&mut self, out: &mut Vec<f32>, max: usize) -> usize {
        let n = max.min(self.buffered.len());
        out.extend(self.buffered.drain(..n));
        self.consumed += n as u64;
        n
    }

    /// Takes exactly `n` samples if that many are buffered (for consumers that
    /// work in fixed windows), else leaves the buffer alone.
    pub fn take_exact(&mut self, n: usize) -> Option<Vec<f32>> {
        if self.buffered.len() < n {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        self.drain_into(&mut out, n);
        Some(out)
    }

    /// Takes everything buffered.
    pub fn take_all(&mut self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.buffered.len());
        self.drain_into(&mut out, usize::MAX);
        out
    }

    /// Samples waiting for the consumer.
    pub fn buffered(&self) -> usize {
        self.buffered.len()
    }

    /// Samples accepted since the start of the stream.
    pub fn total_samples(&self) -> u64 {
        self.received
    }

    /// Audio accepted since the start of the stream.
    pub fn total_duration(&self) -> Duration {
        samples_to_duration(self.received)
    }

    /// Samples handed to the consumer so far (the stream position of the next
    /// sample [`PcmAssembler::drain_into`] returns).
    pub fn consumed_samples(&self) -> u64 {
        self.consumed
    }

    /// Chunks offered so far, refused ones included.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }
}

fn samples_to_duration(samples: u64) -> Duration {
    let rate = u64::from(TARGET_SAMPLE_RATE);
    Duration::from_secs(samples / rate)
        + Duration::from_nanos((samples % rate) * 1_000_000_000 / rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcm(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    #[test]
    fn converts_and_counts() {
        let mut a = PcmAssembler::new(PcmAssemblerConfig::default());
        assert_eq!(a.push(&pcm(&[0, 16384, -32768, 32767])).unwrap(), 4);
        assert_eq!(a.push(&[]).unwrap(), 0);
        assert_eq!(a.total_samples(), 4);
        assert_eq!(a.total_duration(), Duration::from_micros(250));
        assert_eq!(a.take_all(), vec![0.0, 0.5, -1.0, 32767.0 / 32768.0]);
        assert_eq!(a.consumed_samples(), 4);
        assert_eq!(a.chunks(), 2);
    }

    #[test]
    fn odd_chunk_names_index_and_length() {
        let mut a = PcmAssembler::new(PcmAssemblerConfig::default());
        a.push(&pcm(&[1, 2])).unwrap();
        let err = a.push(&[1, 2, 3]).unwrap_err();
        assert_eq!(err, AudioError::PartialSample { chunk_index: 1, len: 3 });
        assert!(err.to_string().contains("pcm chunk 1 has 3 bytes"), "{err}");
        assert_eq!(a.buffered(), 2);
    }

    #[test]
    fn backlog_is_bounded_and_recovers() {
        let cfg = PcmAssemblerConfig { max_buffered_samples: 4, max_total: None };
        let mut a = PcmAssembler::new(cfg);
        a.push(&pcm(&[1, 2, 3])).unwrap();
        let err = a.push(&pcm(&[4, 5])).unwrap_err();
        assert!(matches!(err, AudioError::BufferFull { chunk_index: 1, buffered: 3, .. }));
        assert!(!err.is_invalid_input());
        assert_eq!(a.take_exact(2).unwrap().len(), 2);
        assert!(a.take_exact(2).is_none());
        a.push(&pcm(&[4, 5])).unwrap();
        assert_eq!(a.buffered(), 3);
        assert_eq!(a.total_samples(), 5);
    }

    #[test]
    fn total_length_limit() {
        let cfg = PcmAssemblerConfig {
            max_buffered_samples: 1 << 20,
            max_total: Some(Duration::from_millis(1)),
        };
        let mut a = PcmAssembler::new(cfg);
        a.push(&[0; 32]).unwrap();
        let err = a.push(&[0; 2]).unwrap_err();
        assert!(matches!(err, AudioError::StreamTooLong { chunk_index: 1, .. }));
    }
}
