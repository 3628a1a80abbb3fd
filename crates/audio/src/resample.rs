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
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

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
    let internal = |e: &dyn std::fmt::Display| {
        AudioError::Internal(format!("resampling {from} Hz -> {to} Hz failed: {e}"))
    };
    let (from_u, to_u) = (from as usize, to as usize);
    let min_in = from_u / gcd(from_u, to_u);
    // An even number of minimal blocks per FFT keeps the filter's centre on
    // an output sample: with an odd count the latency is fractional (up to
    // 0.7 of a 16 kHz sample seen) and cannot be trimmed exactly.
    let blocks = CHUNK.div_ceil(min_in).div_ceil(2) * 2;
    let mut resampler = Fft::<f32>::new_custom(
        from_u,
        to_u,
        blocks * min_in,
        1,
        1,
        WindowFunction::BlackmanHarris2,
        FixedSync::Input,
    )
    .map_err(|e| internal(&e))?;
    let input = InterleavedSlice::new(&samples, 1, samples.len()).map_err(|e| internal(&e))?;
    let out = resampler.process_all(&input, samples.len(), None).map_err(|e| internal(&e))?;
    Ok(out.take_data())
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
