//! The decoder over real gRPC on loopback (tiny preset, seeded random
//! weights, CPU): MP4 files and fMP4 segments checked by ffprobe/ffmpeg,
//! raw frames equal to the embedded pipeline's VAE decode, batched streams
//! equal to each alone, every bad input refused with INVALID_ARGUMENT.

use std::{path::Path, process::Command, time::Duration};

use osa_decoder::{Settings, run};
use osa_model::{device::Placement, pipeline::Pipeline, preset::Preset};
use osa_proto::{
    tensor::{DType, HostTensor},
    v1::{
        ClipTiming, DecodeEnd, DecodeRequest, DecodeResponse, DecodeStart, GeneratedClip,
        VideoEncoding, VideoOutput, decode_request, decode_response,
        decoder_service_client::DecoderServiceClient,
    },
};
use osa_runtime::Shutdown;
use tch::{Kind, Tensor};
use tokio::net::TcpListener;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SEED: u64 = 0;
const FRAMES: usize = 12;
const FPS: u32 = 25;

struct Server {
    url: String,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

fn settings() -> Settings {
    let mut s = Settings::default();
    s.decoder.device = "cpu".into();
    s.decoder.seed = SEED;
    s.grpc.drain_timeout = Duration::from_secs(1);
    s
}

async fn start(s: Settings) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = Shutdown::new();
    tokio::spawn(run(s, listener, shutdown.clone()));
    Server { url, shutdown }
}

async fn status(url: &str) -> Option<ServingStatus> {
    let ch = Channel::from_shared(url.to_owned()).unwrap().connect().await.ok()?;
    let r =
        HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await.ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn client(server: &Server) -> DecoderServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(&server.url).await != Some(ServingStatus::Serving) {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    DecoderServiceClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

/// Seeded latents of clip `clip` of stream `stream`, [12, 4, 8, 8].
fn latents(stream: u64, clip: u64) -> Tensor {
    let p = Preset::tiny();
    let (h, w) = p.latent_size();
    osa_model::scheduler::NoiseGenerator::new(1000 * stream + clip).randn(
        &[p.frames, 4, h, w],
        Kind::Float,
        tch::Device::Cpu,
    )
}

fn start_msg(output: VideoOutput, with_audio: bool, clips_per_segment: u32) -> DecodeRequest {
    DecodeRequest {
        request: Some(decode_request::Request::Start(DecodeStart {
            stream_id: "s".into(),
            fps: FPS,
            output: output as i32,
            clips_per_segment,
            encoding: Some(VideoEncoding { bitrate_kbps: 0 }),
            fast_decoder: false,
            with_audio,
        })),
    }
}

fn clip_tensor(clip: u64, t: &Tensor, real: u32) -> DecodeRequest {
    let values = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
    let dims = t.size().iter().map(|&d| d as usize).collect();
    DecodeRequest {
        request: Some(decode_request::Request::Clip(GeneratedClip {
            timing: Some(ClipTiming {
                clip_index: clip,
                frame_count: FRAMES as u32,
                real_frames: real,
                ..Default::default()
            }),
            latents: Some(HostTensor::from_f32(dims, &values).unwrap().into()),
            unet_seconds: 0.0,
        })),
    }
}

fn clip_msg(stream: u64, clip: u64, real: u32) -> DecodeRequest {
    clip_tensor(clip, &latents(stream, clip), real)
}

fn audio_msg(samples: usize) -> DecodeRequest {
    // A 220 Hz tone, so the Opus track is not silence.
    let pcm: Vec<u8> = (0..samples)
        .flat_map(|i| {
            let v = (f64::sin(i as f64 * 220.0 * std::f64::consts::TAU / 16_000.0) * 8000.0) as i16;
            v.to_le_bytes()
        })
        .collect();
    DecodeRequest { request: Some(decode_request::Request::AudioPcm16le(pcm)) }
}

fn end_msg() -> DecodeRequest {
    DecodeRequest { request: Some(decode_request::Request::End(DecodeEnd {})) }
}

/// Sends `msgs` (then half-closes) and collects every response or the
/// first error.
async fn call(
    c: &mut DecoderServiceClient<Channel>,
    msgs: Vec<DecodeRequest>,
) -> Result<Vec<DecodeResponse>, Status> {
    let mut stream = c.decode(tokio_stream::iter(msgs)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        out.push(r);
    }
    Ok(out)
}

fn ffprobe(path: &Path) -> serde_json::Value {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_streams", "-show_format", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (scripts/setup.sh installs ffmpeg)");
    assert!(out.status.success(), "ffprobe: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ffmpeg_errors(path: &Path) -> String {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .expect("ffmpeg");
    assert!(out.status.success(), "ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stream_of<'a>(probe: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} stream in {probe}"))
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_str().map_or_else(|| v.as_f64().unwrap(), |s| s.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mp4_file_plays_with_audio_in_sync() {
    let server = start(settings()).await;
    let mut c = client(&server).await;
    // Two clips, the last with 8 real frames: 20 frames = 0.8 s at 25 fps;
    // the audio is exactly as long.
    let audio_samples = 16_000 * 20 / FPS as usize;
    let msgs = vec![
        start_msg(VideoOutput::Mp4File, true, 0),
        audio_msg(audio_samples / 2),
        clip_msg(0, 0, 12),
        audio_msg(audio_samples - audio_samples / 2),
        clip_msg(0, 1, 8),
        end_msg(),
    ];
    let out = call(&mut c, msgs).await.unwrap();
    let mut file = Vec::new();
    for (i, r) in out.iter().enumerate() {
        let Some(decode_response::Output::File(chunk)) = &r.output else {
            panic!("expected file chunks, got {r:?}")
        };
        assert_eq!(chunk.offset as usize, file.len());
        assert_eq!(chunk.last, i + 1 == out.len());
        file.extend_from_slice(&chunk.data);
        assert_eq!(
            chunk.total_size as usize,
            if chunk.last { file.len() } else { chunk.total_size as usize }
        );
    }
    assert!(out.last().unwrap().output.is_some());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.mp4");
    std::fs::write(&path, &file).unwrap();
    // Faststart: the index comes before the media data.
    let moov = file.windows(4).position(|w| w == b"moov").unwrap();
    let mdat = file.windows(4).position(|w| w == b"mdat").unwrap();
    assert!(moov < mdat, "moov after mdat");

    let probe = ffprobe(&path);
    let v = stream_of(&probe, "video");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(v["width"], 64);
    assert_eq!(v["height"], 64);
    assert_eq!(v["pix_fmt"], "yuv420p");
    assert_eq!(v["avg_frame_rate"], "25/1");
    assert_eq!(num(&v["nb_read_frames"]), 20.0);
    let a = stream_of(&probe, "audio");
    assert_eq!(a["codec_name"], "opus");
    let video_s = num(&v["duration"]);
    let audio_s = num(&a["duration"]);
    assert!((video_s - 0.8).abs() < 1e-3, "video {video_s} s");
    assert!(
        (audio_s - video_s).abs() <= 1.0 / f64::from(FPS),
        "audio {audio_s} s, video {video_s} s"
    );
    assert_eq!(ffmpeg_errors(&path), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fmp4_segments_concatenate_into_a_clean_stream() {
    let server = start(settings()).await;
    let mut c = client(&server).await;
    let audio_samples = 16_000 * 36 / FPS as usize;
    let msgs = vec![
        start_msg(VideoOutput::Fmp4Segments, true, 2),
        audio_msg(audio_samples),
        clip_msg(0, 0, 12),
        clip_msg(0, 1, 12),
        clip_msg(0, 2, 12),
        end_msg(),
    ];
    let out = call(&mut c, msgs).await.unwrap();
    let segments: Vec<_> = out
        .iter()
        .map(|r| match &r.output {
            Some(decode_response::Output::Segment(s)) => s.clone(),
            other => panic!("expected segments, got {other:?}"),
        })
        .collect();
    assert_eq!(segments.len(), 2, "clips 0-1, then clip 2 at end");
    assert!(!segments[0].init.is_empty(), "init with the first segment");
    assert!(segments[1].init.is_empty());
    assert_eq!((segments[0].first_clip, segments[0].clip_count), (0, 2));
    assert_eq!((segments[1].first_clip, segments[1].clip_count), (2, 1));
    assert!((segments[1].start_seconds - 24.0 / 25.0).abs() < 1e-9);
    let mut bytes = segments[0].init.clone();
    for s in &segments {
        bytes.extend_from_slice(&s.media);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.mp4");
    std::fs::write(&path, &bytes).unwrap();
    let probe = ffprobe(&path);
    let v = stream_of(&probe, "video");
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(num(&v["nb_read_frames"]), 36.0);
    assert_eq!(stream_of(&probe, "audio")["codec_name"], "opus");
    assert_eq!(ffmpeg_errors(&path), "");
    // The audio (1.44 s in) ends within one frame of the video.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries", "packet=pts_time"])
        .args(["-of", "csv=p=0"])
        .arg(&path)
        .output()
        .unwrap();
    // Packet durations are not stored per packet: the end is the last
    // packet's pts plus the (constant, 20 ms) packet spacing.
    let pts: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    assert!(pts.len() > 2, "audio packets: {pts:?}");
    let end = pts[pts.len() - 1] + (pts[1] - pts[0]);
    assert!(
        (end - 1.44).abs() <= 1.0 / f64::from(FPS),
        "audio ends at {end} s: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn raw_frames(out: &[DecodeResponse]) -> Vec<HostTensor> {
    out.iter()
        .map(|r| match &r.output {
            Some(decode_response::Output::Frames(f)) => {
                HostTensor::try_from(f.rgb.clone().unwrap()).unwrap()
            }
            other => panic!("expected frames, got {other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_equal_the_pipeline_decode() {
    let server = start(settings()).await;
    let mut c = client(&server).await;
    let msgs = vec![
        start_msg(VideoOutput::RawFrames, false, 0),
        clip_msg(0, 0, 12),
        clip_msg(0, 1, 5),
        end_msg(),
    ];
    let out = call(&mut c, msgs).await.unwrap();
    let frames = raw_frames(&out);
    assert_eq!(frames.len(), 2);
    let pipe = Pipeline::random(Preset::tiny(), SEED, Placement::cpu(), None).unwrap();
    for (clip, (got, real)) in frames.iter().zip([12usize, 5]).enumerate() {
        assert_eq!(got.dtype(), DType::U8);
        assert_eq!(got.shape(), [real, 64, 64, 3]);
        let want = pipe.decode(&latents(0, clip as u64)).unwrap().narrow(0, 0, real as i64);
        let want = Vec::<u8>::try_from(want.flatten(0, -1)).unwrap();
        assert_eq!(got.data(), &want[..], "clip {clip}");
        let t = out[clip].timing.as_ref().unwrap();
        assert_eq!(
            (t.clip_index, t.first_frame, t.real_frames),
            (clip as u64, 12 * clip as u64, real as u32)
        );
    }
    // Different latents give different frames (the check can fail).
    assert_ne!(frames[0].data(), frames[1].data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_streams_equal_each_alone() {
    let mut s = settings();
    // A long batch window so that the two streams' clips meet in one batch.
    s.decoder.max_batch_wait = Duration::from_millis(300);
    let server = start(s).await;
    let c = client(&server).await;
    let one = |stream: u64| {
        let mut c = c.clone();
        async move {
            let msgs = vec![
                start_msg(VideoOutput::RawFrames, false, 0),
                clip_msg(stream, 0, 12),
                clip_msg(stream, 1, 12),
                end_msg(),
            ];
            raw_frames(&call(&mut c, msgs).await.unwrap())
        }
    };
    let (a, b) = tokio::join!(one(1), one(2));
    let alone_a = one(1).await;
    let alone_b = one(2).await;
    for (x, y) in a.iter().zip(&alone_a).chain(b.iter().zip(&alone_b)) {
        let diff = x.data().iter().zip(y.data()).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
        assert!(diff <= 1, "batched differs from alone by {diff}");
    }
    assert_ne!(a[0].data(), b[0].data());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_invalid_argument() {
    let server = start(settings()).await;
    let mut c = client(&server).await;
    let raw = || start_msg(VideoOutput::RawFrames, false, 0);
    let bad_start = |f: &dyn Fn(&mut DecodeStart)| {
        let mut m = raw();
        if let Some(decode_request::Request::Start(s)) = &mut m.request {
            f(s);
        }
        m
    };
    let wrong_shape = Tensor::zeros([12, 4, 8, 4], (Kind::Float, tch::Device::Cpu));
    let mut wrong_dtype = clip_msg(0, 0, 12);
    if let Some(decode_request::Request::Clip(c)) = &mut wrong_dtype.request {
        let l = c.latents.as_mut().unwrap();
        l.dtype = DType::U8 as i32;
        l.data.truncate(l.data.len() / 4);
    }
    let mut wrong_size = clip_msg(0, 0, 12);
    if let Some(decode_request::Request::Clip(c)) = &mut wrong_size.request {
        c.latents.as_mut().unwrap().data.pop();
    }
    let nan = Tensor::full([12, 4, 8, 8], f64::NAN, (Kind::Float, tch::Device::Cpu));
    let cases: Vec<(&str, Vec<DecodeRequest>, &str)> = vec![
        ("no start", vec![clip_msg(0, 0, 12)], "start"),
        ("repeated start", vec![raw(), raw()], "start"),
        ("unknown output", vec![bad_start(&|s| s.output = 9)], "start.output"),
        ("unset output", vec![bad_start(&|s| s.output = 0)], "start.output"),
        ("bad fps", vec![bad_start(&|s| s.fps = 60)], "start.fps"),
        ("audio with raw", vec![bad_start(&|s| s.with_audio = true)], "start.with_audio"),
        ("wrong shape", vec![raw(), clip_tensor(0, &wrong_shape, 12)], "clip.latents"),
        ("wrong dtype", vec![raw(), wrong_dtype], "clip.latents"),
        ("wrong byte size", vec![raw(), wrong_size], "clip.latents"),
        ("nan", vec![raw(), clip_tensor(0, &nan, 12)], "clip.latents"),
        ("first clip is not 0", vec![raw(), clip_msg(0, 1, 12)], "clip.timing.clip_index"),
        (
            "missing clip",
            vec![raw(), clip_msg(0, 0, 12), clip_msg(0, 2, 12)],
            "clip.timing.clip_index",
        ),
        (
            "out of order",
            vec![raw(), clip_msg(0, 0, 12), clip_msg(0, 1, 12), clip_msg(0, 1, 12)],
            "clip.timing.clip_index",
        ),
        (
            "clip after the short last clip",
            vec![raw(), clip_msg(0, 0, 5), clip_msg(0, 1, 12)],
            "clip.timing.clip_index",
        ),
        ("too many real frames", vec![raw(), clip_msg(0, 0, 13)], "clip.timing.real_frames"),
        ("audio without with_audio", vec![raw(), audio_msg(10)], "audio_pcm16le"),
        ("closed before end", vec![raw(), clip_msg(0, 0, 12)], "end"),
    ];
    for (name, msgs, field) in cases {
        let e = call(&mut c, msgs).await.expect_err(name);
        assert_eq!(e.code(), Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(field), "{name}: {:?} does not name {field}", e.message());
    }
    // Odd PCM byte counts are refused too.
    let mut odd = audio_msg(3);
    if let Some(decode_request::Request::AudioPcm16le(p)) = &mut odd.request {
        p.pop();
    }
    let e = call(&mut c, vec![start_msg(VideoOutput::Mp4File, true, 0), odd]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("audio_pcm16le"));
    // The service still works afterwards.
    let ok = call(&mut c, vec![raw(), clip_msg(0, 0, 12), end_msg()]).await.unwrap();
    assert_eq!(ok.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_decoder_is_selectable_per_request() {
    let server = start(settings()).await;
    let mut c = client(&server).await;
    let mut fast = start_msg(VideoOutput::RawFrames, false, 0);
    if let Some(decode_request::Request::Start(s)) = &mut fast.request {
        s.fast_decoder = true;
    }
    let got = raw_frames(&call(&mut c, vec![fast, clip_msg(0, 0, 12), end_msg()]).await.unwrap());
    let full = raw_frames(
        &call(
            &mut c,
            vec![start_msg(VideoOutput::RawFrames, false, 0), clip_msg(0, 0, 12), end_msg()],
        )
        .await
        .unwrap(),
    );
    assert_eq!(got[0].shape(), [12, 64, 64, 3]);
    assert_ne!(got[0].data(), full[0].data(), "fast_decoder must use the TAESD decoder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_decodes_two_streams_in_one_batch() {
    use osa_decoder::worker::{DecodeJob, Worker, WorkerConfig};
    let worker = Worker::start(WorkerConfig {
        weights: None,
        seed: SEED,
        fast_decoder: None,
        placement: Placement::cpu(),
        queue_capacity: 4,
        max_batch: 2,
        max_batch_wait: Duration::from_secs(5),
    })
    .unwrap();
    worker.ready().await.unwrap();
    let job = |stream: u64| {
        let t = latents(stream, 0);
        DecodeJob {
            latents: Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
            shape: [12, 4, 8, 8],
            fast: false,
            enqueued: std::time::Instant::now(),
        }
    };
    // A lone open stream never waits for a batch that cannot fill.
    let lone = worker.open_stream();
    let started = std::time::Instant::now();
    let alone = worker.decode(job(1)).await.unwrap();
    assert_eq!(alone.batch_size, 1);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "a lone stream waited {:?} for a batch (max_batch_wait 5 s)",
        started.elapsed()
    );
    // With two streams open the first clip waits for the second.
    let _other = worker.open_stream();
    let (a, b) = tokio::join!(worker.decode(job(1)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        worker.decode(job(2)).await
    });
    drop(lone);
    let (a, b) = (a.unwrap(), b.unwrap());
    // Both arrived within the (long) window: one batch of 2, not two of 1.
    assert_eq!((a.batch_size, b.batch_size), (2, 2));
    let pipe = Pipeline::random(Preset::tiny(), SEED, Placement::cpu(), None).unwrap();
    for (got, stream) in [(a, 1), (b, 2)] {
        let want =
            Vec::<u8>::try_from(pipe.decode(&latents(stream, 0)).unwrap().flatten(0, -1)).unwrap();
        let diff = got.rgb.iter().zip(&want).map(|(p, q)| p.abs_diff(*q)).max().unwrap();
        assert!(diff <= 1, "stream {stream}: batched differs from alone by {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_limit_are_resource_exhausted() {
    let mut s = settings();
    s.decoder.max_streams = 1;
    let server = start(s).await;
    let mut c = client(&server).await;
    // Hold one stream open (start sent, nothing else yet).
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start_msg(VideoOutput::RawFrames, false, 0)).await.unwrap();
    let mut held =
        c.decode(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let e = call(&mut c, vec![start_msg(VideoOutput::RawFrames, false, 0)]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.metadata().get("retry-after-ms").is_some());
    // The held stream still works, and once it ends the slot is free again.
    tx.send(clip_msg(0, 0, 12)).await.unwrap();
    tx.send(end_msg()).await.unwrap();
    assert!(held.message().await.unwrap().is_some());
    assert!(held.message().await.unwrap().is_none());
    drop(tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&mut c, vec![start_msg(VideoOutput::RawFrames, false, 0), end_msg()]).await;
        match r {
            Ok(out) => {
                assert!(out.is_empty());
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_frees_its_stream() {
    let mut s = settings();
    s.decoder.max_streams = 1;
    let server = start(s).await;
    let mut c = client(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start_msg(VideoOutput::Mp4File, false, 0)).await.unwrap();
    tx.send(clip_msg(0, 0, 12)).await.unwrap();
    let held = c.decode(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
    // Leave without `end`: drop both directions.
    drop(held);
    drop(tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&mut c, vec![start_msg(VideoOutput::RawFrames, false, 0), end_msg()]).await;
        match r {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(tokio::time::Instant::now() < deadline, "the left stream kept its slot");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
}
