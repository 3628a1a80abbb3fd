//! From a whole 16 kHz signal to EchoMimic's per-video-frame audio features
//! `[n_frames, 50, 384]`, following antgroup/echomimic
//! `src/models/whisper/audio2feature.py` (`audio2feat`, `feature2chunks`,
//! `get_sliced_feature`) and the bundled `whisper/transcribe.py`.
//!
//! 1. The log-mel of the whole signal ([`LogMel::compute`], file-wide max).
//! 2. Pieces of `2 * n_ctx` mel frames (3000 = 30 s), the last one padded
//!    with zeros (in log-mel units) to full length, each through the
//!    encoder. Of a piece that held `len` real mel frames only the first
//!    `len / 2` (floored) positions are kept, so the pieces join into
//!    `[T, n_layer + 1, C]` with `T = n_mel_frames / 2`, 50 positions/s.
//! 3. For video frame `i` the centre is `c = floor(i * 50 / fps)` (integer
//!    fps, as EchoMimic's `--fps` is); positions `c - 4 .. c + 5` clamped to
//!    `[0, T - 1]` are flattened position-major, layer-minor to
//!    `[10 * (n_layer + 1), C]` = `[50, 384]`.
//!
//! EchoMimic's loop yields more windows than the audio has video frames: it
//! appends window `i`, then stops once `int(i * (50.0 / fps)) > T`, so the
//! count is the first such `i` plus one ([`chunk_count`]); 5 s at 24 fps
//! gives 122. The pipeline then renders `min(L, chunks)` frames.
//!
//! Upstream runs the encoder in fp16 on CUDA; here it runs in the weights'
//! kind.

use tch::Tensor;

use super::{
    AudioError,
    mel::{HOP_LENGTH, LogMel},
    shape_error,
    whisper::WhisperEncoder,
};

/// Encoder positions per second of audio (100 mel frames/s, conv stride 2).
pub const POSITIONS_PER_SECOND: u64 = 50;
/// Positions taken before the centre (`audio_feat_length[0] * 2`).
pub const WINDOW_BEFORE: i64 = 4;
/// Positions taken from the centre on, centre included
/// (`(audio_feat_length[1] + 1) * 2`).
pub const WINDOW_AFTER: i64 = 6;
/// Positions in one frame's window.
pub const WINDOW_LEN: i64 = WINDOW_BEFORE + WINDOW_AFTER;
/// Encoder pieces run together in one batch (bounds peak memory on long
/// files; a whisper-tiny piece is 30 s).
const PIECE_BATCH: usize = 4;

/// Encoder positions EchoMimic keeps for `n_samples` of 16 kHz audio: half
/// the mel frames (`n_samples / 160`), floored.
pub fn positions_for_samples(n_samples: usize) -> usize {
    n_samples / HOP_LENGTH / 2
}

/// The centre position of video frame `frame` at `fps`:
/// `int(frame * 50 / fps)`, exact for an integer fps.
pub fn window_center(frame: usize, fps: u32) -> Result<i64, AudioError> {
    if fps == 0 {
        return Err(AudioError::InvalidFps(fps));
    }
    Ok((frame as u64 * POSITIONS_PER_SECOND / u64::from(fps)) as i64)
}

/// The number of windows EchoMimic's `feature2chunks` yields for `positions`
/// encoder positions at `fps` (its `while` loop, including its f64
/// `i * (50.0 / fps)` stop test).
pub fn chunk_count(positions: usize, fps: u32) -> Result<usize, AudioError> {
    if fps == 0 {
        return Err(AudioError::InvalidFps(fps));
    }
    let step = 50.0 / f64::from(fps);
    let mut i = 0usize;
    loop {
        let start = (i as f64 * step) as usize;
        i += 1;
        if start > positions {
            return Ok(i);
        }
    }
}

/// The number of per-frame windows (and so the most video frames) EchoMimic
/// produces for `n_samples` of 16 kHz audio at `fps`.
pub fn frames_for_duration(n_samples: usize, fps: u32) -> Result<usize, AudioError> {
    chunk_count(positions_for_samples(n_samples), fps)
}

/// The windows of `n_frames` video frames at `fps` from encoder features
/// `hidden` `[T, n_hidden, C]`: `[n_frames, 10 * n_hidden, C]`, positions
/// `c - 4 ..= c + 5` around `c = floor(i * 50 / fps)`, clamped to
/// `[0, T - 1]`, position-major and layer-minor.
pub fn frame_windows(hidden: &Tensor, fps: u32, n_frames: usize) -> Result<Tensor, AudioError> {
    let (t, layers, c) = match hidden.size().as_slice() {
        &[t, l, c] if t > 0 => (t, l, c),
        _ => {
            return Err(shape_error("encoder features", "[T > 0, n_hidden, C]", hidden));
        }
    };
    if fps == 0 {
        return Err(AudioError::InvalidFps(fps));
    }
    let mut index = Vec::with_capacity(n_frames * WINDOW_LEN as usize);
    for i in 0..n_frames {
        let center = window_center(i, fps)?;
        index.extend((center - WINDOW_BEFORE..center + WINDOW_AFTER).map(|p| p.clamp(0, t - 1)));
    }
    let index = Tensor::from_slice(&index).to_device(hidden.device());
    Ok(hidden.index_select(0, &index).view([n_frames as i64, WINDOW_LEN * layers, c]))
}

/// EchoMimic's encoder features of a whole log-mel `mel` `[n_mels, F]`:
/// cut into pieces of `2 * n_ctx` frames, each zero-padded to full length
/// and encoded, the first `len / 2` positions of each kept and joined:
/// `[F / 2, n_layer + 1, C]`.
pub fn hidden_states_for_mel(encoder: &WhisperEncoder, mel: &Tensor) -> Result<Tensor, AudioError> {
    let cfg = encoder.config();
    let frames = match mel.size().as_slice() {
        &[m, f] if m == cfg.n_mels && f > 0 => f,
        _ => {
            return Err(shape_error("log-mel", format!("[{}, F > 0]", cfg.n_mels), mel));
        }
    };
    let piece = cfg.n_frames();
    let starts: Vec<i64> = (0..frames).step_by(piece as usize).collect();
    let mut kept = Vec::with_capacity(starts.len());
    for batch in starts.chunks(PIECE_BATCH) {
        // pad_or_trim: zeros after the real frames, up to a full piece.
        let pieces: Vec<Tensor> = batch
            .iter()
            .map(|&s| {
                let len = piece.min(frames - s);
                mel.narrow(1, s, len).constant_pad_nd([0, piece - len])
            })
            .collect();
        let states = encoder.hidden_states(&Tensor::stack(&pieces, 0))?;
        for (j, &s) in batch.iter().enumerate() {
            let len = piece.min(frames - s);
            kept.push(states.get(j as i64).narrow(0, 0, len / 2));
        }
    }
    Ok(Tensor::cat(&kept, 0))
}

/// Log-mel front end, whisper encoder and frame windows for whole signals.
#[derive(Debug)]
pub struct AudioFeatureExtractor {
    log_mel: LogMel,
    encoder: WhisperEncoder,
}

impl AudioFeatureExtractor {
    /// Wraps `encoder`; the front end is placed on the encoder's device.
    pub fn new(encoder: WhisperEncoder) -> Self {
        Self { log_mel: LogMel::new(encoder.device()), encoder }
    }

    /// The log-mel front end.
    pub fn log_mel(&self) -> &LogMel {
        &self.log_mel
    }

    /// The encoder.
    pub fn encoder(&self) -> &WhisperEncoder {
        &self.encoder
    }

    /// Encoder features `[n_samples / 320, n_layer + 1, C]` of a whole 16 kHz
    /// mono signal (at least [`MIN_SAMPLES`](super::mel::MIN_SAMPLES) long).
    pub fn hidden_states(&self, samples: &[f32]) -> Result<Tensor, AudioError> {
        let mel = self.log_mel.compute(&Tensor::from_slice(samples))?;
        hidden_states_for_mel(&self.encoder, &mel)
    }

    /// EchoMimic's audio features of a whole 16 kHz mono signal at `fps`:
    /// `[frames_for_duration(samples.len(), fps), 10 * (n_layer + 1), C]`
    /// (`[N, 50, 384]` for whisper-tiny), in the encoder's kind.
    pub fn features(&self, samples: &[f32], fps: u32) -> Result<Tensor, AudioError> {
        let n_frames = frames_for_duration(samples.len(), fps)?;
        let hidden = self.hidden_states(samples)?;
        if hidden.size()[0] == 0 {
            // Fewer than 2 mel frames: nothing for a window to clamp to.
            return Err(AudioError::TooShort { samples: samples.len(), min: 2 * HOP_LENGTH });
        }
        frame_windows(&hidden, fps, n_frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn chunk_count_matches_echomimic_examples() {
        // 5 s at 24 fps: 500 mel frames, 250 positions, 122 windows.
        assert_eq!(frames_for_duration(80_000, 24).unwrap(), 122);
        // 25 fps: step exactly 2, stop once 2i > 250 -> i = 126, count 127.
        assert_eq!(chunk_count(250, 25).unwrap(), 127);
        assert!(chunk_count(10, 0).is_err());
    }

    #[test]
    fn centers_are_floored() {
        assert_eq!(window_center(1, 24).unwrap(), 2);
        assert_eq!(window_center(12, 24).unwrap(), 25);
        assert_eq!(window_center(3, 30).unwrap(), 5);
        assert_eq!(window_center(2, 30).unwrap(), 3);
    }

    #[test]
    fn windows_clamp_and_order() {
        // hidden[t, l, 0] = 10 t + l makes the gathered positions readable.
        let t = 12i64;
        let hidden = (Tensor::arange(t, (Kind::Float, tch::Device::Cpu)).view([t, 1, 1]) * 10.0
            + Tensor::arange(5, (Kind::Float, tch::Device::Cpu)).view([1, 5, 1]))
        .expand([t, 5, 2], false)
        .contiguous();
        let w = frame_windows(&hidden, 25, 7).unwrap();
        assert_eq!(w.size(), [7, 50, 2]);
        let row = |i: i64| -> Vec<f32> { Vec::try_from(w.get(i).select(1, 0)).unwrap() };
        // frame 0: positions -4..5 clamp to 0,0,0,0,0,1,2,3,4,5.
        let r0 = row(0);
        assert_eq!(&r0[..5], &[0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(&r0[25..30], &[10.0, 11.0, 12.0, 13.0, 14.0]);
        assert_eq!(r0[49], 54.0);
        // frame 6: centre 12 -> positions 8..17 clamp to 11 at the end.
        let r6 = row(6);
        assert_eq!(r6[0], 80.0);
        assert_eq!(r6[49], 114.0);
        assert!(frame_windows(&hidden.get(0), 25, 1).is_err());
        assert!(frame_windows(&hidden, 0, 1).is_err());
    }
}
