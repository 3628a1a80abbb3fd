//! The generator over real gRPC on loopback (tiny preset, seeded random
//! weights, the real MTCNN), with the in-memory store and with a real
//! redis-server: latents equal the embedded pipeline's, replicas share
//! streams through Redis, races lose cleanly, faults are named.

use std::{path::PathBuf, time::Duration};

use osa_generator::{Settings, run};
use osa_model::{device::Placement, pipeline::Pipeline, preset::Preset, rolling::RollingState};
use osa_proto::{
    tensor::HostTensor,
    v1::{
        ClipFeatures, ClipTiming, GenerateRequest, GenerateStart, GeneratedClip,
        PrepareReferenceRequest, SamplingOptions, generate_request,
        generator_service_client::GeneratorServiceClient,
    },
};
use osa_runtime::{Shutdown, testkit::RedisServer};
use tch::{Kind, Tensor};
use tokio::net::TcpListener;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const SEED: u64 = 0;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn detector() -> PathBuf {
    let p = root().join("target/weights/face_detector.safetensors");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn portrait_bytes() -> Vec<u8> {
    std::fs::read(root().join("target/samples/portrait.png")).expect("run scripts/setup.sh")
}

fn settings(redis: Option<&RedisServer>) -> Settings {
    let mut s = Settings::default();
    s.generator.face_detector = detector().display().to_string();
    s.generator.device = "cpu".into();
    s.generator.seed = SEED;
    s.generator.redis_url = redis.map(RedisServer::url).unwrap_or_default();
    s.generator.redis_timeout = Duration::from_millis(500);
    s.grpc.drain_timeout = Duration::from_secs(1);
    s
}

struct Server {
    url: String,
    shutdown: Shutdown,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
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

async fn wait_for(url: &str, want: ServingStatus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while status(url).await != Some(want) {
        assert!(tokio::time::Instant::now() < deadline, "{url} never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(server: &Server) -> GeneratorServiceClient<Channel> {
    wait_for(&server.url, ServingStatus::Serving).await;
    GeneratorServiceClient::connect(server.url.clone())
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20)
}

fn features(clip: u64) -> Tensor {
    let p = Preset::tiny();
    osa_model::scheduler::NoiseGenerator::new(100 + clip).randn(
        &[p.frames, 50, p.audio_encoder.n_state],
        Kind::Float,
        tch::Device::Cpu,
    )
}

fn clip_msg(clip: u64, last: bool) -> GenerateRequest {
    let f = features(clip);
    let values = Vec::<f32>::try_from(f.flatten(0, -1)).unwrap();
    let dims = f.size().iter().map(|&d| d as usize).collect();
    GenerateRequest {
        request: Some(generate_request::Request::Clip(ClipFeatures {
            timing: Some(ClipTiming {
                clip_index: clip,
                frame_count: 12,
                real_frames: 12,
                ..Default::default()
            }),
            features: Some(HostTensor::from_f32(dims, &values).unwrap().into()),
            last,
            audio_seconds: 0.0,
        })),
    }
}

fn start_msg(stream: &str, resume: bool) -> GenerateRequest {
    GenerateRequest {
        request: Some(generate_request::Request::Start(GenerateStart {
            stream_id: stream.into(),
            avatar_id: "astronaut".into(),
            sampling: Some(SamplingOptions { steps: 1, seed: 42 }),
            resume,
        })),
    }
}

/// Sends `start` then the clips; returns what came back (or the status).
async fn generate(
    c: &mut GeneratorServiceClient<Channel>,
    msgs: Vec<GenerateRequest>,
) -> Result<Vec<GeneratedClip>, tonic::Status> {
    let mut out = c.generate(tokio_stream::iter(msgs)).await?.into_inner();
    let mut clips = Vec::new();
    while let Some(m) = out.message().await? {
        clips.push(m);
    }
    Ok(clips)
}

fn latents(c: &GeneratedClip) -> Tensor {
    let t = HostTensor::try_from(c.latents.clone().unwrap()).unwrap();
    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&t.to_f32_vec().unwrap()).view(dims.as_slice())
}

/// The embedded pipeline's latents for clips 0..n of the test stream.
fn embedded(n: u64) -> Vec<Tensor> {
    embedded_with(42, n)
}

fn embedded_with(seed: u64, n: u64) -> Vec<Tensor> {
    let pipe = Pipeline::random(Preset::tiny(), SEED, Placement::cpu(), Some(&detector())).unwrap();
    let img = image::load_from_memory(&portrait_bytes()).unwrap().to_rgb8();
    let avatar = pipe.prepare_avatar(&img).unwrap();
    let mut state = RollingState::new(seed, 1);
    (0..n)
        .map(|i| {
            let out = pipe.generate_clip(&avatar, &state, &features(i)).unwrap();
            // Through the bytes, as the service's context store carries it:
            // the in-memory state's latents keep the UNet output's
            // channels-last strides, with which libtorch picks other conv
            // kernels for the next clip (f32 rounding differences, ~1e-5).
            state =
                RollingState::from_bytes(&out.next.to_bytes().unwrap(), tch::Device::Cpu).unwrap();
            out.latents
        })
        .collect()
}

async fn prepare(c: &mut GeneratorServiceClient<Channel>) {
    let r = c
        .prepare_reference(PrepareReferenceRequest {
            avatar_id: "astronaut".into(),
            image: portrait_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.faces_found, 1);
    assert_eq!((r.image_width, r.image_height), (512, 512));
}

/// A clip that ran alone through the UNet equals the embedded pipeline's bit
/// for bit.
fn assert_same(got: &[GeneratedClip], want: &[Tensor]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.timing.as_ref().unwrap().clip_index, i as u64);
        let (g, w) = (latents(g), w.to_kind(Kind::Float));
        let err = f64::try_from((&g - &w).abs().max()).unwrap();
        assert!(g.equal(&w), "clip {i}: not bitwise equal (max abs diff {err:e})");
    }
}

/// Clips batched with other streams' run through the UNet at another batch
/// size, with which libtorch's kernels sum in another order: equal to f32
/// rounding (seen: ~3e-6 on the first clip, ~3e-5 after rolling), not bitwise.
fn assert_close(got: &[GeneratedClip], want: &[Tensor]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.timing.as_ref().unwrap().clip_index, i as u64);
        let g = latents(g);
        let err = f64::try_from((&g - w).abs().max()).unwrap();
        let scale = f64::try_from(w.abs().max()).unwrap();
        assert!(err <= 1e-5 * (1.0 + scale) * 10.0, "clip {i}: max abs diff {err} (scale {scale})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latents_equal_the_embedded_pipeline() {
    let server = start(settings(None)).await;
    let mut c = client(&server).await;
    prepare(&mut c).await;
    let again = c
        .prepare_reference(PrepareReferenceRequest {
            avatar_id: "astronaut".into(),
            image: portrait_bytes(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.cached, "the same image is not prepared twice");
    let got = generate(
        &mut c,
        vec![start_msg("s1", false), clip_msg(0, false), clip_msg(1, false), clip_msg(2, true)],
    )
    .await
    .unwrap();
    assert_same(&got, &embedded(3));
    // The finished stream was forgotten: a resume names it.
    let err = generate(&mut c, vec![start_msg("s1", true), clip_msg(3, false)]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("stream \"s1\""), "{}", err.message());
}

/// The raw bytes of a clip's latents (what the wire carries).
fn latent_bytes(c: &GeneratedClip) -> Vec<u8> {
    c.latents.clone().unwrap().data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_stream_replays_the_clip_in_flight_then_continues() {
    let recorder = osa_runtime::metrics::install();
    let replays = || {
        recorder
            .render()
            .lines()
            .find(|l| l.starts_with("osa_generator_replays_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let redis = RedisServer::start().unwrap();
    let a = start(settings(Some(&redis))).await;
    let b = start(settings(Some(&redis))).await;
    let (mut ca, mut cb) = (client(&a).await, client(&b).await);
    prepare(&mut ca).await;
    // The uninterrupted run, for reference.
    let whole = generate(
        &mut ca,
        vec![start_msg("whole", false), clip_msg(0, false), clip_msg(1, false), clip_msg(2, true)],
    )
    .await
    .unwrap();

    // Replica A generates clips 0 and 1; say clip 1's answer was lost.
    let first =
        generate(&mut ca, vec![start_msg("cut", false), clip_msg(0, false), clip_msg(1, false)])
            .await
            .unwrap();
    let before = replays();
    // The gateway resends clip 1 on replica B: the stored answer comes
    // back (no model call), and the stream goes on from it.
    let resumed =
        generate(&mut cb, vec![start_msg("cut", true), clip_msg(1, false), clip_msg(2, false)])
            .await
            .unwrap();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0], first[1], "the replay is the answer, timing and latents, bit for bit");
    assert_eq!(replays(), before + 1.0);
    for (i, clip) in [&first[0], &resumed[0], &resumed[1]].into_iter().enumerate() {
        assert_eq!(clip.timing.as_ref().unwrap().clip_index, i as u64);
        assert!(
            latent_bytes(clip) == latent_bytes(&whole[i]),
            "clip {i} differs from the uninterrupted run"
        );
    }

    // Any other stale clip is still refused: one further back, or one the
    // stream has moved past since.
    for (msgs, what) in [
        (vec![start_msg("cut", true), clip_msg(0, false)], "clip 0 of a resume"),
        (vec![start_msg("cut", true), clip_msg(1, false)], "clip 1 of a resume after clip 2"),
    ] {
        let err = generate(&mut cb, msgs).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{what}: {err:?}");
    }
    let err =
        generate(&mut ca, vec![start_msg("cut", true), clip_msg(2, false), clip_msg(2, false)])
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "only the first clip of a resume replays: {err:?}");
    assert_eq!(replays(), before + 2.0, "the first clip 2 of that resume was a replay");

    // The replayed clip can be the stream's last: it then finishes the
    // stream, and a later resume names the forgotten stream.
    generate(&mut ca, vec![start_msg("cut", true), clip_msg(3, false)]).await.unwrap();
    let last = generate(&mut cb, vec![start_msg("cut", true), clip_msg(3, true)]).await.unwrap();
    assert_eq!(last[0].timing.as_ref().unwrap().clip_index, 3);
    let err = generate(&mut cb, vec![start_msg("cut", true), clip_msg(3, true)]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("stream \"cut\""), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_alternate_clips_of_one_stream_through_redis() {
    let redis = RedisServer::start().unwrap();
    let a = start(settings(Some(&redis))).await;
    let b = start(settings(Some(&redis))).await;
    let mut ca = client(&a).await;
    let mut cb = client(&b).await;
    prepare(&mut ca).await; // prepared on A only; B loads it from Redis
    let mut got =
        generate(&mut ca, vec![start_msg("s2", false), clip_msg(0, false)]).await.unwrap();
    got.extend(generate(&mut cb, vec![start_msg("s2", true), clip_msg(1, false)]).await.unwrap());
    got.extend(generate(&mut ca, vec![start_msg("s2", true), clip_msg(2, false)]).await.unwrap());
    assert_same(&got, &embedded(3));

    // Two replicas race for clip 3: exactly one writes it. The loser is
    // refused, unless it read the context only after the winner's commit:
    // then, being the first clip of a resume, it replays the winner's
    // answer, which must be identical.
    let (ra, rb) = tokio::join!(
        generate(&mut ca, vec![start_msg("s2", true), clip_msg(3, false)]),
        generate(&mut cb, vec![start_msg("s2", true), clip_msg(3, false)]),
    );
    match (ra, rb) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "a replay differs from the clip it replays"),
        (Ok(won), Err(lost)) | (Err(lost), Ok(won)) => {
            assert_eq!(won.len(), 1);
            assert_eq!(lost.code(), Code::Aborted, "{lost:?}");
        }
        (Err(a), Err(b)) => panic!("nobody generated clip 3: {a:?} {b:?}"),
    }

    // A skipped clip is refused, the stream stays usable.
    let err = generate(&mut cb, vec![start_msg("s2", true), clip_msg(9, false)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("expects clip 4"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_or_not_found() {
    let server = start(settings(None)).await;
    let mut c = client(&server).await;
    let prep =
        |avatar: &str, image: Vec<u8>| PrepareReferenceRequest { avatar_id: avatar.into(), image };
    for (req, needle) in [
        (prep("a", vec![]), "image: is empty"),
        (prep("a", b"not an image at all".to_vec()), "not a JPEG, PNG or WebP"),
        (prep("a", portrait_bytes()[..2000].to_vec()), "unreadable"),
        (prep("bad id", portrait_bytes()), "avatar_id"),
    ] {
        let err = c.prepare_reference(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(needle), "{needle}: {}", err.message());
    }
    // A photo without a face.
    let mut flat = Vec::new();
    image::RgbImage::from_pixel(200, 200, image::Rgb([90, 120, 200]))
        .write_to(&mut std::io::Cursor::new(&mut flat), image::ImageFormat::Png)
        .unwrap();
    let err = c.prepare_reference(prep("flat", flat)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("no face"), "{}", err.message());

    let err = generate(&mut c, vec![clip_msg(0, false)]).await.unwrap_err();
    assert!(err.message().contains("first message must be start"), "{err:?}");
    let mut three = start_msg("s3", false);
    if let Some(generate_request::Request::Start(s)) = &mut three.request {
        s.sampling = Some(SamplingOptions { steps: 3, seed: 1 });
    }
    let err = generate(&mut c, vec![three]).await.unwrap_err();
    assert!(err.message().contains("steps") && err.message().contains('3'), "{err:?}");
    // Unknown avatar: refused at the first clip.
    let err = generate(&mut c, vec![start_msg("s4", false), clip_msg(0, false)]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    prepare(&mut c).await;
    let mut wrong = clip_msg(0, false);
    if let Some(generate_request::Request::Clip(cf)) = &mut wrong.request {
        cf.features =
            Some(HostTensor::from_f32(vec![5, 50, 16], &[0.0; 5 * 50 * 16]).unwrap().into());
    }
    let err = generate(&mut c, vec![start_msg("s5", false), wrong]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("clip.features"), "{}", err.message());
    let err = generate(&mut c, vec![start_msg("s5", true), clip_msg(1, false)]).await.unwrap_err();
    assert!(err.message().contains("expects clip 0"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_faults_are_named_and_the_service_recovers() {
    let mut redis = RedisServer::start().unwrap();
    redis.stop();
    let server = start(settings(Some(&redis))).await;
    // Model warm, Redis down: NOT_SERVING.
    wait_for(&server.url, ServingStatus::NotServing).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&server.url).await, Some(ServingStatus::NotServing));
    redis.restart().unwrap();
    let mut c = client(&server).await; // waits for SERVING
    prepare(&mut c).await;
    generate(&mut c, vec![start_msg("s6", false), clip_msg(0, false)]).await.unwrap();
    redis.stop();
    let err = generate(&mut c, vec![start_msg("s6", true), clip_msg(1, false)]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("redis"), "{}", err.message());
    redis.restart().unwrap(); // data lost (no persistence), service fine
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match generate(&mut c, vec![start_msg("s7", false), clip_msg(0, false)]).await {
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) if e.code() == Code::NotFound => break, // avatar gone with the crash: recovered
            other => {
                other.unwrap();
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_expire() {
    let mut s = settings(None);
    s.generator.idle_timeout = Duration::from_millis(300);
    let server = start(s).await;
    let mut c = client(&server).await;
    prepare(&mut c).await;
    generate(&mut c, vec![start_msg("idle", false), clip_msg(0, false)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let err =
        generate(&mut c, vec![start_msg("idle", true), clip_msg(1, false)]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_resource_exhausted() {
    let mut s = settings(None);
    s.generator.queue_capacity = 1;
    s.generator.max_batch = 1;
    let server = start(s).await;
    let mut c = client(&server).await;
    prepare(&mut c).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            generate(&mut c, vec![start_msg(&format!("busy{i}"), false), clip_msg(0, true)]).await
        }));
    }
    let mut exhausted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => assert_eq!(v.len(), 1),
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.metadata().get("retry-after-ms").is_some());
                exhausted += 1;
            }
        }
    }
    assert!(exhausted > 0, "a queue of one clip never overflowed under 12 concurrent streams");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_batched_together_equal_each_alone() {
    let mut s = settings(None);
    s.generator.max_batch = 2;
    // Long enough that the two streams' clips always meet in one batch.
    s.generator.max_batch_wait = Duration::from_millis(500);
    let server = start(s).await;
    let mut c = client(&server).await;
    prepare(&mut c).await;
    let with_seed = |stream: &str, seed: u64| {
        let mut m = start_msg(stream, false);
        if let Some(generate_request::Request::Start(st)) = &mut m.request {
            st.sampling = Some(SamplingOptions { steps: 1, seed });
        }
        vec![m, clip_msg(0, false), clip_msg(1, true)]
    };
    let (mut ca, mut cb) = (c.clone(), c.clone());
    let (a, b) =
        tokio::join!(generate(&mut ca, with_seed("ba", 7)), generate(&mut cb, with_seed("bb", 8)));
    assert_close(&a.unwrap(), &embedded_with(7, 2));
    assert_close(&b.unwrap(), &embedded_with(8, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_takes_its_queued_clip_out() {
    let recorder = osa_runtime::metrics::install();
    let cancelled = || {
        recorder
            .render()
            .lines()
            .find(|l| l.starts_with("osa_generator_clips_cancelled_total"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut s = settings(None);
    s.generator.max_batch = 1;
    let server = start(s).await;
    let mut c = client(&server).await;
    prepare(&mut c).await;
    let before = cancelled();
    // Six streams queue a clip each; five clients leave at once.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            generate(&mut c, vec![start_msg(&format!("gone{i}"), false), clip_msg(0, false)]).await
        }));
    }
    // Long enough for the clips to reach the queue, short against the
    // model's time for six clips one at a time.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let keep = tasks.pop().unwrap();
    for t in &tasks {
        t.abort();
    }
    assert_eq!(keep.await.unwrap().unwrap().len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cancelled() <= before {
        assert!(tokio::time::Instant::now() < deadline, "no queued clip was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
