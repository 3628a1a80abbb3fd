//! The embedded render's latents equal the cluster stages', clip for clip,
//! bit for bit: the audio-encoder (EncodeFile) and the generator
//! (PrepareReference + Generate) started in-process on loopback as in
//! production, with their default seeds and devices, fed the same portrait
//! and speech the embedded render gets.

use std::{path::PathBuf, time::Duration};

use osa_audio_encoder::{
    file::service_clips,
    model::{ModelConfig, WindowModel},
    recipe::{Layout, WindowPlan},
};
use osa_cli::embedded::{EmbeddedOptions, RANDOM_WEIGHTS_SEED, render_latents};
use osa_proto::{
    tensor::HostTensor,
    v1::{
        ClipFeatures, EncodeFileRequest, FeatureOptions, GenerateRequest, GenerateStart,
        GeneratedClip, PrepareReferenceRequest, SamplingOptions,
        audio_encoder_service_client::AudioEncoderServiceClient, generate_request,
        generator_service_client::GeneratorServiceClient,
    },
};
use osa_runtime::Shutdown;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The stream's noise seed (not the weights' seed, which stays the default).
const STREAM_SEED: u64 = 42;
/// Seconds of speech: 63 frames at 25 fps, so the last of the 6 clips is
/// padded (3 real frames of 12).
const SECONDS: f64 = 2.5;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn detector() -> PathBuf {
    let p = root().join("target/weights/face_detector.safetensors");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn portrait() -> Vec<u8> {
    std::fs::read(root().join("target/samples/portrait.png")).expect("run scripts/setup.sh")
}

/// The first [`SECONDS`] of the sample speech as a 16 kHz PCM16 WAV file.
fn speech_wav() -> Vec<u8> {
    let bytes = std::fs::read(root().join("target/samples/speech.wav")).expect("setup.sh");
    let limits = osa_audio::DecodeLimits { max_duration: Duration::from_secs(60) };
    let audio = osa_audio::decode_file(&bytes, Some("wav"), &limits).unwrap();
    let n = (SECONDS * 16_000.0) as usize;
    let pcm: Vec<u8> = audio.samples[..n]
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0).round() as i16).to_le_bytes())
        .collect();
    let mut wav = Vec::with_capacity(44 + pcm.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + pcm.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(pcm.len() as u32).to_le_bytes());
    wav.extend_from_slice(&pcm);
    wav
}

async fn wait_serving(url: &str) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_owned()).unwrap().connect().await {
            let r = HealthClient::new(ch.clone())
                .check(HealthCheckRequest { service: String::new() })
                .await;
            if r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                return ch;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never became SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// The cluster's clips: EncodeFile on the audio-encoder, then one Generate
/// stream on the generator.
async fn cluster(wav: Vec<u8>, shutdown: &Shutdown) -> (Vec<ClipFeatures>, Vec<GeneratedClip>) {
    // Both services with their defaults (device auto, seed 0, tiny preset),
    // as `osa serve all` starts them; only the listeners differ.
    let mut a = osa_audio_encoder::Settings::default();
    a.metrics.enabled = false;
    let (la, audio_url) = listener().await;
    tokio::spawn(osa_audio_encoder::run(a, la, shutdown.clone()));
    let mut g = osa_generator::Settings::default();
    g.metrics.enabled = false;
    g.generator.face_detector = detector().display().to_string();
    let (lg, gen_url) = listener().await;
    tokio::spawn(osa_generator::run(g, lg, shutdown.clone()));

    let mut audio = AudioEncoderServiceClient::new(wait_serving(&audio_url).await)
        .max_decoding_message_size(64 << 20);
    let mut out = audio
        .encode_file(EncodeFileRequest {
            audio: wav,
            format_hint: "wav".into(),
            options: Some(FeatureOptions { fps: 25, ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner();
    let mut features = Vec::new();
    while let Some(c) = out.message().await.unwrap() {
        features.push(c);
    }

    let mut generator = GeneratorServiceClient::new(wait_serving(&gen_url).await)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    generator
        .prepare_reference(PrepareReferenceRequest {
            avatar_id: "portrait".into(),
            image: portrait(),
        })
        .await
        .unwrap();
    let start = GenerateRequest {
        request: Some(generate_request::Request::Start(GenerateStart {
            stream_id: "parity".into(),
            avatar_id: "portrait".into(),
            sampling: Some(SamplingOptions { steps: 1, seed: STREAM_SEED }),
            resume: false,
        })),
    };
    let msgs: Vec<GenerateRequest> = std::iter::once(start)
        .chain(
            features
                .iter()
                .cloned()
                .map(|c| GenerateRequest { request: Some(generate_request::Request::Clip(c)) }),
        )
        .collect();
    let mut out = generator.generate(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    let mut clips = Vec::new();
    while let Some(c) = out.message().await.unwrap() {
        clips.push(c);
    }
    (features, clips)
}

fn f32s(t: &osa_proto::v1::Tensor) -> Vec<f32> {
    let t = HostTensor::try_from(t.clone()).unwrap();
    assert_eq!(t.dtype(), osa_proto::tensor::DType::F32, "the wire carries exact f32");
    t.to_f32_vec().unwrap()
}

/// Bitwise comparison (NaN-safe, -0 != +0), naming the first difference.
fn assert_bits_equal(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let diffs = got.iter().zip(want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    if diffs > 0 {
        let max = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        panic!("{what}: {diffs} of {} values differ (max abs diff {max:e})", got.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_latents_equal_the_cluster_stages_bit_for_bit() {
    let wav = speech_wav();
    let image = image::load_from_memory(&portrait()).unwrap().to_rgb8();
    let options = EmbeddedOptions {
        seed: STREAM_SEED,
        face_detector: Some(detector()),
        ..EmbeddedOptions::new(25)
    };

    let shutdown = Shutdown::new();
    let (features, cluster_clips) = cluster(wav.clone(), &shutdown).await;

    let (embedded, features_here) = tokio::task::spawn_blocking({
        let (wav, image, options) = (wav.clone(), image.clone(), options.clone());
        move || {
            let mut calls = Vec::new();
            let render = render_latents(&image, &wav, &options, |done, total| {
                calls.push((done, total));
            })
            .unwrap();
            assert_eq!(calls.last(), Some(&(6, 6)), "progress per clip: {calls:?}");
            // The features it generated from: the audio-encoder's file
            // recipe (what Embedded::audio_clips calls) with its defaults.
            let model = WindowModel::load(&ModelConfig {
                weights: None,
                preset: "tiny".into(),
                seed: RANDOM_WEIGHTS_SEED,
                placement: osa_model::device::Placement::auto(),
                plan: WindowPlan::default(),
            })
            .unwrap();
            let limits = osa_audio::DecodeLimits { max_duration: Duration::from_secs(60) };
            let samples = osa_audio::decode_file(&wav, None, &limits).unwrap().samples;
            let layout = Layout { fps: 25, frames_per_clip: 12 };
            (render, service_clips(&model, &samples, layout).unwrap().0)
        }
    })
    .await
    .unwrap();
    shutdown.trigger();

    assert_eq!(embedded.frames, 63);
    assert_eq!(embedded.latent_shape, [12, 4, 8, 8]);
    assert_eq!(features.len(), 6);
    assert_eq!(features_here.len(), 6);
    for (i, (wire, here)) in features.iter().zip(&features_here).enumerate() {
        let timing = wire.timing.as_ref().unwrap();
        assert_eq!((timing.clip_index, timing.real_frames as usize), (i as u64, here.real_frames));
        let here = &here.features;
        assert_bits_equal(
            &format!("clip {i} audio features"),
            here,
            &f32s(wire.features.as_ref().unwrap()),
        );
    }
    assert_eq!(cluster_clips.len(), embedded.clips.len());
    for (i, (wire, here)) in cluster_clips.iter().zip(&embedded.clips).enumerate() {
        assert_eq!(wire.timing.as_ref().unwrap().clip_index, i as u64);
        assert_bits_equal(
            &format!("clip {i} latents"),
            here,
            &f32s(wire.latents.as_ref().unwrap()),
        );
    }
    // Not trivially equal: the clips move.
    assert_ne!(embedded.clips[0], embedded.clips[1]);
}
