//! `osa keys webhook-secret` against a real redis-server: the secret the
//! gateway signs webhooks with, stable until rotated, one per tenant.

use std::process::Command;

use osa_runtime::testkit::RedisServer;

fn secret(redis: &RedisServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_osa"))
        .args(["keys", "webhook-secret"])
        .args(args)
        .args(["--redis", &redis.url()])
        .env_remove("OSA_REDIS_URL")
        .output()
        .unwrap()
}

fn stdout(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn printed_stable_per_tenant_and_rotated() {
    let redis = RedisServer::start().unwrap();
    let first = stdout(secret(&redis, &["--tenant", "acme"]));
    assert!(first.starts_with("whsec_") && first.len() == 70, "{first}");
    assert_eq!(stdout(secret(&redis, &["--tenant", "acme"])), first);
    let other = stdout(secret(&redis, &["--tenant", "globex"]));
    assert_ne!(other, first);
    let rotated = stdout(secret(&redis, &["--tenant", "acme", "--rotate"]));
    assert_ne!(rotated, first);
    assert_eq!(stdout(secret(&redis, &["--tenant", "acme"])), rotated);
    let bad = secret(&redis, &["--tenant", "not ok"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not ok"));
}
