//! The binary itself: configuration refusals exit 2 with one clear line, and with no configuration
//! at all it starts the embedded default (SQLite + filesystem under ./data), answers /healthz and
//! stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_media-api");

fn run_with_env(vars: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(BIN).env_clear().envs(vars.iter().copied()).current_dir(dir.path()).output().expect("run media-api")
}

#[test]
fn production_without_auth_or_keys_exits_2_naming_what_is_missing() {
    let output = run_with_env(&[("MEDIA_PROFILE", "production")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    for name in ["AUTH_ISSUER", "AUTH_AUDIENCE", "MEDIA_MASTER_KEYS", "MEDIA_DATABASE_URL"] {
        assert!(stderr.contains(name), "{name} not named in: {stderr}");
    }
}

#[test]
fn a_bad_number_exits_2_naming_the_variable() {
    let output = run_with_env(&[("MEDIA_MAX_BYTES", "abc")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MEDIA_MAX_BYTES") && stderr.contains("abc"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn an_unreadable_keyring_file_exits_2_naming_the_variable() {
    let output = run_with_env(&[("MEDIA_KEYRING_FILE", "/nonexistent/keyring.json"), ("MEDIA_API_PORT", "0")]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MEDIA_KEYRING_FILE") && stderr.contains("/nonexistent/keyring.json"), "{stderr}");
}

#[test]
fn secrets_are_not_echoed_in_configuration_errors() {
    let output = run_with_env(&[
        ("MEDIA_S3_BUCKET", "b"),
        ("MEDIA_S3_ACCESS_KEY", "GK1"),
        ("MEDIA_S3_SECRET_KEY", "very-secret-value"),
        ("MEDIA_S3_PART_SIZE", "1"),
    ]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("MEDIA_S3_PART_SIZE"), "{stderr}");
    assert!(!stderr.contains("very-secret-value"), "{stderr}");
}

#[test]
fn with_no_configuration_it_serves_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("MEDIA_API_HOST", "127.0.0.1")
        .env("MEDIA_API_PORT", "0")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start media-api");
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut addr = None;
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if event["message"] == "media-api listening" {
            assert_eq!(event["database_backend"], "sqlite", "{line}");
            assert!(event["storage"].as_str().unwrap().starts_with("filesystem"), "{line}");
            addr = event["addr"].as_str().map(str::to_owned);
            break;
        }
    }
    let addr = addr.unwrap_or_else(|| panic!("no listening line in: {seen:#?}"));
    let body = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .expect("healthz")
        .text()
        .unwrap();
    assert_eq!(body, r#"{"status":"ok"}"#);
    assert!(dir.path().join("data/media.db").exists(), "SQLite under ./data");
    assert!(dir.path().join("data/blobs").is_dir(), "blobs under ./data/blobs");
    assert!(dir.path().join("keys/fs-link.key").exists(), "generated link key under ./keys");
    assert!(dir.path().join("keys/dev-keyring.json").exists(), "generated dev keyring under ./keys");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit after SIGTERM");
}

#[test]
fn keys_generate_prints_a_usable_master_key_each_time_a_new_one() {
    let generate = || Command::new(BIN).args(["keys", "generate"]).env_clear().output().expect("run");
    let (a, b) = (generate(), generate());
    assert!(a.status.success());
    let (a, b) = (String::from_utf8(a.stdout).unwrap(), String::from_utf8(b.stdout).unwrap());
    assert_ne!(a, b);
    let ring = media_api::crypto::keyring::Keyring::parse_env(&format!("k1:{}", a.trim())).expect("a Fernet key");
    let (id, token) = ring.wrap(b"dek");
    assert_eq!(ring.unwrap(&id, &token).unwrap().as_slice(), b"dek");
}
