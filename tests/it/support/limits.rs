//! What the shared-limits tests need: the Redis `scripts/test` started (`MEDIA_TEST_REDIS_URL`), a
//! `redis-server` of a test's own that it can kill and restart on the same port
//! (`REDIS_SERVER_BIN`, or `redis-server` on `PATH`), uploads whose bodies the test holds open,
//! and readings of `/readyz` and `/metrics`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use super::process::{free_port, Service, BIN};

const RUN_SCRIPTS_TEST: &str =
    "run the tests with scripts/test, which starts a throwaway redis-server (and installs Debian's redis-server when missing)";

/// The Redis `scripts/test` started; panics (never skips) without one.
pub fn redis_url() -> String {
    std::env::var("MEDIA_TEST_REDIS_URL")
        .unwrap_or_else(|_| panic!("MEDIA_TEST_REDIS_URL is not set: {RUN_SCRIPTS_TEST}"))
}

/// Whether a Redis at `url` answers a PING within a second.
pub async fn answers(url: &str) -> bool {
    let ping = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING").query_async::<String>(&mut connection).await.ok()
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Some(pong)) if pong == "PONG")
}

/// A `redis-server` child on its own loopback port, without persistence.
pub struct OwnRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Self {
        let mut redis = Self { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() };
        redis.restart().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the server on its port, empty, and waits (≤ 10 s) until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the test's Redis is already running");
        let bin = std::env::var("REDIS_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|_| "redis-server".into());
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {RUN_SCRIPTS_TEST}", bin.display()));
        self.child = Some(child);
        let started = Instant::now();
        while !answers(&self.url()).await {
            let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not answer: {log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`: the port stops answering at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request body the test feeds chunk by chunk; it ends when the sender is dropped.
pub fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, reqwest::Body) {
    let (tx, mut rx) = mpsc::channel(4);
    (tx, reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

/// A running request whose body the test feeds, and its answer to come.
pub type HeldRequest =
    (mpsc::Sender<Result<Bytes, std::io::Error>>, tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>);

/// Starts a JSON data-URL upload by `token` on `m` that sends its first bytes and stalls; returns
/// once it holds its slots, with how many it holds (of `total`, all free before).
pub async fn stalled_json_upload(m: &super::media::MediaApp, token: &str, total: usize) -> (HeldRequest, usize) {
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media")).bearer_auth(token).header("content-type", "application/json");
    let held = tokio::spawn(request.body(body).send());
    tx.send(Ok(Bytes::from_static(b"{\"source\":{\"type\":\"data_url\",\"data_url\":\"data:image/png;base64,")))
        .await
        .unwrap();
    let started = Instant::now();
    while m.app.state.limits.free_upload_slots() == total {
        assert!(started.elapsed() < Duration::from_secs(30), "the stalled upload never took its slots");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ((tx, held), total - m.app.state.limits.free_upload_slots())
}

/// `/readyz` of the service at `base`: its status and `checks.limits` (`""` when absent).
pub async fn readiness(http: &reqwest::Client, base: &str) -> (u16, String) {
    let (status, body) = readyz(http, base).await;
    (status, body["checks"]["limits"].as_str().unwrap_or_default().to_owned())
}

/// `/readyz` of the service at `base`: its status and body.
async fn readyz(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` (≤ 20 s) until `checks.limits` is `want`; asserts it stays ready (200) meanwhile.
pub async fn wait_for_limits(http: &reqwest::Client, base: &str, want: &str) {
    let started = Instant::now();
    loop {
        let (status, limits) = readiness(http, base).await;
        assert_eq!(status, 200, "the service stays ready whatever Redis does (limits: {limits})");
        if limits == want {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "readiness never reported limits: {want} (got {limits:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `media-api serve` with `vars` (which name a Redis that answers and `LOG_LEVEL=info`), once it
/// logged that it listens on its port and its `/readyz` reports `limits: ok`. The port
/// `Service::start` picks can be taken by another test's server before the process binds it (the
/// process then exits, and the other server answers): then it starts again on another port.
pub async fn serve_with_shared_limits(http: &reqwest::Client, vars: &[(String, String)]) -> Service {
    for _ in 0..5 {
        let mut service = Service::start(vars);
        service.wait_up(http).await;
        let listening = format!("\"addr\":\"{}\"", service.base.trim_start_matches("http://"));
        let started = Instant::now();
        while !service.logs().contains(&listening) && !service.exited() {
            assert!(started.elapsed() < Duration::from_secs(30), "no listening line: {}", service.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let mut last = (0, Value::Null);
        while started.elapsed() < Duration::from_secs(30) {
            if service.exited() {
                break;
            }
            last = readyz(http, &service.base).await;
            if last.0 == 200 && last.1["checks"]["limits"] == "ok" {
                return service;
            }
            assert!(
                !(last.0 == 200 && last.1["checks"]["limits"].is_null()),
                "{BIN} answers /readyz without a limits check: it does not read MEDIA_REDIS_URL, so it is not \
                 this tree's build (another worktree sharing CARGO_TARGET_DIR rebuilt it meanwhile); rerun: {}",
                last.1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (status, body) = last;
        assert!(service.exited(), "readiness never reported limits: ok (last: {status} {body}): {}", service.logs());
    }
    panic!("the service could not start on five free ports in a row");
}

/// Sum of the samples of `name` in Prometheus text whose labels include every `(label, value)`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric_name != name {
                return None;
            }
            labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
