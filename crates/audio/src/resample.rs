//! Mono resampling to 16 kHz with rubato's synchronous FFT resampler.
//!
//! Why this resampler: the ratio between two fixed rates is exact, so a
//! synchronous resampler is the right tool. rubato's `Fft` works on blocks of
//! `in/gcd` -> `out/gcd` samples, multiplies the spectrum by an
//! anti-aliasing low-pass (Blackman-Harris-windowed sinc, cutoff just below
//! the lower Nyquist) and has a fixed, integer latency in output frames.
//! Quality is that of a long sinc filter; cost is a few FFTs per block.
//!
//! Latency compensation: `Resampler::process_all` drops the resampler's
//! `output_delay()` frames from the start and pumps silence at the end until
//! exactly `ceil(len * 16000 / rate)` frames are out, so sample `i` of the
//! output is at time `i / 16000` s of the input: no shift (the tests check
//! this with a click at a known time).

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler, WindowFunction};

use crate::{AudioError, TARGET_SAMPLE_RATE};

/// Input block size handed to the FFT resampler (rubato rounds it to a
/// multiple of `rate / gcd(rate, 16000)`).
const CHUNK: usize = 1024;

/// Resamples mono `samples` at `rate` Hz to 16 kHz, time-aligned (see the
/// module docs). A 16 kHz input is returned unchanged.
pub fn resample_to_16k(samples: Vec<f32>, rate: u32) -> Result<Vec<f32>, AudioError> {
    resample_mono(samples, rate, TARGET_SAMPLE_RATE)
}

/// Resamples mono `samples` from `from` Hz to `to` Hz, time-aligned.
pub fn resample_mono(samples: Vec<f32>, from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to || samples.is_empty() {
        return Ok(samples);
    }
    let mut stream = StreamResampler::new(from, to)?;
    stream.push(&samples)?;
    stream.finish()
}

/// Incremental form of [`resample_mono`]: feed input as it is decoded, so a
/// whole file never exists at its source rate (a 10-minute 384 kHz file
/// would be 900 MB of `f32`; at 16 kHz it is 38 MB). The output is the same
/// as resampling the whole input at once: same blocks, same latency trim,
/// same length `ceil(input * to / from)`.
pub struct StreamResampler {
    /// `None` when no rate change is needed.
    fft: Option<Box<Fft<f32>>>,
    from: u32,
    to: u32,
    /// Input not yet processed (less than one block after each `push`).
    pending: Vec<f32>,
    /// One block of output.
    scratch: Vec<f32>,
    out: Vec<f32>,
    /// Input frames pushed so far.
    fed: u64,
    /// Leading output frames still to drop (the resampler's latency).
    to_trim: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("fed", &self.fed)
            .field("out", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl StreamResampler {
    /// A resampler from `from` Hz to `to` Hz, mono.
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        let mut this = Self {
            fft: None,
            from,
            to,
            pending: Vec::new(),
            scratch: Vec::new(),
            out: Vec::new(),
            fed: 0,
            to_trim: 0,
        };
        if from != to {
            let (from_u, to_u) = (from as usize, to as usize);
            let min_in = from_u / gcd(from_u, to_u);
            // An even number of minimal blocks per FFT keeps the filter's
            // centre on an output sample: with an odd count the latency is
            // fractional (up to 0.7 of a 16 kHz sample seen) and cannot be
            // trimmed exactly.
            let blocks = CHUNK.div_ceil(min_in).div_ceil(2) * 2;
            let fft = Fft::<f32>::new_custom(
                from_u,
                to_u,
                blocks * min_in,
                1,
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )
            .map_err(|e| this.internal(&e))?;
            this.to_trim = fft.output_delay();
            this.scratch = vec![0.0; fft.output_frames_max()];
            this.pending.reserve(fft.input_frames_next());
            this.fft = Some(Box::new(fft));
        }
        Ok(this)
    }

    /// Appends input samples; processes every complete block.
    pub fn push(&mut self, samples: &[f32]) -> Result<(), AudioError> {
        self.fed += samples.len() as u64;
        let Some(block) = self.fft.as_ref().map(|f| f.input_frames_next()) else {
            self.out.extend_from_slice(samples);
            return Ok(());
        };
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (block - self.pending.len()).min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                self.process_block(None)?;
                self.pending.clear();
            }
        }
        Ok(())
    }

    /// Output produced so far (latency already trimmed).
    pub fn output_len(&self) -> usize {
        self.out.len()
    }

    /// Flushes the last partial block and the latency; returns exactly
    /// `ceil(input * to / from)` samples.
    pub fn finish(mut self) -> Result<Vec<f32>, AudioError> {
        let Some(block) = self.fft.as_ref().map(|f| f.input_frames_next()) else {
            return Ok(self.out);
        };
        let want = usize::try_from((self.fed * u64::from(self.to)).div_ceil(u64::from(self.from)))
            .unwrap_or(usize::MAX);
        if !self.pending.is_empty() {
            let valid = self.pending.len();
            self.pending.resize(block, 0.0);
            self.process_block(Some(valid))?;
        }
        self.pending.clear();
        self.pending.resize(block, 0.0);
        while self.out.len() < want {
            let before = self.out.len() + self.to_trim;
            self.process_block(Some(0))?;
            if self.out.len() + self.to_trim == before {
                return Err(AudioError::Internal("resampler produced no output".into()));
            }
        }
        self.out.truncate(want);
        Ok(self.out)
    }

    fn process_block(&mut self, partial: Option<usize>) -> Result<(), AudioError> {
        let fft = self.fft.as_mut().expect("process_block needs a resampler");
        let len = self.pending.len();
        let input = InterleavedSlice::new(&self.pending, 1, len)
            .map_err(|e| AudioError::Internal(format!("resampler input: {e}")))?;
        let scratch_len = self.scratch.len();
        let mut output = InterleavedSlice::new_mut(&mut self.scratch, 1, scratch_len)
            .map_err(|e| AudioError::Internal(format!("resampler output: {e}")))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, produced) = fft
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| AudioError::Internal(format!("resampler: {e}")))?;
        let skip = self.to_trim.min(produced);
        self.to_trim -= skip;
        self.out.extend_from_slice(&self.scratch[skip..produced]);
        Ok(())
    }

    fn internal(&self, e: &dyn std::fmt::Display) -> AudioError {
        AudioError::Internal(format!("resampling {} Hz -> {} Hz failed: {e}", self.from, self.to))
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, rate: u32, secs: f32) -> Vec<f32> {
        let n = (rate as f32 * secs) as usize;
        (0..n).map(|i| (2.0 * std::f32::consts::PI * freq * i as f32 / rate as f32).sin()).collect()
    }

    #[test]
    fn length_is_exact_and_sine_survives() {
        for rate in [8_000u32, 11_025, 22_050, 44_100, 48_000, 96_000] {
            let x = sine(440.0, rate, 1.0);
            let y = resample_to_16k(x.clone(), rate).unwrap();
            let want = (x.len() as u64 * 16_000).div_ceil(u64::from(rate)) as usize;
            assert_eq!(y.len(), want, "rate {rate}");
            let reference = sine(440.0, 16_000, 1.0);
            // Skip the edges (filter ringing at the clip boundaries).
            let err = y[800..15_000]
                .iter()
                .zip(&reference[800..15_000])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 2e-3, "rate {rate}: max error {err}");
        }
    }

    /// The streaming path equals rubato's own whole-clip `process_all`.
    #[test]
    fn streaming_equals_process_all() {
        use rubato::audioadapter_buffers::direct::InterleavedSlice;
        let x: Vec<f32> = (0..30_001).map(|i| ((i * 7919) % 2003) as f32 / 2003.0 - 0.5).collect();
        for rate in [8_000u32, 22_050, 44_100, 48_000] {
            let (from_u, min_in) = (rate as usize, rate as usize / gcd(rate as usize, 16_000));
            let blocks = CHUNK.div_ceil(min_in).div_ceil(2) * 2;
            let mut whole = Fft::<f32>::new_custom(
                from_u,
                16_000,
                blocks * min_in,
                1,
                1,
                WindowFunction::BlackmanHarris2,
                FixedSync::Input,
            )
            .unwrap();
            let input = InterleavedSlice::new(&x, 1, x.len()).unwrap();
            let expected = whole.process_all(&input, x.len(), None).unwrap().take_data();
            let mut stream = StreamResampler::new(rate, 16_000).unwrap();
            for piece in x.chunks(777) {
                stream.push(piece).unwrap();
            }
            assert_eq!(stream.finish().unwrap(), expected, "rate {rate}");
        }
    }

    #[test]
    fn impulse_is_not_shifted() {
        for rate in [8_000u32, 22_050, 44_100, 48_000] {
            let mut x = vec![0.0f32; rate as usize];
            let at = rate as usize / 2; // 0.5 s
            x[at] = 1.0;
            let y = resample_to_16k(x, rate).unwrap();
            let peak = y
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map(|(i, _)| i)
                .unwrap();
            assert!((peak as i64 - 8_000).abs() <= 1, "rate {rate}: peak at {peak}");
        }
    }
}
