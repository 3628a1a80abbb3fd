//! Noise schedule and samplers: DDIM (the multi-step teacher) and the LCM
//! consistency function (the one-step student).
//!
//! Follows diffusers 0.35 `schedulers/scheduling_ddim.py` and
//! `schedulers/scheduling_lcm.py`, configured as EchoMimic's
//! `configs/inference/inference_v2.yaml`: v-prediction, linear betas
//! 0.00085..0.012 over 1000 training steps rescaled to zero terminal SNR
//! (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are
//! Flawed", Algorithm 1), "trailing" timestep spacing, `set_alpha_to_one`.
//!
//! The schedule constants are computed once, in f32 with libtorch (the same
//! ops diffusers runs), so `alphas_cumprod` matches diffusers bit for bit.
//! Steps are plain tensor arithmetic with host-side scalar coefficients: they
//! never read a tensor back to the host.
//!
//! Randomness comes from [`NoiseGenerator`], a seeded host PRNG, so that a
//! seed gives the same noise on every device and no global libtorch
//! generator state is shared between streams.

use tch::{Device, Kind, Tensor};

/// Errors from building a schedule or taking a step.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("num_inference_steps must be in 1..={max}, got {got}")]
    Steps { got: usize, max: usize },
    #[error("timestep {t} outside 0..{n}")]
    Timestep { t: i64, n: usize },
    #[error("step index {index} outside a schedule of {len} steps")]
    StepIndex { index: usize, len: usize },
    #[error("{what}: shape {got:?} does not match {want:?}")]
    Shape { what: &'static str, got: Vec<i64>, want: Vec<i64> },
    #[error("invalid scheduler config: {0}")]
    Config(&'static str),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// How betas are laid out over the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `linspace(beta_start, beta_end)` (EchoMimic).
    Linear,
    /// `linspace(sqrt(beta_start), sqrt(beta_end))²` (Stable Diffusion).
    ScaledLinear,
}

/// What the denoising network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The added noise ε. Undefined at alphā = 0, so not usable with zero SNR.
    Epsilon,
    /// The velocity v = sqrt(ā)·ε − sqrt(1−ā)·x0 (EchoMimic).
    VPrediction,
    /// x0 itself.
    Sample,
}

/// How DDIM picks inference timesteps (Table 2 of Lin et al. 2023).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    /// Starts at the last training timestep (999): needed with zero SNR so the
    /// first step sees pure noise (EchoMimic).
    Trailing,
    Linspace,
}

/// Scheduler configuration; `Default` is EchoMimic's inference_v2.yaml.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub rescale_betas_zero_snr: bool,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Added to "leading" timesteps only (diffusers ignores it otherwise).
    pub steps_offset: i64,
    /// ā used past the end of the schedule (t < 0): 1.0 when true, else ā_0.
    pub set_alpha_to_one: bool,
    /// LCM: length of the distillation schedule the LCM timesteps are drawn
    /// from (diffusers `original_inference_steps`).
    pub original_inference_steps: usize,
    /// LCM: timesteps are multiplied by this in the c_skip/c_out boundary
    /// conditions (diffusers `timestep_scaling`).
    pub timestep_scaling: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::Linear,
            rescale_betas_zero_snr: true,
            prediction_type: PredictionType::VPrediction,
            timestep_spacing: TimestepSpacing::Trailing,
            steps_offset: 1,
            set_alpha_to_one: true,
            original_inference_steps: 50,
            timestep_scaling: 10.0,
        }
    }
}

/// The forward-process constants: betas and cumulative alphas (ā).
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    config: SchedulerConfig,
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
}

impl NoiseSchedule {
    pub fn new(config: &SchedulerConfig) -> Result<Self, SchedulerError> {
        let n = config.num_train_timesteps;
        if n < 2 {
            return Err(SchedulerError::Config("num_train_timesteps must be at least 2"));
        }
        if config.rescale_betas_zero_snr && config.prediction_type == PredictionType::Epsilon {
            // Zero terminal SNR makes ā_T = 0, where ε-prediction divides by 0.
            return Err(SchedulerError::Config("zero-SNR rescaling needs v- or x0-prediction"));
        }
        let _guard = tch::no_grad_guard();
        let opts = (Kind::Float, Device::Cpu);
        let n64 = n as i64;
        let mut betas = match config.beta_schedule {
            BetaSchedule::Linear => {
                Tensor::f_linspace(config.beta_start, config.beta_end, n64, opts)?
            }
            BetaSchedule::ScaledLinear => {
                Tensor::f_linspace(config.beta_start.sqrt(), config.beta_end.sqrt(), n64, opts)?
                    .square()
            }
        };
        if config.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas_cumprod = (1.0f64 - &betas).cumprod(0, Kind::Float);
        let betas = Vec::<f32>::try_from(&betas)?;
        let alphas_cumprod = Vec::<f32>::try_from(&alphas_cumprod)?;
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config: config.clone(), betas, alphas_cumprod, final_alpha_cumprod })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// ā_t; `t < 0` means "past the end" (`final_alpha_cumprod`), as in
    /// diffusers.
    pub fn alpha_cumprod(&self, t: i64) -> Result<f32, SchedulerError> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.alphas_cumprod
            .get(t as usize)
            .copied()
            .ok_or(SchedulerError::Timestep { t, n: self.alphas_cumprod.len() })
    }

    /// x_t = sqrt(ā_t)·x0 + sqrt(1−ā_t)·noise (diffusers `add_noise`).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: i64) -> Result<Tensor, SchedulerError> {
        same_shape("noise", noise, x0)?;
        let a = self.alpha_cumprod(t)?;
        Ok(x0 * sqrt32(a) + noise * sqrt32(1.0 - a))
    }

    /// v = sqrt(ā_t)·noise − sqrt(1−ā_t)·x0 (diffusers `get_velocity`): the
    /// v-prediction training target.
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, t: i64) -> Result<Tensor, SchedulerError> {
        same_shape("noise", noise, x0)?;
        let a = self.alpha_cumprod(t)?;
        Ok(noise * sqrt32(a) - x0 * sqrt32(1.0 - a))
    }

    /// The model output converted to (x0, ε) at timestep `t`.
    pub fn split_prediction(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        t: i64,
    ) -> Result<(Tensor, Tensor), SchedulerError> {
        same_shape("model_output", model_output, sample)?;
        let a = self.alpha_cumprod(t)?;
        let (sa, sb) = (sqrt32(a), sqrt32(1.0 - a));
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => {
                ((sample - model_output * sb) / sa, model_output.shallow_clone())
            }
            PredictionType::Sample => {
                (model_output.shallow_clone(), (sample - model_output * sa) / sb)
            }
            PredictionType::VPrediction => {
                (sample * sa - model_output * sb, model_output * sa + sample * sb)
            }
        })
    }
}

/// Lin et al. 2023, Algorithm 1: shift and scale sqrt(ā) so that the last
/// timestep has exactly zero signal while the first keeps its value.
fn rescale_zero_terminal_snr(betas: &Tensor) -> Tensor {
    let alphas_bar_sqrt = (1.0f64 - betas).cumprod(0, Kind::Float).sqrt();
    let n = alphas_bar_sqrt.size()[0];
    let first = alphas_bar_sqrt.get(0);
    let last = alphas_bar_sqrt.get(n - 1);
    let shifted = &alphas_bar_sqrt - &last;
    let scaled = shifted * (&first / (&first - &last));
    let alphas_bar = scaled.square();
    let alphas = Tensor::cat(
        &[
            alphas_bar.narrow(0, 0, 1),
            alphas_bar.narrow(0, 1, n - 1) / alphas_bar.narrow(0, 0, n - 1),
        ],
        0,
    );
    1.0f64 - alphas
}

/// sqrt in f32 then widened: the coefficient diffusers multiplies by.
fn sqrt32(x: f32) -> f64 {
    f64::from(x.max(0.0).sqrt())
}

fn same_shape(what: &'static str, got: &Tensor, want: &Tensor) -> Result<(), SchedulerError> {
    if got.size() == want.size() {
        Ok(())
    } else {
        Err(SchedulerError::Shape { what, got: got.size(), want: want.size() })
    }
}

fn check_steps(steps: usize, max: usize) -> Result<(), SchedulerError> {
    if steps == 0 || steps > max { Err(SchedulerError::Steps { got: steps, max }) } else { Ok(()) }
}

/// Classifier-free guidance: uncond + scale·(cond − uncond). EchoMimic uses
/// scale 2.5, the unconditional half having zero audio and a zero face mask.
pub fn classifier_free_guidance(
    uncond: &Tensor,
    cond: &Tensor,
    scale: f64,
) -> Result<Tensor, SchedulerError> {
    same_shape("cond", cond, uncond)?;
    Ok(uncond + (cond - uncond) * scale)
}

/// [`classifier_free_guidance`] on a batch whose first half is the
/// unconditional prediction and second half the conditional one (the layout
/// of EchoMimic's doubled batch, `noise_pred.chunk(2)`).
pub fn guide_batched(prediction: &Tensor, scale: f64) -> Result<Tensor, SchedulerError> {
    let b = prediction.size().first().copied().unwrap_or(0);
    if b == 0 || b % 2 != 0 {
        return Err(SchedulerError::Shape {
            what: "guided batch (even)",
            got: prediction.size(),
            want: vec![],
        });
    }
    let halves = prediction.chunk(2, 0);
    classifier_free_guidance(&halves[0], &halves[1], scale)
}

/// Deterministic DDIM (eta = 0): the multi-step teacher sampler.
#[derive(Debug, Clone)]
pub struct Ddim {
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
}

/// One DDIM step's results.
#[derive(Debug)]
pub struct DdimStep {
    pub prev_sample: Tensor,
    pub pred_original_sample: Tensor,
}

impl Ddim {
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        let schedule = NoiseSchedule::new(config)?;
        check_steps(num_inference_steps, config.num_train_timesteps)?;
        let timesteps = ddim_timesteps(config, num_inference_steps);
        Ok(Self { schedule, timesteps })
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Inference timesteps, descending (999, 966, 932, ... for 30 trailing).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The timestep a step from `t` lands on. diffusers subtracts
    /// `num_train // steps`, which with trailing spacing is not always the
    /// next scheduled timestep (966 → 933, not 932); kept for parity.
    pub fn prev_timestep(&self, t: i64) -> i64 {
        t - (self.schedule.config.num_train_timesteps / self.timesteps.len()) as i64
    }

    /// x_{t_prev} = sqrt(ā_prev)·x0 + sqrt(1−ā_prev)·ε (DDIM, eta 0).
    pub fn step(
        &self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
    ) -> Result<DdimStep, SchedulerError> {
        let (x0, eps) = self.schedule.split_prediction(model_output, sample, t)?;
        let a_prev = self.schedule.alpha_cumprod(self.prev_timestep(t))?;
        let prev_sample = &x0 * sqrt32(a_prev) + eps * sqrt32(1.0 - a_prev);
        Ok(DdimStep { prev_sample, pred_original_sample: x0 })
    }
}

fn ddim_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<i64> {
    let n = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            // np.linspace(0, n-1, steps).round()[::-1]
            let stop = (n - 1) as f64;
            let mut v: Vec<i64> = (0..steps)
                .map(|i| {
                    let x = if i + 1 == steps && steps > 1 {
                        stop
                    } else {
                        i as f64 * stop / (steps.max(2) - 1) as f64
                    };
                    x.round_ties_even() as i64
                })
                .collect();
            v.reverse();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = (n / steps) as i64;
            (0..steps as i64).rev().map(|i| i * ratio + config.steps_offset).collect()
        }
        TimestepSpacing::Trailing => {
            // np.round(np.arange(n, 0, -n/steps)) - 1, numpy's arange length
            // and round-half-to-even included.
            let delta = -(n as f64 / steps as f64);
            let len = ((0.0 - n as f64) / delta).ceil() as usize;
            (0..len).map(|i| (n as f64 + i as f64 * delta).round_ties_even() as i64 - 1).collect()
        }
    }
}

/// The LCM consistency sampler (Luo et al. 2023; diffusers `LCMScheduler`):
/// one, two or four network calls, re-noising between them.
#[derive(Debug, Clone)]
pub struct Lcm {
    schedule: NoiseSchedule,
    timesteps: Vec<i64>,
}

/// One LCM step's results.
#[derive(Debug)]
pub struct LcmStep {
    /// The input for the next step (re-noised), or `denoised` after the last.
    pub prev_sample: Tensor,
    /// The consistency function's output f(x_t, t): the x0 estimate.
    pub denoised: Tensor,
}

impl Lcm {
    pub fn new(
        config: &SchedulerConfig,
        num_inference_steps: usize,
    ) -> Result<Self, SchedulerError> {
        Self::with_start(config, num_inference_steps, config.num_train_timesteps as i64 - 1)
    }

    /// Like [`Lcm::new`] but starting from a partly noised sample at
    /// `start` (img2img; diffusers' `strength` = (start + 1) / 1000): the
    /// distillation schedule is cut to its timesteps at or below `start`
    /// before the steps are spread over it. `start = 999` is [`Lcm::new`];
    /// one step from 759 is [759], four are [759, 579, 379, 199].
    pub fn with_start(
        config: &SchedulerConfig,
        num_inference_steps: usize,
        start: i64,
    ) -> Result<Self, SchedulerError> {
        let schedule = NoiseSchedule::new(config)?;
        let original = config.original_inference_steps;
        if original == 0 || original > config.num_train_timesteps {
            return Err(SchedulerError::Config(
                "original_inference_steps must be in 1..=num_train_timesteps",
            ));
        }
        if start < 0 || start >= config.num_train_timesteps as i64 {
            return Err(SchedulerError::Timestep { t: start, n: config.num_train_timesteps });
        }
        // The distillation schedule k-1, 2k-1, ..., n-1 (k = n / original),
        // cut at `start`, sampled at evenly spaced indices from its top
        // (diffusers set_timesteps).
        let k = (config.num_train_timesteps / original) as i64;
        let count = ((start + 1) / k).min(original as i64);
        check_steps(num_inference_steps, count.max(0) as usize)?;
        let origin: Vec<i64> = (1..=count).rev().map(|i| i * k - 1).collect();
        let step = origin.len() as f64 / num_inference_steps as f64;
        let timesteps =
            (0..num_inference_steps).map(|i| origin[(i as f64 * step).floor() as usize]).collect();
        Ok(Self { schedule, timesteps })
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// Inference timesteps, descending ([999], [999, 499],
    /// [999, 759, 499, 259] for 1, 2, 4 steps).
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// The consistency-model boundary conditions (c_skip, c_out) at `t`:
    /// c_skip → 1 and c_out → 0 as t → 0, so f(x, 0) = x.
    pub fn boundary_scalings(&self, t: i64) -> (f64, f64) {
        const SIGMA_DATA: f64 = 0.5;
        let scaled = t as f64 * self.schedule.config.timestep_scaling;
        let denom = scaled * scaled + SIGMA_DATA * SIGMA_DATA;
        (SIGMA_DATA * SIGMA_DATA / denom, scaled / denom.sqrt())
    }

    /// f(x_t, t) = c_skip·x_t + c_out·x0(model_output).
    pub fn consistency(
        &self,
        model_output: &Tensor,
        t: i64,
        sample: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        let (x0, _) = self.schedule.split_prediction(model_output, sample, t)?;
        let (c_skip, c_out) = self.boundary_scalings(t);
        Ok(x0 * c_out + sample * c_skip)
    }

    /// Step `index` of the schedule with explicit re-noising noise (unused
    /// after the last step, where `prev_sample = denoised`).
    pub fn step_with_noise(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &Tensor,
    ) -> Result<LcmStep, SchedulerError> {
        let t = self.timestep(index)?;
        let denoised = self.consistency(model_output, t, sample)?;
        let prev_sample = match self.timesteps.get(index + 1) {
            Some(&t_next) => self.schedule.add_noise(&denoised, noise, t_next)?,
            None => denoised.shallow_clone(),
        };
        Ok(LcmStep { prev_sample, denoised })
    }

    /// Step `index`, drawing the re-noising noise from `rng` only when another
    /// step follows (so a one-step run consumes no randomness here).
    pub fn step(
        &self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        rng: &mut NoiseGenerator,
    ) -> Result<LcmStep, SchedulerError> {
        if index + 1 < self.timesteps.len() {
            let noise = rng.randn_like(sample);
            self.step_with_noise(index, model_output, sample, &noise)
        } else {
            self.step_with_noise(index, model_output, sample, sample)
        }
    }

    pub fn timestep(&self, index: usize) -> Result<i64, SchedulerError> {
        self.timesteps
            .get(index)
            .copied()
            .ok_or(SchedulerError::StepIndex { index, len: self.timesteps.len() })
    }
}

/// Seeded N(0, 1) noise from a host PRNG (xoshiro256** seeded with
/// splitmix64, Box–Muller): the same seed gives the same values on any device
/// and in any thread, independent of libtorch's global generator.
#[derive(Debug, Clone)]
pub struct NoiseGenerator {
    s: [u64; 4],
    spare: Option<f64>,
}

impl NoiseGenerator {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self { s: [next(), next(), next(), next()], spare: None }
    }

    /// A generator for sub-stream `stream` of `seed` (e.g. one per clip), so
    /// any clip's noise can be regenerated without replaying earlier clips.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03).rotate_left(17))
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in (0, 1]: never 0, so the logarithm below is finite.
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) * (1.0 / (1u64 << 53) as f64)
    }

    fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let r = (-2.0 * self.uniform().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.uniform();
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A tensor of standard normal values (generated in f32 on the host, then
    /// moved and cast).
    pub fn randn(&mut self, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let numel: i64 = shape.iter().product();
        let values: Vec<f32> = (0..numel.max(0)).map(|_| self.normal() as f32).collect();
        Tensor::from_slice(&values).view(shape).to_device(device).to_kind(kind)
    }

    pub fn randn_like(&mut self, like: &Tensor) -> Tensor {
        self.randn(&like.size(), like.kind(), like.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_deterministic_and_standard() {
        let a = NoiseGenerator::new(7).randn(&[4096], Kind::Float, Device::Cpu);
        let b = NoiseGenerator::new(7).randn(&[4096], Kind::Float, Device::Cpu);
        let c = NoiseGenerator::new(8).randn(&[4096], Kind::Float, Device::Cpu);
        assert!(a.equal(&b));
        assert!(!a.equal(&c));
        let mean = a.mean(Kind::Double).double_value(&[]);
        let std = a.std(true).double_value(&[]);
        assert!(mean.abs() < 0.05 && (std - 1.0).abs() < 0.05, "mean {mean} std {std}");
        let s1 = NoiseGenerator::for_stream(7, 1).randn(&[16], Kind::Float, Device::Cpu);
        let s2 = NoiseGenerator::for_stream(7, 2).randn(&[16], Kind::Float, Device::Cpu);
        assert!(!s1.equal(&s2));
    }

    #[test]
    fn bad_steps_and_shapes_are_errors() {
        let cfg = SchedulerConfig::default();
        assert!(Ddim::new(&cfg, 0).is_err());
        assert!(Lcm::new(&cfg, 51).is_err());
        let ddim = Ddim::new(&cfg, 4).unwrap();
        let x = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu));
        let y = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        assert!(ddim.step(&x, 999, &y).is_err());
        assert!(ddim.step(&x, 1000, &x).is_err());
        assert!(guide_batched(&Tensor::zeros([3, 2], (Kind::Float, Device::Cpu)), 2.5).is_err());
        let eps = SchedulerConfig { prediction_type: PredictionType::Epsilon, ..cfg };
        assert!(NoiseSchedule::new(&eps).is_err());
    }

    #[test]
    fn lcm_with_start_cuts_the_schedule() {
        let cfg = SchedulerConfig::default();
        assert_eq!(Lcm::with_start(&cfg, 1, 759).unwrap().timesteps(), [759]);
        assert_eq!(Lcm::with_start(&cfg, 4, 759).unwrap().timesteps(), [759, 579, 379, 199]);
        assert_eq!(
            Lcm::with_start(&cfg, 4, 999).unwrap().timesteps(),
            Lcm::new(&cfg, 4).unwrap().timesteps()
        );
        assert!(Lcm::with_start(&cfg, 2, 20).is_err());
        assert!(Lcm::with_start(&cfg, 1, 1000).is_err());
    }

    #[test]
    fn lcm_boundary_condition_at_zero_is_identity() {
        let lcm = Lcm::new(&SchedulerConfig::default(), 1).unwrap();
        assert_eq!(lcm.boundary_scalings(0), (1.0, 0.0));
    }
}
