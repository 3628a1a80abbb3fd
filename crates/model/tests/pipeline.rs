//! The whole inference path on the tiny preset: reference preparation with
//! the real MTCNN on a real photo, whisper features of real speech, rolling
//! one-step clips, VAE decoding; and the weights directory round trip.

mod common;

use std::time::Instant;

use osa_model::{
    device::Placement, pipeline::Pipeline, preset::Preset, rolling::RollingState, weights,
};
use tch::{Kind, Tensor};

fn portrait() -> image::RgbImage {
    let path = common::workspace_root().join("target/samples/portrait.png");
    image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup.sh)", path.display()))
        .to_rgb8()
}

/// A short 16 kHz tone-and-noise signal standing in for speech where only
/// shapes matter.
fn signal(seconds: f32) -> Vec<f32> {
    let n = (seconds * 16_000.0) as usize;
    (0..n)
        .map(|i| (i as f32 * 0.05).sin() * 0.3 + ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.05)
        .collect()
}

#[test]
fn tiny_pipeline_runs_end_to_end_one_unet_call_per_clip() {
    let detector = common::fixture("mtcnn.py", "mtcnn", &[]).weights;
    let preset = Preset::tiny();
    let pipe = Pipeline::random(preset.clone(), 7, Placement::cpu(), Some(&detector)).unwrap();
    assert!(pipe.has_face_detector());

    let avatar = pipe.prepare_avatar(&portrait()).unwrap();
    assert_eq!(avatar.faces.len(), 1, "the astronaut has one face");
    assert!(avatar.reference.face_found);
    let (h, w) = preset.latent_size();
    assert_eq!(avatar.latent.size(), vec![1, 4, h, w]);
    assert_eq!(
        avatar.face_features.size(),
        vec![1, preset.denoising_unet.block_out_channels[0], h, w]
    );

    let fps = 25;
    let features = pipe.audio_features(&signal(1.2), fps).unwrap();
    let frames = features.size()[0];
    assert!(frames >= 24, "{frames} frames of features for 1.2 s at 25 fps");
    assert_eq!(features.size()[1..], [50, preset.audio_encoder.n_state]);

    let mut state = RollingState::new(3, 1);
    let mut previous: Option<Tensor> = None;
    for clip in 0..2 {
        let audio = features.narrow(0, clip * preset.frames, preset.frames);
        let started = Instant::now();
        let out = pipe.generate_clip(&avatar, &state, &audio).unwrap();
        let took = started.elapsed();
        eprintln!("tiny clip {clip}: {took:?}");
        assert_eq!(out.latents.size(), vec![preset.frames, 4, h, w]);
        assert!(bool::try_from(out.latents.isfinite().all()).unwrap());
        if let Some(prev) = &previous {
            assert!(f64::try_from((&out.latents - prev).abs().max()).unwrap() > 0.0);
        }
        let rgb = pipe.decode(&out.latents).unwrap();
        assert_eq!(rgb.size(), vec![preset.frames, 64, 64, 3]);
        assert_eq!(rgb.kind(), Kind::Uint8);
        previous = Some(out.latents);
        state = out.next;
    }
    assert_eq!(state.clip_index, 2);
}

#[test]
fn weights_written_by_init_load_back_to_the_same_model() {
    let dir = std::env::temp_dir().join(format!("osa-weights-{}", std::process::id()));
    let preset = Preset::tiny();
    let manifest = weights::init_random(&preset, 11, &dir, None).unwrap();
    assert_eq!(manifest.preset, "tiny");
    assert_eq!(weights::read_manifest(&dir).unwrap(), manifest);
    assert_eq!(weights::component_files(&dir).len(), weights::COMPONENTS.len());

    let from_disk = Pipeline::load(&dir, Placement::cpu()).unwrap();
    let in_memory = Pipeline::random(preset.clone(), 11, Placement::cpu(), None).unwrap();
    let other_seed = Pipeline::random(preset.clone(), 12, Placement::cpu(), None).unwrap();
    let img = portrait();
    let a = from_disk.prepare_avatar(&img).unwrap();
    let b = in_memory.prepare_avatar(&img).unwrap();
    let c = other_seed.prepare_avatar(&img).unwrap();
    assert!(a.latent.equal(&b.latent), "same seed, same weights");
    assert!(!a.latent.equal(&c.latent), "another seed, other weights");

    let audio = Tensor::randn(
        [preset.frames, 50, preset.audio_encoder.n_state],
        (Kind::Float, tch::Device::Cpu),
    );
    let state = RollingState::new(5, 1);
    let x = from_disk.generate_clip(&a, &state, &audio).unwrap();
    let y = in_memory.generate_clip(&b, &state, &audio).unwrap();
    assert!(x.latents.equal(&y.latents));

    // A missing component is named.
    std::fs::remove_file(dir.join("face_locator.safetensors")).unwrap();
    let err = Pipeline::load(&dir, Placement::cpu()).unwrap_err().to_string();
    assert!(err.contains("face_locator"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_clip_audio_is_an_error_not_a_panic() {
    let preset = Preset::tiny();
    let pipe = Pipeline::random(preset.clone(), 1, Placement::cpu(), None).unwrap();
    let avatar = pipe.prepare_avatar(&portrait()).unwrap();
    assert!(!avatar.reference.face_found, "no detector: whole-image fallback");
    let wrong =
        Tensor::zeros([5, 50, preset.audio_encoder.n_state], (Kind::Float, tch::Device::Cpu));
    let err = pipe.generate_clip(&avatar, &RollingState::new(1, 1), &wrong).unwrap_err();
    assert!(err.to_string().contains("clip audio features"), "{err}");
}

#[test]
fn the_teacher_runs_guided_ddim_and_the_guidance_matters() {
    let preset = Preset::tiny();
    let pipe = Pipeline::random(preset.clone(), 2, Placement::cpu(), None).unwrap();
    let avatar = pipe.prepare_avatar(&portrait()).unwrap();
    let audio = Tensor::randn(
        [preset.frames, 50, preset.audio_encoder.n_state],
        (Kind::Float, tch::Device::Cpu),
    );
    let a = pipe.generate_clip_teacher(&avatar, &audio, 4, 2.5, 9).unwrap();
    let (h, w) = preset.latent_size();
    assert_eq!(a.size(), vec![preset.frames, 4, h, w]);
    let again = pipe.generate_clip_teacher(&avatar, &audio, 4, 2.5, 9).unwrap();
    assert!(a.equal(&again), "deterministic per seed");
    let unguided = pipe.generate_clip_teacher(&avatar, &audio, 4, 1.0, 9).unwrap();
    assert!(!a.equal(&unguided), "guidance changes the result");
    assert!(pipe.generate_clip_teacher(&avatar, &audio, 0, 2.5, 9).is_err());
}

#[test]
fn a_batch_of_two_streams_equals_each_stream_alone() {
    use osa_model::pipeline::ClipJob;
    let preset = Preset::tiny();
    let pipe = Pipeline::random(preset.clone(), 4, Placement::cpu(), None).unwrap();
    let img = portrait();
    let a = pipe.prepare_avatar(&img).unwrap();
    let flipped = image::imageops::flip_horizontal(&img);
    let b = pipe.prepare_avatar(&flipped).unwrap();
    let shape = [preset.frames, 50, preset.audio_encoder.n_state];
    let audio_a = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu));
    let audio_b = Tensor::randn(shape, (Kind::Float, tch::Device::Cpu));
    // Stream a is at clip 0 (starts from its reference), stream b at clip 1
    // (starts from its previous latents): different timesteps in one batch.
    let sa = RollingState::new(1, 1);
    let sb0 = RollingState::new(2, 1);
    let sb = pipe.generate_clip(&b, &sb0, &audio_b).unwrap().next;
    let alone_a = pipe.generate_clip(&a, &sa, &audio_a).unwrap();
    let alone_b = pipe.generate_clip(&b, &sb, &audio_b).unwrap();
    let both = pipe
        .generate_clips(&[
            ClipJob { avatar: &a, state: &sa, audio: &audio_a },
            ClipJob { avatar: &b, state: &sb, audio: &audio_b },
        ])
        .unwrap();
    common::assert_close("stream a batched", &both[0].latents, &alone_a.latents, 1e-5);
    common::assert_close("stream b batched", &both[1].latents, &alone_b.latents, 1e-5);
    assert!(!both[0].latents.allclose(&both[1].latents, 1e-3, 1e-3, false));
    assert_eq!(both[1].next.clip_index, 2);
    let mixed = RollingState::new(3, 2);
    let err = pipe
        .generate_clips(&[
            ClipJob { avatar: &a, state: &sa, audio: &audio_a },
            ClipJob { avatar: &b, state: &mixed, audio: &audio_b },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("mixes"), "{err}");
}

#[test]
fn an_avatar_survives_serialisation() {
    let preset = Preset::tiny();
    let detector = common::fixture("mtcnn.py", "mtcnn", &[]).weights;
    let pipe = Pipeline::random(preset.clone(), 4, Placement::cpu(), Some(&detector)).unwrap();
    let a = pipe.prepare_avatar(&portrait()).unwrap();
    let bytes = a.to_bytes().unwrap();
    let b = osa_model::pipeline::Avatar::from_bytes(&bytes, Placement::cpu()).unwrap();
    assert_eq!(a.faces, b.faces);
    assert_eq!(a.reference.crop_box, b.reference.crop_box);
    assert_eq!(a.reference.crop, b.reference.crop);
    assert!(a.latent.equal(&b.latent) && a.face_features.equal(&b.face_features));
    assert_eq!(a.bank.len(), b.bank.len());
    assert!(a.bank.iter().zip(&b.bank).all(|(x, y)| x.equal(y)));
    let audio = Tensor::randn(
        [preset.frames, 50, preset.audio_encoder.n_state],
        (Kind::Float, tch::Device::Cpu),
    );
    let s = RollingState::new(1, 1);
    let x = pipe.generate_clip(&a, &s, &audio).unwrap();
    let y = pipe.generate_clip(&b, &s, &audio).unwrap();
    assert!(x.latents.equal(&y.latents));
    assert!(
        osa_model::pipeline::Avatar::from_bytes(&bytes[..bytes.len() / 2], Placement::cpu())
            .is_err()
    );
    assert!(osa_model::pipeline::Avatar::from_bytes(b"garbage", Placement::cpu()).is_err());
}

#[test]
fn a_portrait_preset_renders_non_square_frames() {
    let preset = Preset::tiny().sized(64, 128);
    let pipe = Pipeline::random(preset.clone(), 3, Placement::cpu(), None).unwrap();
    let avatar = pipe.prepare_avatar(&portrait()).unwrap();
    assert_eq!(avatar.latent.size(), vec![1, 4, 16, 8]);
    assert_eq!(avatar.reference.crop.dimensions(), (64, 128));
    let audio = Tensor::zeros(
        [preset.frames, 50, preset.audio_encoder.n_state],
        (Kind::Float, tch::Device::Cpu),
    );
    let clip = pipe.generate_clip(&avatar, &RollingState::new(1, 1), &audio).unwrap();
    let rgb = pipe.decode(&clip.latents).unwrap();
    assert_eq!(rgb.size(), vec![preset.frames, 128, 64, 3]);
    for name in osa_model::preset::PRESET_NAMES {
        assert!(Preset::by_name(name).is_some(), "{name}");
    }
    assert_eq!(Preset::by_name("echomimic-512x896").map(|p| (p.width, p.height)), Some((512, 896)));
}
