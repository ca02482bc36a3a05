//! Fault injection on the real stack (the binary, PostgreSQL, Garage): `kill -9` during 50 uploads,
//! `kill -9` of `rotate-keys` at ten points while uploads go on, and PostgreSQL then Garage stopped
//! under a steady load — each followed by the proof that nothing acknowledged was lost and nothing
//! unreachable was left behind. The outage test runs its own PostgreSQL cluster and Garage node, so
//! stopping them touches nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use media_api::admin::Services;
use media_api::config::Config;
use serde_json::{json, Value};

use crate::helpers::{random_hex, s3_client, s3_env, sha256_hex, Stack};
use crate::media::png;
use crate::process::{binary_vars, run, token, var, Service, BIN};

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Uploads `body` as a stream of 256 KiB chunks, pausing between them (so a kill finds uploads
/// in flight); returns the id when the service answered 200.
async fn upload(http: &reqwest::Client, url: &str, token: &str, body: Bytes, pause: Duration) -> Option<String> {
    upload_framed(http, url, token, body, pause, true).await
}

/// [`upload`], announcing the length (`sized`: one streamed PUT to S3) or sending it chunked (a
/// multipart upload beyond one part).
async fn upload_framed(
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
    let request = http.post(url).bearer_auth(token).header("content-type", "image/png");
    let request = if sized { request.header("content-length", length) } else { request };
    let response = request.body(reqwest::Body::wrap_stream(stream)).send().await.ok()?;
    if response.status() != 200 {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer["id"].as_str().map(str::to_owned)
}

use futures::StreamExt;

/// Every acknowledged upload downloads byte-identical through `service`.
async fn assert_readable(
    service: &Service,
    token_of: impl Fn(&str) -> String,
    acknowledged: &[(String, String, String)],
) {
    let http = http();
    for (tenant, id, sha) in acknowledged {
        let response = http.get(service.url(&format!("/v1/media/{id}"))).bearer_auth(token_of(tenant)).send().await;
        let response = response.unwrap();
        assert_eq!(response.status(), 200, "{tenant}/{id} is gone");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(&sha256_hex(&bytes), sha, "{tenant}/{id} changed");
    }
}

/// Entries in the blob journal of the service run with `vars`.
async fn journaled(vars: &[(String, String)]) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(var(vars, "MEDIA_DATABASE_URL")).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blob_journal").fetch_one(&mut conn).await.unwrap();
    count as u64
}

/// Rows and objects match one to one: every row's object exists, every object under the prefix
/// has a row, and no multipart upload is left. Returns the number of rows.
async fn assert_rows_match_objects(vars: &[(String, String)], s3: &S3Target) -> usize {
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let services = Services::open(&config).await.unwrap();
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
    assert_eq!(uploads.uploads().len(), 0, "multipart uploads left behind");
    let missing: Vec<_> = referenced.difference(&stored).collect();
    let orphans: Vec<_> = stored.difference(&referenced).collect();
    assert!(missing.is_empty(), "rows without an object: {missing:?}");
    assert!(orphans.is_empty(), "objects without a row: {orphans:?}");
    referenced.len()
}

/// Where the objects are: the shared test Garage, or one a test started.
struct S3Target {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
}

impl S3Target {
    fn shared() -> Self {
        let env = s3_env();
        Self { endpoint: env.endpoint, bucket: env.bucket, access_key: env.access_key, secret_key: env.secret_key }
    }

    async fn client(&self) -> aws_sdk_s3::Client {
        if self.endpoint == s3_env().endpoint {
            return s3_client().await;
        }
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("garage"))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }
}

#[tokio::test]
async fn kill_9_during_fifty_uploads_then_restart_and_sweep_loses_nothing_acknowledged_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [("MEDIA_MAX_CONCURRENT_UPLOADS", "64"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "64")];
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &limits).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    let token = token(&vars, "tenant-a", "alice");

    // 50 uploads from 10 KiB to 12 MiB; every tenth repeats earlier bytes (the dedup path).
    const SIZES: [usize; 6] = [10 << 10, 100 << 10, 700 << 10, 2 << 20, 5 << 20, 12 << 20];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..50u64 {
        let seed = if i % 10 == 9 { i - 5 } else { i };
        let body = Bytes::from(png(SIZES[seed as usize % SIZES.len()], 9000 + seed));
        let (http, url, token, tx) = (http.clone(), service.url("/v1/media"), token.clone(), tx.clone());
        tokio::spawn(async move {
            let sha = sha256_hex(&body);
            let id = upload_framed(&http, &url, &token, body, Duration::from_millis(20), i % 2 == 0).await;
            let _ = tx.send(id.map(|id| (id, sha)));
        });
    }
    drop(tx);
    // Kill once a third has been acknowledged: the rest are in flight at every stage.
    let mut outcomes = Vec::new();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
        if outcomes.iter().flatten().count() >= 15 {
            break;
        }
    }
    service.kill9();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
    }
    let acknowledged: Vec<(String, String, String)> =
        outcomes.iter().flatten().map(|(id, sha)| ("tenant-a".to_owned(), id.clone(), sha.clone())).collect();
    let cut = outcomes.iter().filter(|o| o.is_none()).count();
    assert!(acknowledged.len() >= 15 && cut >= 10, "acknowledged {}, cut {cut}", acknowledged.len());

    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    // The cut uploads left their keys in the journal (and, sent chunked, multipart uploads).
    let left = journaled(&vars).await;
    assert!(left > 0, "the kill left no journaled write: the test did not cut any upload mid-way");
    let sweep = run(&vars, &["sweep", "--abandoned-after", "0s"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    let report: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    let outcome = (report["failed"].as_u64(), report["orphans_deleted"].as_u64());
    assert_eq!(outcome, (Some(0), Some(left)), "{report}");
    assert_eq!(journaled(&vars).await, 0);
    assert_readable(&service, |_| token.clone(), &acknowledged).await;
    let distinct: BTreeSet<&String> = acknowledged.iter().map(|(_, id, _)| id).collect();
    let rows = assert_rows_match_objects(&vars, &S3Target::shared()).await;
    assert!(rows >= distinct.len(), "{rows} rows for {} acknowledged ids", distinct.len());
    // The service works after the crash.
    let again = upload(&http, &service.url("/v1/media"), &token, Bytes::from(png(5000, 1)), Duration::ZERO).await;
    assert!(again.is_some());
    service.stop();
}

/// A `rotate-keys` run, its log lines delivered as they come.
struct Rotation {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Rotation {
    fn start(vars: &[(String, String)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["rotate-keys", "--batch-size", "10"])
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
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

    /// Waits for the `nth` line containing `event`, then `delay`, then `kill -9`. False when the
    /// run ended first.
    fn kill_at(mut self, event: &str, nth: usize, delay: Duration) -> bool {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_rotate_keys_at_ten_points_then_a_rerun_finishes_and_uploads_meanwhile_survive() {
    let dir = tempfile::tempdir().unwrap();
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &[]).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    let tenants = ["tenant-a", "tenant-b", "tenant-c"];
    let tokens: HashMap<String, String> = tenants.iter().map(|t| (t.to_string(), token(&vars, t, "alice"))).collect();
    let url = service.url("/v1/media");
    // 3 × 60 rows: 6 batches of 10 per tenant and run.
    let mut acknowledged = Vec::new();
    for (t, tenant) in tenants.iter().enumerate() {
        let uploads = (0..60u64).map(|i| {
            let body = Bytes::from(png(2000, 100_000 * t as u64 + i));
            let (http, url, token) = (&http, &url, &tokens[*tenant]);
            async move {
                let sha = sha256_hex(&body);
                (upload(http, url, token, body, Duration::ZERO).await.expect("a setup upload"), sha)
            }
        });
        for (id, sha) in futures::stream::iter(uploads).buffer_unordered(8).collect::<Vec<_>>().await {
            acknowledged.push((tenant.to_string(), id, sha));
        }
    }

    // Uploads keep coming while rotate-keys is killed again and again.
    let writing = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, url, writing, stop, tokens) =
            (http.clone(), url.clone(), writing.clone(), stop.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tenant = ["tenant-a", "tenant-b", "tenant-c"][i as usize % 3];
                let body = Bytes::from(png(3000, 900_000 + i));
                let sha = sha256_hex(&body);
                let id = upload(&http, &url, &tokens[tenant], body, Duration::ZERO).await;
                writing.lock().unwrap().push((tenant.to_owned(), id.expect("an upload during rotation failed"), sha));
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    // Between batches (right after one was written), mid-batch (a few ms later) and during
    // retirement (after "retiring", before or inside the one retiring statement).
    let points = [
        ("re-encrypting", 1, 0),
        ("re-encrypting", 2, 3),
        ("retiring unused", 1, 0),
        ("re-encrypting", 4, 0),
        ("re-encrypting", 1, 8),
        ("retiring unused", 2, 0),
        ("re-encrypting", 7, 1),
        ("retiring unused", 1, 4),
        ("re-encrypting", 3, 15),
        ("re-encrypting", 12, 0),
    ];
    let rotation_vars: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k != "LOG_LEVEL")
        .cloned()
        .chain([("MEDIA_LOG_FORMAT".into(), "json".into())])
        .collect();
    let mut landed = 0;
    for (event, nth, delay) in points {
        let rotation = Rotation::start(&rotation_vars);
        let delay = Duration::from_millis(delay);
        if tokio::task::spawn_blocking(move || rotation.kill_at(event, nth, delay)).await.unwrap() {
            landed += 1;
        }
    }
    assert_eq!(landed, points.len(), "every kill point was reached while the run was going");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let written = writing.lock().unwrap().clone();
    assert!(written.len() >= 10, "only {} uploads ran during the kills", written.len());
    acknowledged.extend(written);

    let rerun = run(&vars, &["rotate-keys", "--batch-size", "50"]);
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let summary: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(summary["rows_pending"], 0, "{summary}");

    // Every row decrypts (storage keys of all rows, and each object is there), the row count is
    // what was acknowledged, every tenant is on one DEK version, every upload reads back.
    let rows = assert_rows_match_objects(&vars, &S3Target::shared()).await;
    assert_eq!(rows, acknowledged.len(), "row count changed");
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let services = Services::open(&config).await.unwrap();
    let versions: Vec<(String, i32)> = media_api::with_pool!(&services.db, |pool| sqlx::query_as(
        "SELECT DISTINCT tenant_id, dek_version FROM media_objects ORDER BY 1"
    )
    .fetch_all(pool)
    .await)
    .unwrap();
    assert_eq!(versions.len(), 3, "a tenant is left on several versions: {versions:?}");
    for (tenant, id, _) in &acknowledged {
        let row = services.media.get(tenant, id).await.unwrap_or_else(|e| panic!("{tenant}/{id}: {e}"));
        assert!(row.is_some(), "{tenant}/{id} lost");
    }
    services.db.close().await;
    assert_readable(&service, |tenant| tokens[tenant].clone(), &acknowledged).await;
    service.stop();
}

/// Runs `program` as the `postgres` user when the tests run as root (initdb refuses root).
fn as_pg_owner(program: &str) -> Command {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL cluster of this test's own (initdb + pg_ctl), removed at drop.
struct OwnPostgres {
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("media-api-faults-pg-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = Command::new("chown").args(["postgres", &dir.display().to_string()]).status();
        let status = as_pg_owner("initdb")
            .args(["-D", &dir.join("data").display().to_string(), "-U", "postgres", "-A", "trust"])
            .stdout(Stdio::null())
            .status()
            .expect("initdb (PostgreSQL server binaries) is on PATH");
        assert!(status.success(), "initdb failed");
        let cluster = Self { dir, port: free_port() };
        cluster.start();
        cluster
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.join("data").display().to_string();
        let status = as_pg_owner("pg_ctl").args(["-D", &data, "-w"]).args(args).stdout(Stdio::null()).status();
        assert!(status.unwrap().success(), "pg_ctl {args:?} failed");
    }

    fn start(&self) {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.display());
        let log = self.dir.join("server.log").display().to_string();
        self.pg_ctl(&["-o", &options, "-l", &log, "start"]);
    }

    fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data").display().to_string();
        let _ = as_pg_owner("pg_ctl").args(["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A single-node Garage of this test's own (same binary as `scripts/test`'s), stoppable.
struct OwnGarage {
    bin: String,
    config: PathBuf,
    child: Option<Child>,
    s3: S3Target,
}

impl OwnGarage {
    fn create(root: &Path) -> Self {
        let bin = std::env::var("GARAGE_BIN").unwrap_or_else(|_| "garage".into());
        let dir = root.join("garage");
        std::fs::create_dir_all(&dir).unwrap();
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                 rpc_secret = \"{secret}\"\n[s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                 [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
                d = dir.display(),
                secret = random_hex(32),
            ),
        )
        .unwrap();
        let (access_key, secret_key) = (format!("GK{}", random_hex(12)), random_hex(32));
        let s3 = S3Target {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            bucket: "faults".into(),
            access_key,
            secret_key,
        };
        let mut garage = Self { bin, config, child: None, s3 };
        garage.start();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.split('@').next().unwrap().trim().to_owned();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        let (key, secret) = (garage.s3.access_key.clone(), garage.s3.secret_key.clone());
        garage.cli(&["key", "import", "--yes", "-n", "faults", &key, &secret]);
        garage.cli(&["bucket", "create", "faults"]);
        garage.cli(&["bucket", "allow", "--read", "--write", "--owner", "faults", "--key", &key]);
        garage
    }

    fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(&self.bin).arg("-c").arg(&self.config).args(args).output().unwrap();
        assert!(output.status.success(), "garage {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.config.with_file_name("garage.log"));
        let log = log.unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("garage runs (scripts/test exports GARAGE_BIN)");
        self.child = Some(child);
        for _ in 0..100 {
            let status = Command::new(&self.bin).arg("-c").arg(&self.config).arg("status").output().unwrap();
            if status.status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("garage did not start");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnGarage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request of the steady load: what it was, when it was sent, its status and code, its latency.
#[derive(Debug, Clone)]
struct Outcome {
    kind: &'static str,
    at: Instant,
    status: u16,
    code: String,
    latency: Duration,
}

/// Uploads, presigns and resolves in a loop until `stop`, recording every outcome; acknowledged
/// uploads go to `stored`.
fn steady_load(
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

async fn readiness(http: &reqwest::Client, service: &Service) -> (u16, Value) {
    let response = http.get(service.url("/readyz")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Polls `/readyz` until it answers `want` (at most `within`); returns how long that took.
async fn wait_ready(http: &reqwest::Client, service: &Service, want: u16, within: Duration) -> Duration {
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
/// upload has failed, then brings it back with `switch(true)` and waits for readiness. Returns when
/// it went down, when it came back, and how long readiness took to return.
async fn outage(
    http: &reqwest::Client,
    service: &Service,
    log: &Mutex<Vec<Outcome>>,
    dependency: &str,
    mut switch: impl FnMut(bool),
) -> (Instant, Instant, Duration) {
    let down = Instant::now();
    switch(false);
    wait_ready(http, service, 503, Duration::from_secs(15)).await;
    let (_, body) = readiness(http, service).await;
    for check in ["database", "storage"] {
        let expected = if check == dependency { "down" } else { "ok" };
        assert_eq!(body["checks"][check].as_str(), Some(expected), "{dependency} down: {body}");
    }
    wait_for_failed_upload(log, down).await;
    let back = Instant::now();
    switch(true);
    let recovery = wait_ready(http, service, 200, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    (down, back, recovery)
}

/// Waits (at most 30 s) until an upload sent after `since` has failed, so each outage window holds
/// at least one, however slow the machine.
async fn wait_for_failed_upload(log: &Mutex<Vec<Outcome>>, since: Instant) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let failed = log.lock().unwrap().iter().any(|o| o.kind == "upload" && o.at > since && o.status != 200);
        if failed {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no upload failed within 30 s of the outage");
}

/// Outcomes of requests sent within `from..to`, as (kind, status, code) → count.
fn tally(log: &[Outcome], from: Instant, to: Instant) -> BTreeMap<(&'static str, u16, String), usize> {
    let mut counts = BTreeMap::new();
    for outcome in log.iter().filter(|o| o.at >= from && o.at < to) {
        *counts.entry((outcome.kind, outcome.status, outcome.code.clone())).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn postgres_then_garage_stopped_under_load_fail_fast_with_503_and_recover_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = OwnPostgres::create();
    let mut garage = OwnGarage::create(dir.path());
    let own = [
        ("MEDIA_DATABASE_URL", postgres.url()),
        ("MEDIA_S3_ENDPOINT", garage.s3.endpoint.clone()),
        ("MEDIA_S3_REGION", "garage".into()),
        ("MEDIA_S3_BUCKET", garage.s3.bucket.clone()),
        ("MEDIA_S3_ACCESS_KEY", garage.s3.access_key.clone()),
        ("MEDIA_S3_SECRET_KEY", garage.s3.secret_key.clone()),
        ("MEDIA_DATABASE_ACQUIRE_TIMEOUT", "2s".into()),
        ("MEDIA_RECORD_CACHE_TTL", "0".into()),
    ];
    let own: Vec<(&str, &str)> = own.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Built from the SQLite defaults so that nothing is created on the shared PostgreSQL server.
    let vars = binary_vars(Stack::SqliteFs, dir.path(), &own).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    wait_ready(&http, &service, 200, Duration::from_secs(10)).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let token = token(&vars, "tenant-a", "alice");
    let load = steady_load(service.base.clone(), token.clone(), stop.clone(), log.clone(), stored.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    // PostgreSQL goes away, then Garage.
    let t_healthy = Instant::now();
    let (t_pg_down, t_pg_back, pg_recovery) =
        outage(&http, &service, &log, "database", |up| if up { postgres.start() } else { postgres.stop() }).await;
    let (t_s3_down, t_s3_back, s3_recovery) =
        outage(&http, &service, &log, "storage", |up| if up { garage.start() } else { garage.stop() }).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let t_end = Instant::now();

    let log = log.lock().unwrap().clone();
    let healthy = tally(&log, t_healthy - Duration::from_secs(2), t_healthy);
    assert!(healthy.keys().all(|(_, status, _)| *status == 200), "before any fault: {healthy:?}");
    // While a dependency is down every failure is a 503 with the dependency's code, answered
    // within a few seconds (the pool's 2 s acquire timeout, the S3 client's retries).
    for (from, to, code) in
        [(t_pg_down, t_pg_back, "database_unavailable"), (t_s3_down, t_s3_back, "storage_unavailable")]
    {
        let window: Vec<&Outcome> = log.iter().filter(|o| o.at >= from && o.at < to).collect();
        let failed: Vec<&&Outcome> = window.iter().filter(|o| o.status != 200).collect();
        let outage = to.duration_since(from);
        assert!(failed.iter().any(|o| o.kind == "upload"), "{code}: no upload failed in {outage:?}: {window:?}");
        for outcome in &failed {
            assert_eq!((outcome.status, outcome.code.as_str()), (503, code), "{outcome:?}");
            assert!(outcome.latency < Duration::from_secs(8), "not fast: {outcome:?}");
        }
    }
    // After each return, requests succeed again with no restart.
    for (from, to) in [(t_pg_back + pg_recovery, t_s3_down), (t_s3_back + s3_recovery, t_end)] {
        let after = tally(&log, from + Duration::from_millis(500), to);
        assert!(after.iter().any(|((kind, status, _), _)| *kind == "upload" && *status == 200), "{after:?}");
        let ok = after.keys().all(|(_, status, _)| *status == 200);
        assert!(ok, "after recovery: {after:?}\n{}", service.logs());
    }
    // Nothing acknowledged was lost, nothing is left unreferenced.
    let stored = stored.lock().unwrap().clone();
    assert!(stored.len() >= 10, "{} uploads acknowledged", stored.len());
    assert_readable(&service, |_| token.clone(), &stored).await;
    let sweep = run(&vars, &["sweep", "--abandoned-after", "0s"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    // More rows than acknowledgements only when a commit went through but its answer was lost.
    assert!(assert_rows_match_objects(&vars, &garage.s3).await >= stored.len());
    service.stop();
}
