//! Several replicas as deployed: N `media-api serve` processes on one fresh PostgreSQL database and
//! the test Garage (one master key, one keys directory, one storage prefix), behind an `haproxy`
//! child process (round-robin, health checks on `/readyz`). `scripts/test` finds or installs HAProxy
//! and exports `HAPROXY_BIN`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::app::{s3_client, s3_env, Stack};
use super::faults::{http, wait_ready};
use super::process::{binary_vars, free_port, token, var, Service};

/// The replicas, the balancer in front of them, and the directory holding their files.
pub struct Fleet {
    pub vars: Vec<(String, String)>,
    /// The balancer's base URL (`http://127.0.0.1:port`).
    pub balancer: String,
    pub http: reqwest::Client,
    replicas: Vec<Option<Service>>,
    bases: Vec<String>,
    haproxy: std::sync::Mutex<Child>,
    stats: String,
    dir: tempfile::TempDir,
}

/// HAProxy: `$HAPROXY_BIN`, else `haproxy` on PATH or in /usr/sbin; a clear failure otherwise.
pub fn haproxy_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|dir| dir.join("haproxy")).collect::<Vec<_>>())
        .unwrap_or_default();
    std::env::var_os("HAPROXY_BIN")
        .filter(|bin| !bin.is_empty())
        .map(PathBuf::from)
        .or_else(|| on_path.into_iter().chain([PathBuf::from("/usr/sbin/haproxy")]).find(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("HAProxy not found (HAPROXY_BIN unset, no haproxy on PATH or in /usr/sbin): run the tests with scripts/test, which installs it")
        })
}

/// The balancer's configuration: one frontend, the replicas round-robin, checked on `/readyz`
/// every 200 ms (down after 2 failures, up after 2 successes); a connection refused by a dead
/// replica is retried on another; a stats page (CSV) shows what HAProxy thinks of each.
pub fn haproxy_config(port: u16, stats: u16, replicas: &[String]) -> String {
    let servers: String = replicas
        .iter()
        .enumerate()
        .map(|(i, base)| format!("    server r{i} {} check\n", base.trim_start_matches("http://")))
        .collect();
    format!(
        "global
    maxconn 512

defaults
    mode http
    option http-server-close
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 30s
    timeout queue 30s

frontend media
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fastinter 100ms downinter 200ms fall 2 rise 2
{servers}
listen stats
    bind 127.0.0.1:{stats}
    stats enable
    stats uri /stats
"
    )
}

impl Fleet {
    /// Starts `n` replicas with the test defaults plus `extra`, then the balancer; returns once
    /// every replica reports ready and listens for invalidations, and HAProxy has every one up.
    pub async fn start(n: usize, extra: &[(&str, &str)]) -> Self {
        let bin = haproxy_bin();
        let dir = tempfile::tempdir().unwrap();
        let vars = binary_vars(Stack::PostgresS3, dir.path(), extra).await;
        token(&vars, "fleet", "warm-up"); // the dev issuer key, before the replicas race to make it
        let http = http();
        let mut replicas: Vec<Service> = (0..n).map(|_| Service::start(&vars)).collect();
        for replica in &mut replicas {
            replica.wait_up(&http).await;
            wait_ready(&http, replica, 200, Duration::from_secs(60)).await;
            wait_listening(&http, replica).await;
        }
        let bases: Vec<String> = replicas.iter().map(|r| r.base.clone()).collect();
        let (port, stats) = (free_port(), free_port());
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(port, stats, &bases)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let haproxy = Command::new(&bin)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", bin.display()));
        let fleet = Self {
            vars,
            balancer: format!("http://127.0.0.1:{port}"),
            http,
            replicas: replicas.into_iter().map(Some).collect(),
            bases,
            haproxy: std::sync::Mutex::new(haproxy),
            stats: format!("http://127.0.0.1:{stats}/stats;csv"),
            dir,
        };
        for i in 0..n {
            fleet.wait_server(i, "UP").await;
        }
        fleet
    }

    /// Replica `i`'s base URL (also after it was killed).
    pub fn replica(&self, i: usize) -> &str {
        &self.bases[i]
    }

    /// How many replicas were started.
    pub fn count(&self) -> usize {
        self.bases.len()
    }

    /// `path` through the balancer.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.balancer)
    }

    pub fn token(&self, tenant: &str) -> String {
        token(&self.vars, tenant, "alice")
    }

    /// The replicas' storage prefix, as the service uses it (ending in `/`).
    pub fn prefix(&self) -> String {
        format!("{}/", var(&self.vars, "MEDIA_STORAGE_PREFIX").trim_end_matches('/'))
    }

    /// `kill -9` of replica `i`.
    pub fn kill9(&mut self, i: usize) {
        self.replicas[i].take().expect("replica already killed").kill9();
    }

    /// What HAProxy's stats say of replica `i` (`UP`, `DOWN`, `UP 1/2`, …), or why they cannot
    /// be read (HAProxy not listening yet).
    pub async fn server_state(&self, i: usize) -> String {
        let csv = match self.http.get(&self.stats).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(err) => return format!("unreachable ({err})"),
        };
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (proxy, server, status) = (column("pxname"), column("svname"), column("status"));
        let name = format!("r{i}");
        lines
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields[proxy] == "replicas" && fields[server] == name)
            .map(|fields| fields[status].to_owned())
            .unwrap_or_else(|| panic!("{name} is not in HAProxy's stats: {csv}"))
    }

    /// Waits (at most 30 s) until HAProxy reports replica `i` as `state`.
    pub async fn wait_server(&self, i: usize, state: &str) {
        let started = Instant::now();
        loop {
            let now = self.server_state(i).await;
            if now == state {
                return;
            }
            if let Ok(Some(status)) = self.haproxy.lock().unwrap().try_wait() {
                panic!("haproxy exited with {status}: {}", self.logs());
            }
            assert!(started.elapsed() < Duration::from_secs(30), "r{i} is {now}, not {state}: {}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The logs of HAProxy and of every replica still running.
    pub fn logs(&self) -> String {
        let mut out =
            format!("haproxy: {}", std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default());
        for (i, replica) in self.replicas.iter().enumerate() {
            if let Some(replica) = replica {
                out.push_str(&format!("\nreplica {i}: {}", replica.logs()));
            }
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A failed test shows what the replicas and the balancer said (their files go with `dir`).
        if std::thread::panicking() {
            let logs = self.logs();
            let notable: Vec<&str> = logs.lines().filter(|l| !l.contains("\"level\":\"INFO\"")).collect();
            eprintln!("fleet logs (INFO lines left out):\n{}", notable.join("\n"));
        }
        let haproxy = self.haproxy.get_mut().unwrap();
        let _ = haproxy.kill();
        let _ = haproxy.wait();
        // The replicas are killed by their own Drop.
    }
}

/// Waits (at most 30 s) until `service` reports its invalidation listener connected: only then
/// does it cache, so what the tests see is the notification at work, not a cache that is off.
async fn wait_listening(http: &reqwest::Client, service: &Service) {
    let started = Instant::now();
    loop {
        let metrics = http.get(service.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let listening = |line: &str| {
            line.strip_prefix("media_cache_invalidation_listening ").and_then(|v| v.trim().parse::<f64>().ok())
                == Some(1.0)
        };
        if metrics.lines().any(listening) {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the invalidation listener never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A direct upload through `base`: prepare, PUT to the presigned URL, complete. The id when the
/// completion answered 200, else what failed.
pub async fn direct_upload(http: &reqwest::Client, base: &str, token: &str, body: Vec<u8>) -> Result<String, String> {
    let prepare = json!({"mime_type": "image/png", "bytes": body.len()});
    let request = http.post(format!("{base}/v1/media/prepare-upload")).bearer_auth(token).json(&prepare);
    let prepared = answer(request).await?;
    let mut put = http.put(prepared["upload_url"].as_str().unwrap_or_default()).body(body);
    for (name, value) in prepared["headers"].as_object().into_iter().flatten() {
        put = put.header(name.as_str(), value.as_str().unwrap_or_default());
    }
    let stored = put.send().await.map_err(|e| format!("PUT: {e}"))?;
    if !stored.status().is_success() {
        return Err(format!("PUT: {}", stored.status()));
    }
    let id = prepared["id"].as_str().unwrap_or_default();
    // As a client would: a completion cut off by a replica's death (no answer, or the balancer's
    // 502/503) is sent again; completing is idempotent.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let completed = answer(http.post(format!("{base}/v1/media/{id}/complete")).bearer_auth(token)).await;
        match completed {
            Err(e) if attempts < 3 && (e.starts_with("transport") || e.starts_with("502") || e.starts_with("503")) => {}
            completed => {
                let completed = completed?;
                return completed["id"].as_str().map(str::to_owned).ok_or_else(|| format!("complete: {completed}"));
            }
        }
    }
}

/// The JSON of a 200, else `"<status> <code>"` (the code is what the tests tell apart).
pub async fn answer(request: reqwest::RequestBuilder) -> Result<Value, String> {
    let response = request.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("{status} {}", body["code"].as_str().unwrap_or_default()))
    }
}

/// Objects under `prefix` in the test bucket, and multipart uploads open under it.
pub async fn bucket_count(prefix: &str) -> (usize, usize) {
    let (client, bucket) = (s3_client().await, s3_env().bucket);
    let mut objects = 0;
    let mut pages = client.list_objects_v2().bucket(&bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        objects += page.unwrap().contents().len();
    }
    let uploads = client.list_multipart_uploads().bucket(&bucket).prefix(prefix).send().await.unwrap();
    (objects, uploads.uploads().len())
}

/// Every object under `prefix` in the test bucket, with its bytes.
pub async fn bucket_objects(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let (client, bucket) = (s3_client().await, s3_env().bucket);
    let mut out = Vec::new();
    let mut pages = client.list_objects_v2().bucket(&bucket).prefix(prefix).into_paginator().send();
    while let Some(page) = pages.next().await {
        for object in page.unwrap().contents() {
            let key = object.key().unwrap().to_owned();
            let got = client.get_object().bucket(&bucket).key(&key).send().await.unwrap();
            out.push((key, got.body.collect().await.unwrap().into_bytes().to_vec()));
        }
    }
    out
}
