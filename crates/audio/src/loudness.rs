//! Optional loudness normalisation (off unless the caller asks for it).
//!
//! Measures integrated loudness per EBU R128 / ITU-R BS.1770 (K-weighting,
//! 400 ms blocks, absolute -70 LUFS and relative -10 LU gates) with the
//! `ebur128` crate, then applies one constant gain towards the target. The
//! gain is bounded (`max_gain_db`) so near-silence is not blown up into
//! noise, and lowered when needed so the sample peak stays under
//! `peak_ceiling`: a constant gain keeps the waveform's shape, which is all
//! the audio encoder needs (no compressor, no limiter).

use ebur128::{EbuR128, Mode};

use crate::AudioError;

/// Loudness normalisation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoudnessConfig {
    /// Target integrated loudness in LUFS. Default -23 (EBU R128 broadcast).
    pub target_lufs: f64,
    /// Largest boost or cut applied, in dB. Default 20.
    pub max_gain_db: f64,
    /// Largest absolute sample value after the gain. Default 0.98 (-0.18 dBFS).
    pub peak_ceiling: f32,
}

impl Default for LoudnessConfig {
    fn default() -> Self {
        Self { target_lufs: -23.0, max_gain_db: 20.0, peak_ceiling: 0.98 }
    }
}

/// What [`normalize_loudness`] measured and did.
#[derive(Debug, Clone, PartialEq)]
pub struct LoudnessReport {
    /// Integrated loudness before the gain, `None` when it cannot be measured
    /// (silence, or shorter than one 400 ms gating block).
    pub measured_lufs: Option<f64>,
    /// Gain applied in dB (0 when nothing was measured).
    pub gain_db: f64,
}

/// Normalises mono `samples` at `sample_rate` in place towards
/// `config.target_lufs`. Audio whose loudness cannot be measured is left
/// unchanged.
pub fn normalize_loudness(
    samples: &mut [f32],
    sample_rate: u32,
    config: &LoudnessConfig,
) -> Result<LoudnessReport, AudioError> {
    let internal = |e: ebur128::Error| AudioError::Internal(format!("loudness meter: {e}"));
    let mut meter = EbuR128::new(1, sample_rate, Mode::I).map_err(internal)?;
    meter.add_frames_f32(samples).map_err(internal)?;
    let lufs = meter.loudness_global().map_err(internal)?;
    if !lufs.is_finite() {
        return Ok(LoudnessReport { measured_lufs: None, gain_db: 0.0 });
    }
    let mut gain_db = (config.target_lufs - lufs).clamp(-config.max_gain_db, config.max_gain_db);
    let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    if peak > 0.0 {
        let headroom_db = 20.0 * f64::from(config.peak_ceiling / peak).log10();
        gain_db = gain_db.min(headroom_db);
    }
    let gain = 10f64.powf(gain_db / 20.0) as f32;
    samples.iter_mut().for_each(|s| *s *= gain);
    Ok(LoudnessReport { measured_lufs: Some(lufs), gain_db })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f32, secs: f32) -> Vec<f32> {
        let n = (16_000.0 * secs) as usize;
        (0..n)
            .map(|i| amplitude * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect()
    }

    #[test]
    fn brings_a_quiet_tone_to_target() {
        let mut x = tone(0.01, 3.0);
        let report = normalize_loudness(&mut x, 16_000, &LoudnessConfig::default()).unwrap();
        assert!(report.gain_db > 0.0);
        let mut meter = EbuR128::new(1, 16_000, Mode::I).unwrap();
        meter.add_frames_f32(&x).unwrap();
        let after = meter.loudness_global().unwrap();
        assert!((after + 23.0).abs() < 0.1, "after {after}");
    }

    #[test]
    fn respects_peak_ceiling_and_silence() {
        let cfg = LoudnessConfig { target_lufs: 0.0, ..LoudnessConfig::default() };
        let mut x = tone(0.5, 2.0);
        normalize_loudness(&mut x, 16_000, &cfg).unwrap();
        let peak = x.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak <= 0.9801, "peak {peak}");

        let mut silence = vec![0.0f32; 32_000];
        let report = normalize_loudness(&mut silence, 16_000, &cfg).unwrap();
        assert_eq!(report, LoudnessReport { measured_lufs: None, gain_db: 0.0 });
    }
}
