//! `osa render` refuses bad arguments precisely, and until the embedded
//! render path exists it says so and fails instead of writing a file.

use std::process::Command;

fn osa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_osa"))
}

#[test]
fn missing_inputs_and_bad_options_are_named() {
    let out = osa()
        .args(["render", "--image", "/nonexistent.png", "--audio", "/dev/null", "--out", "x.mp4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--image /nonexistent.png"));

    let exe = env!("CARGO_BIN_EXE_osa");
    let out = osa()
        .args(["render", "--image", exe, "--audio", exe, "--out", "x.mp4", "--fps", "60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--fps 60"));
}

#[test]
fn render_is_not_faked() {
    let dir = std::env::temp_dir().join(format!("osa-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_path = dir.join("out.mp4");
    let exe = env!("CARGO_BIN_EXE_osa");
    let out = osa()
        .args(["render", "--image", exe, "--audio", exe, "--out"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not built yet"));
    assert!(!out_path.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
