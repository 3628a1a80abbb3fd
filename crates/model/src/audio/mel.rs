//! Whisper's log-mel front end, equal to openai-whisper's
//! `whisper.audio.log_mel_spectrogram` (the copy bundled in EchoMimic,
//! `src/models/whisper/whisper/audio.py`, is the same computation).
//!
//! 16 kHz mono f32 samples -> STFT (n_fft 400, hop 160, periodic Hann window,
//! `center=True` with reflect padding, last frame dropped) -> power spectrum
//! -> 80 slaney mel filters -> `log10(max(x, 1e-10))` -> floor at
//! `max - 8.0` -> `(x + 4) / 4`. The result is `[80, n_samples / 160]`.
//!
//! The normalising max is taken over the *whole input*: EchoMimic computes
//! the log-mel of the entire audio file once and only then cuts it into
//! 30 s pieces, so every piece shares the file-wide max. A streaming caller
//! that sees the signal piecewise cannot know that max in advance;
//! [`LogMel::compute_with_max`] takes it as a parameter instead (see
//! [`LogMel::log10_mel`] to obtain it).
//!
//! The filterbank is computed here (librosa's `filters.mel(sr=16000,
//! n_fft=400, n_mels=80)`, slaney scale and slaney area normalisation, the
//! recipe behind whisper's packaged `assets/mel_filters.npz`) instead of
//! shipping the asset.

use tch::{Device, Kind, Tensor};

use super::{AudioError, shape_error};

/// Sample rate whisper expects.
pub const SAMPLE_RATE: u32 = 16_000;
/// FFT size (25 ms window).
pub const N_FFT: usize = 400;
/// STFT hop (10 ms): 100 mel frames per second.
pub const HOP_LENGTH: usize = 160;
/// Mel bins of whisper-tiny.
pub const N_MELS: usize = 80;
/// Seconds in one encoder piece.
pub const CHUNK_LENGTH: usize = 30;
/// Samples in one encoder piece (30 s).
pub const N_SAMPLES: usize = CHUNK_LENGTH * SAMPLE_RATE as usize;
/// Mel frames in one encoder piece (3000).
pub const N_FRAMES: usize = N_SAMPLES / HOP_LENGTH;
/// Shortest signal the STFT accepts: reflect padding by `N_FFT / 2` needs
/// more samples than the pad.
pub const MIN_SAMPLES: usize = N_FFT / 2 + 1;

/// The mel filterbank `[n_mels, n_fft / 2 + 1]`, row-major, following
/// librosa's `filters.mel(sr, n_fft, n_mels)` defaults (fmin 0, fmax sr/2,
/// slaney mel scale, slaney area normalisation, float32 output).
///
/// librosa computes in f64 but stores the triangles in an f32 array before
/// multiplying by the area normalisation in f64; both roundings are kept
/// so the result matches the packaged asset bit for bit where possible.
pub fn mel_filterbank(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    // np.fft.rfftfreq(n_fft, d=1/sr): k * (1 / (n * d)).
    let bin = 1.0 / (n_fft as f64 * (1.0 / f64::from(sample_rate)));
    let fft_freqs: Vec<f64> = (0..n_freqs).map(|k| k as f64 * bin).collect();
    // np.linspace(mel(0), mel(sr/2), n_mels + 2) mapped back to Hz; start is 0.
    let max_mel = hz_to_mel(f64::from(sample_rate) / 2.0);
    let n_points = n_mels + 2;
    let step = max_mel / (n_points - 1) as f64;
    let mel_f: Vec<f64> = (0..n_points)
        .map(|i| if i == n_points - 1 { max_mel } else { i as f64 * step })
        .map(mel_to_hz)
        .collect();

    let mut weights = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (lo, mid, hi) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = -(lo - f) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            let tri = lower.min(upper).max(0.0) as f32;
            weights[m * n_freqs + k] = (f64::from(tri) * enorm) as f32;
        }
    }
    weights
}

/// Slaney mel scale (librosa `hz_to_mel`, `htk=False`): linear below 1 kHz,
/// logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ { min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep } else { hz / F_SP }
}

/// Inverse of [`hz_to_mel`] (librosa `mel_to_hz`, `htk=False`).
fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel { MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp() } else { F_SP * mel }
}

/// Whisper's normalisation of a log10 mel spectrogram given the max it is
/// normalised against: floor at `max_log10 - 8`, then `(x + 4) / 4`.
pub fn normalize(log10_mel: &Tensor, max_log10: f64) -> Tensor {
    (log10_mel.clamp_min(max_log10 - 8.0) + 4.0) / 4.0
}

/// The log-mel front end with its filterbank and window held on one device.
#[derive(Debug)]
pub struct LogMel {
    filters: Tensor,
    window: Tensor,
    device: Device,
}

impl LogMel {
    /// Builds the 80-bin whisper front end on `device` (computation in f32,
    /// as whisper does it).
    pub fn new(device: Device) -> Self {
        let filters = Tensor::from_slice(&mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS))
            .view([N_MELS as i64, (N_FFT / 2 + 1) as i64])
            .to_device(device);
        let window = Tensor::hann_window_periodic(N_FFT as i64, true, (Kind::Float, device));
        Self { filters, window, device }
    }

    /// The filterbank `[80, 201]`.
    pub fn filters(&self) -> &Tensor {
        &self.filters
    }

    /// `log10(max(mel power, 1e-10))` of 16 kHz `samples` (`[n]`, any float
    /// kind and device), before whisper's normalisation: `[80, n / 160]`.
    pub fn log10_mel(&self, samples: &Tensor) -> Result<Tensor, AudioError> {
        if samples.dim() != 1 {
            return Err(shape_error("audio samples", "[n_samples]", samples));
        }
        let n = samples.size()[0] as usize;
        if n < MIN_SAMPLES {
            return Err(AudioError::TooShort { samples: n, min: MIN_SAMPLES });
        }
        let _guard = tch::no_grad_guard();
        let x = samples.to_device(self.device).to_kind(Kind::Float);
        // torch.stft(center=True) reflect-pads n_fft / 2 on both sides and
        // then frames without centring; done the same way here (libtorch's
        // stft_center rejects the align_to_window flag tch always passes).
        let pad = (N_FFT / 2) as i64;
        let padded = x.view([1, -1]).f_reflection_pad1d([pad, pad])?.view([-1]);
        let stft = padded.f_stft(
            N_FFT as i64,
            HOP_LENGTH as i64,
            N_FFT as i64,
            Some(&self.window),
            false,
            true,
            true,
            false,
        )?;
        // center=True yields 1 + n / hop frames; whisper drops the last one.
        let frames = stft.size()[1];
        let power = stft.narrow(1, 0, frames - 1).abs().square();
        Ok(self.filters.matmul(&power).clamp_min(1e-10).log10())
    }

    /// Whisper's `log_mel_spectrogram`: `[80, n / 160]`, normalised against
    /// the max over the whole of `samples` (what EchoMimic does for a file).
    pub fn compute(&self, samples: &Tensor) -> Result<Tensor, AudioError> {
        let log = self.log10_mel(samples)?;
        // Kept as a tensor op (no host sync) and in f32, like whisper.
        let floor = log.max() - 8.0;
        Ok((log.maximum(&floor) + 4.0) / 4.0)
    }

    /// Like [`compute`](Self::compute) but normalised against a given
    /// `max_log10` (a file-wide max computed earlier, or a running max in a
    /// streaming service) instead of the max of `samples`.
    pub fn compute_with_max(&self, samples: &Tensor, max_log10: f64) -> Result<Tensor, AudioError> {
        Ok(normalize(&self.log10_mel(samples)?, max_log10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filterbank_is_triangles_with_slaney_area() {
        let fb = mel_filterbank(SAMPLE_RATE, N_FFT, N_MELS);
        assert_eq!(fb.len(), N_MELS * 201);
        assert!(fb.iter().all(|&w| w >= 0.0));
        // Every filter has some support and the DC/Nyquist ends stay empty
        // for the first and last filters' outer edges.
        for m in 0..N_MELS {
            assert!(fb[m * 201..(m + 1) * 201].iter().any(|&w| w > 0.0), "filter {m} empty");
        }
        assert_eq!(fb[0], 0.0);
    }

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 440.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9);
        }
    }

    #[test]
    fn shapes_and_errors() {
        let lm = LogMel::new(Device::Cpu);
        let x = Tensor::randn([16_000], (Kind::Float, Device::Cpu)) * 0.1;
        let mel = lm.compute(&x).unwrap();
        assert_eq!(mel.size(), [80, 100]);
        // max over the whole input maps to (max + 4) / 4.
        let top = mel.max().double_value(&[]);
        let log_max = lm.log10_mel(&x).unwrap().max().double_value(&[]);
        assert!((top - (log_max + 4.0) / 4.0).abs() < 1e-6);
        let fixed = lm.compute_with_max(&x, log_max).unwrap();
        assert!(fixed.allclose(&mel, 1e-6, 1e-6, false));
        assert!(matches!(lm.compute(&x.narrow(0, 0, 200)), Err(AudioError::TooShort { .. })));
        assert!(matches!(lm.compute(&x.view([2, 8000])), Err(AudioError::Shape { .. })));
    }
}
