//! The `osa-gateway` binary's configuration handling, as an operator meets
//! it: layered settings, and bad values refused at start with the key named.

use std::process::Command;

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osa-gateway"));
    cmd.env_remove("OSA_CONFIG");
    cmd
}

#[test]
fn a_bad_value_exits_with_status_2_naming_the_key() {
    let out = gateway().env("OSA__GRPC__LISTEN", "localhost").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("grpc.listen"), "{err}");

    let out = gateway().env("OSA__GATEWAY__MAX_AUDIO_DURATION", "forever").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.max_audio_duration"));

    let out = gateway().env("OSA__MODEL__PRESET", "huge").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("model.preset") && err.contains("huge"), "{err}");
}

#[test]
fn file_then_environment_layers_show_in_the_effective_config() {
    let dir = std::env::temp_dir().join(format!("osa-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[gateway]\nmax_image_side = 2048\nmax_audio_duration = \"2m\"\n[telemetry]\nlog_format = \"json\"\n",
    )
    .unwrap();
    let out = gateway()
        .env("OSA_CONFIG", &file)
        .env("OSA__GATEWAY__MAX_IMAGE_SIDE", "1024")
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_image_side = 1024"), "env wins over the file:\n{text}");
    assert!(text.contains("max_audio_duration = \"2m\""), "file wins over defaults:\n{text}");
    assert!(text.contains("log_format = \"json\""), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:50051\""), "defaults stay:\n{text}");

    let out = gateway().arg("--config").arg(dir.join("missing.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(&dir).unwrap();
}
