//! The README's cluster flow with the real `osa` binary: `osa serve all` on
//! a private redis-server, `osa keys create` for a key, then `osa render
//! --server` through the gateway; the MP4 is checked by ffprobe and by
//! ffmpeg against the embedded `osa render` of the same inputs and seed.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use osa_runtime::testkit::RedisServer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn osa() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osa"));
    cmd.current_dir(root()).env_remove("OSA_WEIGHTS").env_remove("OSA_API_KEY");
    cmd
}

/// Kills `osa serve all` when the test ends, however it ends.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn frame_md5s(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0:v:0", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

async fn serving(url: &str) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(url.to_owned()) else { return false };
    let Ok(ch) = ep.connect().await else { return false };
    let reply = tonic_health::pb::health_client::HealthClient::new(ch)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await;
    reply.is_ok_and(|r| r.into_inner().status == 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_all_keys_create_and_render_server_as_the_readme_says() {
    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let child = osa()
        .args(["serve", "all", "--device", "cpu", "--listen", &listen, "--redis", &redis.url()])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !serving(&url).await {
        assert!(served.0.try_wait().unwrap().is_none(), "osa serve all exited");
        assert!(Instant::now() < deadline, "osa serve all never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let created =
        osa().args(["keys", "create", "--redis", &redis.url(), "--tenant", "me"]).output().unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("osa_"), "{key}");

    let audio = dir.path().join("speech.wav");
    let cut = Command::new("ffmpeg")
        .args(["-y", "-v", "error", "-t", "1.5", "-i", "target/samples/speech.wav"])
        .arg(&audio)
        .current_dir(root())
        .status()
        .unwrap();
    assert!(cut.success());
    let remote = dir.path().join("remote.mp4");
    let out = osa()
        .args(["render", "--server", &url, "--image", "target/samples/portrait.png", "--seed", "5"])
        .arg("--audio")
        .arg(&audio)
        .arg("--out")
        .arg(&remote)
        .env("OSA_API_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Without a key the gateway refuses, and the command says why.
    let refused = osa()
        .args(["render", "--server", &url, "--image", "target/samples/portrait.png"])
        .arg("--audio")
        .arg(&audio)
        .arg("--out")
        .arg(dir.path().join("refused.mp4"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("UNAUTHENTICATED") || stderr.contains("api-key"), "{stderr}");

    // The embedded render of the same inputs and seed has the same frames.
    let local = dir.path().join("local.mp4");
    let out = osa()
        .args(["render", "--image", "target/samples/portrait.png", "--seed", "5", "--audio"])
        .arg(&audio)
        .arg("--out")
        .arg(&local)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (r, l) = (frame_md5s(&remote), frame_md5s(&local));
    assert!(!r.is_empty());
    assert_eq!(r, l, "osa render --server and the embedded osa render show the same frames");
    drop(served);
}
