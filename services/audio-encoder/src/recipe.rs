//! The stage's feature recipe: one streaming-compatible definition of the
//! per-frame whisper features, used by BOTH the file path (EncodeFile) and
//! the live path (EncodeStream), so that a stream cut into chunks of any
//! size gives the same features as the whole file.
//!
//! # The recipe
//!
//! Let `x` be the 16 kHz mono signal of `n` samples (one *segment*: a file,
//! or a live stream between `start`/`reset` and `reset`/`end`).
//!
//! 1. **Log-mel** exactly as whisper defines it for the whole signal:
//!    reflect padding at both ends of `x`, n_fft 400, hop 160, `n / 160`
//!    frames of `log10(max(mel power, 1e-10))`. A mel frame depends only on
//!    the samples within ±200 of its centre, so any span of frames can be
//!    computed from a slice of `x` (2 hops of margin, see [`WindowJob`]).
//! 2. **Positions**: `T = n / 320` encoder positions (50 per second), as
//!    EchoMimic keeps `len / 2` positions of each piece.
//! 3. **Encoder windows** of a fixed time grid, [`WindowPlan`]: window `k`
//!    produces the *core* positions `[k C, (k + 1) C) ∩ [0, T)` and sees
//!    `L` positions of left context and `R` of right context (clipped to
//!    the signal). Its input is the mel frames of positions
//!    `[max(0, kC - L), min(T, (k+1)C + R))`, normalised against **the max
//!    of those frames** (`floor at max - 8`, then `(x + 4) / 4`), placed at
//!    the start of a whisper input of `2 (L + C + R)` mel frames and padded
//!    with zeros after it; the encoder runs with bidirectional attention
//!    over that input (positional embedding rows `0 .. L + C + R`) and the
//!    core positions' hidden states (block-0 input + each block's output)
//!    are kept.
//! 4. **Frame windows** exactly as EchoMimic: video frame `i` at `fps` reads
//!    positions `c - 4 ..= c + 5`, `c = floor(i * 50 / fps)`, clamped to
//!    `[0, T - 1]`, position-major, layer-minor (`[10 (n_layer + 1), C]`).
//! 5. **Clips** of `frames_per_clip` frames; `max(1, round(n fps / 16000))`
//!    frames are real (as `osa render` counts them); the last clip is padded
//!    with frames computed by the same formula.
//!
//! Every quantity above is a function of the segment's samples alone, and
//! a window's input only needs audio up to `((k+1)C + R) * 320 + 320`
//! samples (or the end), so a live stream computes window `k` as soon as
//! that much audio has arrived and emits a clip once the positions its last
//! frame reads (`c + 5`) are computed: the look-ahead is the right context
//! plus up to one window core plus 120 ms of frame window plus 20 ms of STFT.
//!
//! # How it differs from EchoMimic's offline recipe, and why
//!
//! EchoMimic (`audio2feature.py`) normalises the log-mel against the max of
//! the **whole file** and runs the encoder on **30 s pieces** (3000 mel
//! frames, bidirectional attention over the piece, the last piece padded
//! with zeros). Both need audio from the future: the file-wide max needs
//! the whole file, and a 30 s piece needs up to 30 s of look-ahead, so a
//! live stream could not emit anything before the end (or before 30 s),
//! and a chunked stream would see different maxima and piece boundaries than
//! the file. Here the max is per window (whisper's own training normalises
//! per 30 s segment the same way) and the pieces are short windows on a fixed
//! time grid with context on both sides, so the result depends neither on
//! chunk boundaries nor on audio more than the look-ahead away. For audio
//! shorter than one core the two recipes coincide exactly, up to the
//! encoder's context length (one window = one zero-padded piece, its max =
//! the file max). The offline recipe stays available as
//! `osa_model::audio::AudioFeatureExtractor` (and `features_file` with
//! [`crate::file::Recipe::EchoMimic`]) for parity with upstream.

use std::collections::VecDeque;

use osa_model::audio::features::{POSITIONS_PER_SECOND, WINDOW_AFTER, WINDOW_BEFORE, WINDOW_LEN};

/// 16 kHz samples per mel frame.
pub const HOP: usize = 160;
/// 16 kHz samples per encoder position (two mel frames).
pub const SAMPLES_PER_POSITION: usize = 2 * HOP;
/// Seconds per encoder position.
pub const POSITION_SECONDS: f64 = 1.0 / POSITIONS_PER_SECOND as f64;
/// Margin of samples on each side of a mel span: two hops, more than the
/// STFT's half window (200), so interior frames never see reflect padding.
const SPAN_MARGIN: usize = 2 * HOP;
/// Audio sample rate of the recipe.
pub const SAMPLE_RATE: usize = 16_000;

/// Encoder windows in positions (20 ms each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    /// Left context.
    pub left: usize,
    /// Core: the positions each window produces.
    pub core: usize,
    /// Right context (look-ahead).
    pub right: usize,
}

impl Default for WindowPlan {
    /// 1 s left, 0.5 s core, 0.5 s right: a 2 s encoder input.
    fn default() -> Self {
        Self { left: 50, core: 25, right: 25 }
    }
}

impl WindowPlan {
    /// Positions of one encoder input (`L + C + R`): the encoder's `n_ctx`.
    pub fn positions(&self) -> usize {
        self.left + self.core + self.right
    }
}

/// Clip layout requested by a caller (validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// 24, 25 or 30.
    pub fps: u32,
    /// Frames per clip.
    pub frames_per_clip: usize,
}

/// One encoder window's input, ready for the model thread.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowJob {
    /// Samples of the signal `[lo, hi)` (see [`Segment`]).
    pub span: Vec<f32>,
    /// Mel frames of `span` to skip before the window's first frame (0 at
    /// the signal start, else 2: the margin).
    pub skip: usize,
    /// Mel frames of the window's input (`2 *` its positions).
    pub frames: usize,
    /// First core position within the window.
    pub core_offset: usize,
    /// Core positions.
    pub core_len: usize,
}

/// A finished clip: features `[frames_per_clip, 10 (n_layer + 1), C]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Clip {
    /// Index of the clip within the call (continues across resets).
    pub index: u64,
    /// Frames backed by audio.
    pub real_frames: usize,
    /// Row-major f32 features.
    pub features: Vec<f32>,
    /// True on the last clip of the segment (after `finish`).
    pub last: bool,
}

/// Why a segment cannot produce features.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipeError {
    #[error(
        "{samples} samples ({:.1} ms) of audio are too short: one encoder position needs at least \
         320 samples (20 ms)",
        *samples as f64 / 16.0
    )]
    TooShort { samples: usize },
}

/// The recipe's state for one segment of audio: samples in, windows out,
/// hidden states in, clips out. Pure bookkeeping (no tensors): the model
/// thread turns [`WindowJob`]s into hidden states.
#[derive(Debug)]
pub struct Segment {
    plan: WindowPlan,
    layout: Layout,
    /// Floats per position: `(n_layer + 1) * C`.
    stride: usize,
    /// Samples `[sample_base, received)`.
    samples: VecDeque<f32>,
    sample_base: usize,
    received: usize,
    ended: bool,
    /// Next window to hand out.
    next_window: usize,
    /// Hidden states of positions `[hidden_base, computed)`.
    hidden: VecDeque<f32>,
    hidden_base: usize,
    computed: usize,
    /// Next frame to put into a clip.
    next_frame: usize,
    /// Clip index of this segment's first clip.
    clip_offset: u64,
    /// Clips emitted by this segment.
    clips_out: u64,
}

impl Segment {
    /// An empty segment whose first clip gets index `clip_offset`.
    /// `stride` is `(n_layer + 1) * C` of the encoder.
    pub fn new(plan: WindowPlan, layout: Layout, stride: usize, clip_offset: u64) -> Self {
        Self {
            plan,
            layout,
            stride,
            samples: VecDeque::new(),
            sample_base: 0,
            received: 0,
            ended: false,
            next_window: 0,
            hidden: VecDeque::new(),
            hidden_base: 0,
            computed: 0,
            next_frame: 0,
            clip_offset,
            clips_out: 0,
        }
    }

    /// Samples received so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Clip index the next clip of this segment gets.
    pub fn next_clip_index(&self) -> u64 {
        self.clip_offset + self.clips_out
    }

    /// Appends samples (not after [`finish`](Self::finish)).
    pub fn push(&mut self, samples: &[f32]) {
        debug_assert!(!self.ended, "push after finish");
        self.samples.extend(samples);
        self.received += samples.len();
    }

    /// No more audio. Fails when the segment is too short for one position.
    pub fn finish(&mut self) -> Result<(), RecipeError> {
        if self.received < SAMPLES_PER_POSITION {
            return Err(RecipeError::TooShort { samples: self.received });
        }
        self.ended = true;
        Ok(())
    }

    /// Positions of the whole segment (known once finished).
    fn total_positions(&self) -> Option<usize> {
        self.ended.then_some(self.received / SAMPLES_PER_POSITION)
    }

    /// Input positions `[start, end)` and core `[core_start, core_end)` of
    /// window `k`, when its input is complete.
    fn window_bounds(&self, k: usize) -> Option<(usize, usize, usize, usize)> {
        let p = self.plan;
        let core_start = k * p.core;
        let start = core_start.saturating_sub(p.left);
        match self.total_positions() {
            Some(t) => {
                if core_start >= t {
                    return None;
                }
                let end = (core_start + p.core + p.right).min(t);
                Some((start, end, core_start, (core_start + p.core).min(t)))
            }
            None => {
                let end = core_start + p.core + p.right;
                // The STFT of the last mel frame (2 end - 1) reaches 200
                // samples past its centre; the span takes 320.
                (self.received >= end * SAMPLES_PER_POSITION + SPAN_MARGIN).then_some((
                    start,
                    end,
                    core_start,
                    core_start + p.core,
                ))
            }
        }
    }

    /// Up to `max` windows whose input is complete, in order; each must come
    /// back through [`accept`](Self::accept) in the same order.
    pub fn ready_windows(&mut self, max: usize) -> Vec<WindowJob> {
        let mut jobs = Vec::new();
        while jobs.len() < max
            && let Some((start, end, core_start, core_end)) = self.window_bounds(self.next_window)
        {
            let (a, b) = (2 * start, 2 * end);
            let lo = (a * HOP).saturating_sub(SPAN_MARGIN);
            let hi = (b * HOP + SPAN_MARGIN).min(self.received);
            let skip = a - lo / HOP;
            let span = self.samples.range(lo - self.sample_base..hi - self.sample_base).copied();
            jobs.push(WindowJob {
                span: span.collect(),
                skip,
                frames: b - a,
                core_offset: core_start - start,
                core_len: core_end - core_start,
            });
            self.next_window += 1;
        }
        // Samples before the next window's span are never read again.
        let next_start = (self.next_window * self.plan.core).saturating_sub(self.plan.left);
        let keep_from = (2 * next_start * HOP).saturating_sub(SPAN_MARGIN).min(self.received);
        if keep_from > self.sample_base {
            self.samples.drain(..keep_from - self.sample_base);
            self.sample_base = keep_from;
        }
        jobs
    }

    /// Hidden states of the next window's core positions, `core_len * stride`
    /// floats.
    pub fn accept(&mut self, core: &[f32]) {
        debug_assert_eq!(core.len() % self.stride, 0);
        self.hidden.extend(core);
        self.computed += core.len() / self.stride;
    }

    /// Video frames backed by audio (known once finished).
    pub fn real_frames(&self) -> Option<usize> {
        let fps = self.layout.fps as usize;
        self.ended.then(|| ((self.received * fps * 2 + SAMPLE_RATE) / (2 * SAMPLE_RATE)).max(1))
    }

    fn center(&self, frame: usize) -> usize {
        frame * POSITIONS_PER_SECOND as usize / self.layout.fps as usize
    }

    /// Clips whose frames can all be computed now.
    pub fn ready_clips(&mut self) -> Vec<Clip> {
        let fpc = self.layout.frames_per_clip;
        let mut clips = Vec::new();
        loop {
            let first = self.next_frame;
            let last_frame = first + fpc - 1;
            let (real, is_last) = match (self.real_frames(), self.total_positions()) {
                (Some(real), Some(t)) if self.computed == t => {
                    if first >= real {
                        break;
                    }
                    ((real - first).min(fpc), first + fpc >= real)
                }
                (real, _) => {
                    // Before the end: the last frame's window must be computed
                    // (and a clip holding the segment's last real frame waits
                    // for the end, so that it carries `last`).
                    if self.center(last_frame) + (WINDOW_AFTER as usize) > self.computed
                        || real.is_some_and(|real| first + fpc >= real)
                    {
                        break;
                    }
                    (fpc, false)
                }
            };
            let features = self.clip_features(first, fpc);
            clips.push(Clip {
                index: self.next_clip_index(),
                real_frames: real,
                features,
                last: is_last,
            });
            self.clips_out += 1;
            self.next_frame += fpc;
            if is_last {
                break;
            }
        }
        // Positions before the next frame's window are never read again.
        let keep_from =
            self.center(self.next_frame).saturating_sub(WINDOW_BEFORE as usize).min(self.computed);
        if keep_from > self.hidden_base {
            self.hidden.drain(..(keep_from - self.hidden_base) * self.stride);
            self.hidden_base = keep_from;
        }
        clips
    }

    /// Frames `first .. first + count`: `[count, WINDOW_LEN * stride]`.
    fn clip_features(&self, first: usize, count: usize) -> Vec<f32> {
        let last_pos = self.computed - 1;
        let mut out = Vec::with_capacity(count * WINDOW_LEN as usize * self.stride);
        for i in first..first + count {
            let c = self.center(i) as i64;
            for p in c - WINDOW_BEFORE..c + WINDOW_AFTER {
                let p = (p.max(0) as usize).min(last_pos);
                let at = (p - self.hidden_base) * self.stride;
                out.extend(self.hidden.range(at..at + self.stride));
            }
        }
        out
    }

    /// True once every clip has been handed out.
    pub fn done(&self) -> bool {
        self.real_frames().is_some_and(|real| self.next_frame >= real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout { fps: 25, frames_per_clip: 12 };

    /// A fake encoder: each core position's hidden state is its index.
    fn run(seg: &mut Segment, stride: usize, clips: &mut Vec<Clip>) {
        let mut next_pos = seg.computed;
        for job in seg.ready_windows(usize::MAX) {
            assert_eq!(job.frames % 2, 0);
            let mut core = Vec::new();
            for _ in 0..job.core_len {
                core.extend(std::iter::repeat_n(next_pos as f32, stride));
                next_pos += 1;
            }
            seg.accept(&core);
        }
        clips.extend(seg.ready_clips());
    }

    #[test]
    fn windows_tile_the_positions_and_clips_read_the_right_ones() {
        let plan = WindowPlan { left: 4, core: 3, right: 2 };
        let stride = 2;
        let n = 16_000 + 123; // 1.0077 s: 50 positions, 25 real frames at 25 fps
        let mut seg = Segment::new(plan, LAYOUT, stride, 7);
        let mut clips = Vec::new();
        for chunk in vec![0.0f32; n].chunks(999) {
            seg.push(chunk);
            run(&mut seg, stride, &mut clips);
        }
        let before_end = clips.len();
        assert!(before_end >= 1, "a clip is emitted before the end");
        seg.finish().unwrap();
        run(&mut seg, stride, &mut clips);
        assert!(seg.done());
        assert_eq!(seg.computed, 50);
        assert_eq!(clips.len(), 3);
        assert_eq!(clips.iter().map(|c| c.index).collect::<Vec<_>>(), vec![7, 8, 9]);
        assert_eq!(clips.iter().map(|c| c.real_frames).collect::<Vec<_>>(), vec![12, 12, 1]);
        assert!(clips[2].last && !clips[1].last);
        // frame 13 (clip 1, row 1): centre 26 -> positions 22..=31.
        let row =
            &clips[1].features[WINDOW_LEN as usize * stride..][..WINDOW_LEN as usize * stride];
        let got: Vec<f32> = row.iter().step_by(stride).copied().collect();
        assert_eq!(got, (22..32).map(|p| p as f32).collect::<Vec<_>>());
        // the last clip clamps at T - 1 = 49.
        assert_eq!(*clips[2].features.last().unwrap(), 49.0);
    }

    #[test]
    fn a_clip_leaves_as_soon_as_its_look_ahead_has_arrived() {
        let plan = WindowPlan::default();
        let mut seg = Segment::new(plan, LAYOUT, 1, 0);
        let mut clips = Vec::new();
        let mut emitted_at = Vec::new();
        while seg.received() < 3 * 16_000 {
            seg.push(&[0.0; HOP]);
            let before = clips.len();
            run(&mut seg, 1, &mut clips);
            emitted_at.extend(std::iter::repeat_n(seg.received(), clips.len() - before));
        }
        // Clip c's last frame 12c + 11 reads up to position c' + 5 with
        // c' = 2 (12c + 11); the window whose core holds it ends 25
        // positions (0.5 s) of right context later, plus 320 samples.
        for (c, &at) in emitted_at.iter().enumerate() {
            let last_pos = 2 * (12 * c + 11) + 5;
            let core_end = (last_pos / plan.core + 1) * plan.core;
            assert_eq!(
                at,
                (core_end + plan.right) * SAMPLES_PER_POSITION + SPAN_MARGIN,
                "clip {c}"
            );
        }
        assert!(emitted_at.len() >= 3);
    }

    #[test]
    fn spans_are_aligned_and_short_segments_fail() {
        let plan = WindowPlan::default();
        let mut seg = Segment::new(plan, LAYOUT, 1, 0);
        seg.push(&vec![0.5; 5 * 16_000]);
        let jobs = seg.ready_windows(usize::MAX);
        // 5 s: windows whose core + right end by 5 s minus the margin.
        assert_eq!(jobs.len(), 8);
        assert_eq!((jobs[0].skip, jobs[0].core_offset, jobs[0].frames), (0, 0, 100));
        assert_eq!((jobs[3].skip, jobs[3].core_offset, jobs[3].frames), (2, 50, 200));
        assert_eq!(jobs[3].span.len(), 200 * HOP + 2 * SPAN_MARGIN);
        let mut short = Segment::new(plan, LAYOUT, 1, 0);
        short.push(&[0.0; 319]);
        assert_eq!(short.finish(), Err(RecipeError::TooShort { samples: 319 }));
    }
}
