//! What the fault tests share: uploads that can be caught in flight, the proofs run after a fault
//! (every acknowledged upload reads back, rows and objects match one to one, the journal), a
//! `rotate-keys` run that can be killed at a logged point, and a steady load whose every outcome is
//! recorded with its send time, for the outage test.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use media_api::config::Config;
use media_api::services::{Role, Services};
use serde_json::{json, Value};

use super::app::sha256_hex;
use super::media::png;
use super::own::S3Target;
use super::process::{var, Service, BIN};

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Uploads `body` as a stream of 256 KiB chunks, pausing between them (so a kill finds uploads
/// in flight); returns the id when the service answered 200.
pub async fn upload(http: &reqwest::Client, url: &str, token: &str, body: Bytes, pause: Duration) -> Option<String> {
    upload_framed(http, url, token, body, pause, true).await
}

/// [`upload`], announcing the length (`sized`: one streamed PUT to S3) or sending it chunked (a
/// multipart upload beyond one part).
pub async fn upload_framed(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Bytes,
    pause: Duration,
    sized: bool,
) -> Option<String> {
    let length = body.len();
    let chunks: Vec<Bytes> = body.chunks(256 * 1024).map(Bytes::copy_from_slice).collect();
    let stream = futures::stream::iter(chunks).then(move |chunk| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(chunk)
    });
    send_upload(http, url, token, sized.then_some(length), reqwest::Body::wrap_stream(stream)).await
}

/// An upload of `body` that sends its first 256 KiB and then nothing, never ending: it stays in
/// flight until the service goes away (the fault tests' deterministic "cut mid-way").
pub async fn upload_stalled(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Bytes,
    sized: bool,
) -> Option<String> {
    let length = body.len();
    let first = body.slice(..length.min(256 * 1024));
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(futures::stream::pending());
    send_upload(http, url, token, sized.then_some(length), reqwest::Body::wrap_stream(stream)).await
}

async fn send_upload(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    length: Option<usize>,
    body: reqwest::Body,
) -> Option<String> {
    let request = http.post(url).bearer_auth(token).header("content-type", "image/png");
    let request = match length {
        Some(length) => request.header("content-length", length),
        None => request,
    };
    let response = request.body(body).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer["id"].as_str().map(str::to_owned)
}

/// Every acknowledged upload downloads byte-identical through `service`.
pub async fn assert_readable(
    service: &Service,
    token_of: impl Fn(&str) -> String,
    acknowledged: &[(String, String, String)],
) {
    assert_readable_at(&service.base, token_of, acknowledged).await;
}

/// Every acknowledged upload downloads byte-identical through `base` (a service or a balancer).
pub async fn assert_readable_at(
    base: &str,
    token_of: impl Fn(&str) -> String,
    acknowledged: &[(String, String, String)],
) {
    let http = http();
    for (tenant, id, sha) in acknowledged {
        let response = http.get(format!("{base}/v1/media/{id}")).bearer_auth(token_of(tenant)).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "{tenant}/{id} is gone");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(&sha256_hex(&bytes), sha, "{tenant}/{id} changed");
    }
}

/// Entries in the blob journal of the service run with `vars`.
pub async fn journaled(vars: &[(String, String)]) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(var(vars, "MEDIA_DATABASE_URL")).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_journal").fetch_one(&mut conn).await.unwrap();
    count as u64
}

/// Rows and objects match one to one: every row's object exists, every object under the prefix
/// has a row, and no multipart upload is left. Returns the number of rows.
pub async fn assert_rows_match_objects(vars: &[(String, String)], s3: &S3Target) -> usize {
    let (referenced, stored, uploads) = rows_and_objects(vars, s3).await;
    assert_eq!(uploads, 0, "multipart uploads left behind");
    let missing: Vec<_> = referenced.difference(&stored).collect();
    let orphans: Vec<_> = stored.difference(&referenced).collect();
    assert!(missing.is_empty(), "rows without an object: {missing:?}");
    assert!(orphans.is_empty(), "objects without a row: {orphans:?}");
    referenced.len()
}

/// The storage keys of every row (each row decrypts, or this panics naming it), the objects
/// under the prefix, and the number of multipart uploads open under it.
pub async fn rows_and_objects(vars: &[(String, String)], s3: &S3Target) -> (BTreeSet<String>, BTreeSet<String>, usize) {
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let services = Services::open(&config, Role::Admin).await.unwrap();
    let tenants: Vec<String> =
        media_api::with_pool!(&services.db, |pool| sqlx::query_scalar("SELECT DISTINCT tenant_id FROM media_objects")
            .fetch_all(pool)
            .await)
        .unwrap();
    let mut referenced = BTreeSet::new();
    for tenant in &tenants {
        let mut after: Option<String> = None;
        loop {
            let page = services.media.storage_keys(tenant, after.as_deref(), 500).await.unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (id, key) in page {
                referenced.insert(key.unwrap_or_else(|e| panic!("{tenant}/{id} does not decrypt: {e}")));
            }
        }
    }
    services.db.close().await;
    let prefix = var(vars, "MEDIA_STORAGE_PREFIX");
    let client = s3.client().await;
    let mut stored = BTreeSet::new();
    let mut pages = client.list_objects_v2().bucket(&s3.bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        stored.extend(page.unwrap().contents().iter().filter_map(|o| o.key().map(str::to_owned)));
    }
    let uploads = client.list_multipart_uploads().bucket(&s3.bucket).prefix(prefix).send().await.unwrap();
    (referenced, stored, uploads.uploads().len())
}

/// A `rotate-keys` run, its log lines delivered as they come.
pub struct Rotation {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Rotation {
    pub fn start(vars: &[(String, String)]) -> Self {
        Self::start_with(vars, &["--batch-size", "10"])
    }

    /// `rotate-keys` with `args`.
    pub fn start_with(vars: &[(String, String)], args: &[&str]) -> Self {
        Self::command(vars, "rotate-keys", args)
    }

    /// Another long admin command (`encrypt-objects`) with `args`, watched the same way.
    pub fn command(vars: &[(String, String)], command: &str, args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg(command)
            .args(args)
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits (at most `within`) for a line containing `event`: false when the run ended first.
    pub fn wait_for(&mut self, event: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(event) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Waits (at most `within`, then kills it) for the run to end: its exit status and its
    /// JSON summary (stdout), or the last lines of its log.
    pub fn finish(self, within: Duration) -> Result<Value, String> {
        let Self { mut child, lines } = self;
        let deadline = Instant::now() + within;
        let mut log = Vec::new();
        loop {
            match lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => log.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if Instant::now() > deadline => {
                    let _ = child.kill();
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
        let output = child.wait_with_output().unwrap();
        let tail = log.iter().rev().take(20).rev().cloned().collect::<Vec<_>>().join("\n");
        if !output.status.success() {
            return Err(format!("rotate-keys ended with {}: {tail}", output.status));
        }
        serde_json::from_slice(&output.stdout).map_err(|e| format!("rotate-keys printed no summary ({e}): {tail}"))
    }

    /// Waits for the `nth` line containing `event`, then `delay`, then `kill -9`. False when the
    /// run ended first.
    pub fn kill_at(mut self, event: &str, nth: usize, delay: Duration) -> bool {
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(200)) {
                Ok(line) if line.contains(event) => {
                    seen += 1;
                    if seen == nth {
                        std::thread::sleep(delay);
                        let landed = self.child.try_wait().unwrap().is_none();
                        let _ = self.child.kill();
                        let _ = self.child.wait();
                        return landed;
                    }
                }
                Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

/// One request of the steady load: what it was, when it was sent, its status and code, its latency.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub kind: &'static str,
    pub at: Instant,
    pub status: u16,
    pub code: String,
    pub latency: Duration,
}

/// Uploads, presigns and resolves in a loop until `stop`, recording every outcome; acknowledged
/// uploads go to `stored`.
pub fn steady_load(
    base: String,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    stored: Arc<Mutex<Vec<(String, String, String)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let known = stored.lock().unwrap().last().map(|(_, id, _): &(String, String, String)| id.clone());
            let started = Instant::now();
            let (kind, request, sha) = match (i % 3, &known) {
                (1, Some(id)) => ("presign", http.get(format!("{base}/v1/media/{id}/presign")), None),
                (2, Some(id)) => {
                    ("resolve", http.post(format!("{base}/v1/media/resolve")).json(&json!({"ids": [id]})), None)
                }
                _ => {
                    let body = png(20_000, 500_000 + i);
                    let sha = sha256_hex(&body);
                    let request = http.post(format!("{base}/v1/media")).header("content-type", "image/png").body(body);
                    ("upload", request, Some(sha))
                }
            };
            let sent = request.bearer_auth(&token).send().await;
            let (status, code) = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    if let (200, Some(sha), Some(id)) = (status, sha, answer["id"].as_str()) {
                        stored.lock().unwrap().push(("tenant-a".into(), id.to_owned(), sha));
                    }
                    (status, answer["code"].as_str().unwrap_or_default().to_owned())
                }
                Err(err) => (0, format!("transport: {err}")),
            };
            log.lock().unwrap().push(Outcome { kind, at: started, status, code, latency: started.elapsed() });
            i += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    })
}

pub async fn readiness(http: &reqwest::Client, service: &Service) -> (u16, Value) {
    let response = http.get(service.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until it answers `want` (at most `within`); returns how long that took.
pub async fn wait_ready(http: &reqwest::Client, service: &Service, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = readiness(http, service).await;
        if status == want {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "/readyz still {status} after {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes a dependency down with `switch(false)` until `/readyz` names it (and only it) down and an
/// upload has failed, then brings it back with `switch(true)` and waits until the service itself
/// reports ready again and [`AFTER_RECOVERY`] requests of every kind sent after that have been
/// answered. Returns when it went down, when it was brought back, and when the service reported
/// ready. `switch` blocks (pg_ctl, a Garage start), so it runs with the load going on beside it.
pub async fn outage(
    http: &reqwest::Client,
    service: &Service,
    log: &Mutex<Vec<Outcome>>,
    dependency: &str,
    mut switch: impl FnMut(bool),
) -> (Instant, Instant, Instant) {
    let down = Instant::now();
    tokio::task::block_in_place(|| switch(false));
    wait_ready(http, service, 503, Duration::from_secs(15)).await;
    let (_, body) = readiness(http, service).await;
    for check in ["database", "storage"] {
        let expected = if check == dependency { "down" } else { "ok" };
        assert_eq!(body["checks"][check].as_str(), Some(expected), "{dependency} down: {body}");
    }
    wait_for_upload(log, down, "failed", |o| o.status != 200).await;
    let back = Instant::now();
    tokio::task::block_in_place(|| switch(true));
    wait_ready(http, service, 200, Duration::from_secs(30)).await;
    let ready = Instant::now();
    wait_for_each_kind(log, ready, AFTER_RECOVERY).await;
    (down, back, ready)
}

/// Requests of each kind (upload, presign, resolve) answered after a recovery before the next step.
pub const AFTER_RECOVERY: usize = 5;

/// The kinds of request the steady load sends.
pub const KINDS: [&str; 3] = ["upload", "presign", "resolve"];

/// Waits (at most 60 s) until `count` requests of every kind sent after `since` have been answered.
pub async fn wait_for_each_kind(log: &Mutex<Vec<Outcome>>, since: Instant, count: usize) {
    let started = Instant::now();
    loop {
        let answered = |kind: &str| log.lock().unwrap().iter().filter(|o| o.kind == kind && o.at > since).count();
        if KINDS.iter().all(|kind| answered(kind) >= count) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "fewer than {count} of each kind answered in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 30 s) until an upload sent after `since` has `what` (`matches`), so each window
/// of the outage test holds at least one, however slow the machine.
pub async fn wait_for_upload(
    log: &Mutex<Vec<Outcome>>,
    since: Instant,
    what: &str,
    matches: impl Fn(&Outcome) -> bool,
) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let seen = log.lock().unwrap().iter().any(|o| o.kind == "upload" && o.at > since && matches(o));
        if seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no upload sent after {since:?} {what} within 30 s");
}

/// Waits (at most 60 s) until the steady load has `count` acknowledged uploads.
pub async fn wait_for_acknowledged(stored: &Mutex<Vec<(String, String, String)>>, count: usize) {
    let started = Instant::now();
    while stored.lock().unwrap().len() < count {
        assert!(started.elapsed() < Duration::from_secs(60), "fewer than {count} uploads acknowledged in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Outcomes by (kind, status, code) of the requests that ran wholly inside `from..to`: sent at or
/// after `from` and answered before `to`. A request sent just before a fault begins and answered
/// after it is in no healthy window (it may fail because of the fault: that is not a recovery
/// failure).
pub fn tally(log: &[Outcome], from: Instant, to: Instant) -> BTreeMap<(&'static str, u16, String), usize> {
    let mut counts = BTreeMap::new();
    for outcome in log.iter().filter(|o| o.at >= from && o.at + o.latency < to) {
        *counts.entry((outcome.kind, outcome.status, outcome.code.clone())).or_insert(0) += 1;
    }
    counts
}
