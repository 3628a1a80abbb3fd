//! `osa keys` against a real redis-server.

use std::process::Command;

use osa_runtime::testkit::RedisServer;

fn osa(redis: &RedisServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_osa"))
        .arg("keys")
        .args(args)
        .args(["--redis", &redis.url()])
        .env_remove("OSA_REDIS_URL")
        .output()
        .unwrap()
}

#[test]
fn create_list_revoke() {
    let redis = RedisServer::start().unwrap();
    let out = osa(&redis, &["create", "--tenant", "acme"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("osa_"), "{key}");
    let list = String::from_utf8(osa(&redis, &["list"]).stdout).unwrap();
    let id = list.split('\t').next().unwrap().to_owned();
    assert!(list.contains("\tacme\t") && !list.contains(&key), "{list}");
    assert!(osa(&redis, &["revoke", &id]).status.success());
    assert_eq!(osa(&redis, &["revoke", &id]).status.code(), Some(1));
    assert!(
        String::from_utf8(osa(&redis, &["list", "--tenant", "acme"]).stdout).unwrap().is_empty()
    );
    let bad = osa(&redis, &["create", "--tenant", "not ok"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not ok"));
}
