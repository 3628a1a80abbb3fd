//! The recipe against osa-model's offline (EchoMimic) path, the log-mel of
//! window spans against the whole-signal log-mel, and `features_file`.

mod common;

use osa_audio_encoder::{
    FeaturesOptions, Recipe, features_file,
    file::{features_of_samples, service_features},
    model::{ModelConfig, WindowModel, build_encoder, encoder_config},
    recipe::{HOP, Layout, Segment, WindowPlan},
    write_safetensors,
};
use osa_model::{
    audio::{AudioFeatureExtractor, LogMel, WhisperEncoderConfig},
    device::Placement,
};
use tch::{Device, Kind, Tensor};

fn model(plan: WindowPlan) -> WindowModel {
    WindowModel::load(&ModelConfig {
        weights: None,
        preset: "tiny".into(),
        seed: 3,
        placement: Placement::cpu(),
        plan,
    })
    .unwrap()
}

fn speech() -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    common::decode(&common::speech_wav(dir.path()).unwrap())
}

#[test]
fn short_audio_equals_the_offline_recipe() {
    // Audio that fits one window's core: one zero-padded piece whose max is
    // the file max, i.e. EchoMimic's recipe with an encoder context of
    // L + C + R positions.
    let plan = WindowPlan { left: 50, core: 100, right: 25 };
    let m = model(plan);
    let samples: Vec<f32> = speech()[8_000..8_000 + 30_500].to_vec(); // 1.9 s: 95 positions
    for fps in [24, 25, 30] {
        let (ours, windows) = service_features(&m, &samples, fps).unwrap();
        assert_eq!(windows, 1);
        let cfg = WhisperEncoderConfig {
            n_ctx: plan.positions() as i64,
            ..encoder_config(None, "tiny").unwrap()
        };
        let (_vs, enc) = build_encoder(&cfg, None, 3, Placement::cpu()).unwrap();
        let offline = AudioFeatureExtractor::new(enc).features(&samples, fps).unwrap();
        let n = ours.size()[0];
        assert_eq!(n, (1.90625f64 * f64::from(fps)).round() as i64);
        let diff = (ours - offline.narrow(0, 0, n)).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "fps {fps}: max diff {diff}");
    }
}

#[test]
fn window_mels_equal_the_whole_signal_log_mel() {
    let plan = WindowPlan::default();
    let m = model(plan);
    let samples = speech();
    let n = samples.len();
    let whole = LogMel::new(Device::Cpu).log10_mel(&Tensor::from_slice(&samples)).unwrap();
    let mut seg = Segment::new(plan, Layout { fps: 25, frames_per_clip: 12 }, m.stride(), 0);
    seg.push(&samples);
    seg.finish().unwrap();
    let jobs = seg.ready_windows(usize::MAX);
    assert!(jobs.len() > 4, "{} windows", jobs.len());
    for (k, job) in jobs.iter().enumerate() {
        let start = (k * plan.core).saturating_sub(plan.left);
        let expect = whole.narrow(1, 2 * start as i64, job.frames as i64);
        let floor = expect.max() - 8.0;
        let expect = (expect.maximum(&floor) + 4.0) / 4.0;
        let got = m.window_mel(job).unwrap().narrow(1, 0, job.frames as i64);
        let diff = (got - expect).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "window {k}: {diff}");
    }
    // The last window reaches the end of the signal (n / 160 mel frames).
    let last = jobs.last().unwrap();
    let start = ((jobs.len() - 1) * plan.core).saturating_sub(plan.left);
    assert_eq!(2 * start + last.frames, 2 * (n / (2 * HOP)));
}

#[test]
fn features_file_writes_mel_and_features() {
    let dir = tempfile::tempdir().unwrap();
    let wav = common::speech_wav(dir.path()).unwrap();
    let n = common::decode(&wav).len();
    let mut opts = FeaturesOptions::new(25);
    let f = features_file(&wav, &opts).unwrap();
    assert_eq!(f.mel.size(), [80, (n / 160) as i64]);
    assert_eq!(f.features.size(), [f.real_frames as i64, 50, 16]);
    assert_eq!(f.real_frames, (n as f64 * 25.0 / 16_000.0).round() as usize);
    let out = dir.path().join("f.safetensors");
    write_safetensors(&out, &f).unwrap();
    let back: std::collections::HashMap<_, _> =
        Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    assert_eq!(back["features"].kind(), Kind::Float);
    assert!(back["features"].equal(&f.features));
    assert!(back["mel"].equal(&f.mel));

    opts.recipe = Recipe::EchoMimic;
    let e = features_file(&wav, &opts).unwrap();
    let frames = osa_model::audio::frames_for_duration(n, 25).unwrap() as i64;
    assert_eq!(e.features.size(), [frames, 50, 16]);
    assert!(features_of_samples(&[0.0; 100], &FeaturesOptions::new(25)).is_err());
    assert!(features_of_samples(&[0.0; 16_000], &FeaturesOptions::new(29)).is_err());
}
