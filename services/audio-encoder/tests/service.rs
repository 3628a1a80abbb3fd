//! The stage over real gRPC on loopback: file and live paths agree, clips
//! stream as soon as they are ready, streams share forward passes, overload
//! and cancellation, and metrics.

mod common;

use std::time::Duration;

use common::{Msg, Rng, Server};
use osa_proto::{
    tensor::{DType, HostTensor},
    v1::{EncodeEnd, EncodeReset, EncodeStreamRequest, FeatureOptions},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn speech() -> (tempfile::TempDir, std::path::PathBuf, Vec<f32>) {
    let dir = tempfile::tempdir().unwrap();
    let wav = common::speech_wav(dir.path()).unwrap();
    let samples = common::decode(&wav);
    (dir, wav, samples)
}

fn start(fps: u32) -> EncodeStreamRequest {
    common::msg(Msg::Start(FeatureOptions { fps, frames_per_clip: 0, normalize_loudness: false }))
}

/// `samples` as PCM16 chunks of random sizes (0 .. 2 s, whole samples).
fn chunked(samples: &[f32], seed: u64) -> Vec<EncodeStreamRequest> {
    let bytes = common::pcm16(samples);
    let mut rng = Rng(seed);
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = match rng.below(4) {
            0 => 2 * rng.below(40) as usize,           // a few samples, or none
            1 => 2 * (1 + rng.below(640)) as usize,    // up to 40 ms
            _ => 2 * (1 + rng.below(32_000)) as usize, // up to 2 s
        };
        let end = (at + n).min(bytes.len());
        out.push(common::msg(Msg::Pcm16le(bytes[at..end].to_vec())));
        at = end;
    }
    out
}

#[tokio::test]
async fn live_chunks_equal_the_file_and_metrics_count() {
    let handle = osa_runtime::metrics::install();
    let server = Server::start(common::settings()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let (_dir, _wav, samples) = speech();
    // The file path on the same PCM16 signal the live path gets.
    let pcm = common::pcm16(&samples);
    let as_f32: Vec<f32> = pcm
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    let wav = wav_bytes(&as_f32);
    for fps in [24, 25, 30] {
        let file = common::encode_file(&mut client, wav.clone(), "wav", fps).await.unwrap();
        let seconds = as_f32.len() as f64 / 16_000.0;
        let real = ((seconds * f64::from(fps)).round() as u32).max(1);
        assert_eq!(file.len() as u32, real.div_ceil(12), "fps {fps}");
        for (i, c) in file.iter().enumerate() {
            let t = c.timing.unwrap();
            assert_eq!((t.clip_index, t.first_frame, t.frame_count), (i as u64, 12 * i as u64, 12));
            assert!((t.start_seconds - (12 * i) as f64 / f64::from(fps)).abs() < 1e-9);
            assert_eq!(c.last, i + 1 == file.len());
            let f = HostTensor::try_from(c.features.clone().unwrap()).unwrap();
            assert_eq!((f.dtype(), f.shape()), (DType::F32, &[12, 50, 16][..]));
        }
        let last = file.last().unwrap().timing.unwrap();
        assert_eq!(last.real_frames, real - 12 * (file.len() as u32 - 1));
        let want = common::features(&file);
        for seed in [1, 2, 3] {
            let mut reqs = vec![start(fps)];
            reqs.extend(chunked(&samples, seed + u64::from(fps)));
            reqs.push(common::msg(Msg::End(EncodeEnd {})));
            let live = common::encode_stream(&mut client, reqs).await.unwrap();
            assert_eq!(live.len(), file.len());
            for (a, b) in live.iter().zip(&file) {
                assert_eq!(a.timing, b.timing);
                assert_eq!(a.last, b.last);
            }
            let diff = common::max_abs_diff(&common::features(&live), &want);
            assert!(diff < 1e-5, "fps {fps} seed {seed}: max diff {diff}");
        }
    }
    let text = handle.render();
    for name in [
        "osa_audio_encoder_clips_total",
        "osa_audio_encoder_audio_seconds_total",
        "osa_audio_encoder_queue_size",
        "osa_audio_encoder_encode_seconds",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    server.stop().await.unwrap();
}

/// A 16-bit PCM mono 16 kHz WAV file.
fn wav_bytes(samples: &[f32]) -> Vec<u8> {
    let data = common::pcm16(samples);
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&16_000u32.to_le_bytes());
    b.extend_from_slice(&32_000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    b
}

#[tokio::test]
async fn live_clips_come_before_the_end_and_reset_restarts_the_audio() {
    let server = Server::start(common::settings()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let (_dir, _wav, samples) = speech();
    let (tx, rx) = mpsc::channel(16);
    let mut out = client.encode_stream(ReceiverStream::new(rx)).await.unwrap().into_inner();
    tx.send(start(25)).await.unwrap();
    // Clip 0 covers 0..0.48 s; its look-ahead ends well before 1.6 s.
    tx.send(common::msg(Msg::Pcm16le(common::pcm16(&samples[..25_600])))).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), out.message())
        .await
        .expect("clip 0 arrives without `end`")
        .unwrap()
        .unwrap();
    assert_eq!(first.timing.unwrap().clip_index, 0);
    assert!(!first.last);
    assert!((first.audio_seconds - 1.6).abs() < 1e-9);
    // Reset: the partial clip is dropped; the next audio starts clip 1.
    tx.send(common::msg(Msg::Reset(EncodeReset {}))).await.unwrap();
    tx.send(common::msg(Msg::Pcm16le(common::pcm16(&samples[..7_680])))).await.unwrap();
    tx.send(common::msg(Msg::End(EncodeEnd {}))).await.unwrap();
    let mut rest = Vec::new();
    while let Some(c) = out.message().await.unwrap() {
        rest.push(c);
    }
    assert_eq!(rest.len(), 1);
    let t = rest[0].timing.unwrap();
    assert_eq!((t.clip_index, t.first_frame, t.real_frames), (1, 12, 12));
    assert!(rest[0].last);
    // The segment after the reset equals a fresh stream of the same audio.
    let fresh = common::encode_stream(
        &mut client,
        vec![
            start(25),
            common::msg(Msg::Pcm16le(common::pcm16(&samples[..7_680]))),
            common::msg(Msg::End(EncodeEnd {})),
        ],
    )
    .await
    .unwrap();
    assert_eq!(common::features(&rest), common::features(&fresh));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn concurrent_streams_share_forward_passes_and_f16_is_close() {
    let mut settings = common::settings();
    settings.audio_encoder.max_batch = 4;
    settings.audio_encoder.max_batch_wait = Duration::from_millis(400);
    settings.audio_encoder.dtype = osa_audio_encoder::settings::WireDType::F16;
    let server = Server::start(settings).await.unwrap();
    let (_dir, wav, samples) = speech();
    let bytes = std::fs::read(&wav).unwrap();
    let mut calls = Vec::new();
    for _ in 0..4 {
        let mut client = server.client().await.unwrap();
        let bytes = bytes.clone();
        calls.push(tokio::spawn(async move {
            common::encode_file(&mut client, bytes, "wav", 25).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.unwrap());
    }
    let merged = server.stats.max_requests_per_forward.load(std::sync::atomic::Ordering::SeqCst);
    assert!(merged >= 2, "requests of concurrent calls never shared a forward pass ({merged})");
    let f = HostTensor::try_from(results[0][0].features.clone().unwrap()).unwrap();
    assert_eq!(f.dtype(), DType::F16);
    server.stop().await.unwrap();

    let server = Server::start(common::settings()).await.unwrap();
    let mut client = server.client().await.unwrap();
    let exact = common::encode_file(&mut client, bytes, "wav", 25).await.unwrap();
    let (a, b) = (common::features(&results[0]), common::features(&exact));
    assert!(common::rel_l2(&a, &b) < 2e-3, "f16 vs f32: {}", common::rel_l2(&a, &b));
    for r in &results[1..] {
        assert!(common::max_abs_diff(&common::features(r), &a) < 1e-2);
    }
    assert!(samples.len() > 16_000);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn over_capacity_is_resource_exhausted_and_cancellation_stops_work() {
    let mut settings = common::settings();
    settings.audio_encoder.max_streams = 1;
    settings.audio_encoder.max_batch = 2;
    let server = Server::start(settings).await.unwrap();
    let mut client = server.client().await.unwrap();

    // A live stream holds the only slot.
    let (tx, rx) = mpsc::channel(4);
    tx.send(start(25)).await.unwrap();
    let held = client.encode_stream(ReceiverStream::new(rx)).await.unwrap();
    let err =
        common::encode_file(&mut client, wav_bytes(&[0.1; 16_000]), "wav", 25).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("audio_encoder.max_streams"), "{}", err.message());
    drop(tx);
    drop(held);

    // A long file: read one clip, then go away. The call's work stops (its
    // slot frees up) long before the whole file is encoded.
    let seconds = 300;
    let noise: Vec<f32> = {
        let mut rng = Rng(9);
        (0..seconds * 16_000).map(|_| (rng.below(2000) as f32 / 1000.0 - 1.0) * 0.3).collect()
    };
    let total_windows = (seconds * 50 / 25) as u64;
    let before = server.stats.windows_encoded.load(std::sync::atomic::Ordering::SeqCst);
    let mut client2 = server.client().await.unwrap();
    let req = osa_proto::v1::EncodeFileRequest {
        audio: wav_bytes(&noise),
        format_hint: "wav".into(),
        options: common::options(25),
    };
    let mut stream = client2.encode_file(req).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
    drop(client2);
    // The slot is free once the call's task has stopped.
    common::wait_until("the cancelled call to end", Duration::from_secs(30), || {
        let mut c = client.clone();
        async move {
            common::encode_file(&mut c, wav_bytes(&[0.1; 8_000]), "wav", 25).await.is_ok()
        }
    })
    .await
    .unwrap();
    let done = server.stats.windows_encoded.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert!(done < total_windows / 2, "{done} of {total_windows} windows encoded after cancel");
    server.stop().await.unwrap();
}
