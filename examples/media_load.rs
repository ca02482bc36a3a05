//! Load generator for `scripts/bench-media`, against a running service; prints one JSON line per run.
//!
//! - `upload <base> <token> <MiB>`: one raw-body upload of a generated PNG-headed file, streamed
//!   with its `Content-Length`. Every upload (and `direct` PUT) sends bytes of a fresh seed: nothing
//!   repeats an earlier run's bytes, so neither Garage's block dedup nor the service's applies.
//! - `chunked <base> <token> <MiB>`: the same raw upload without a `Content-Length` (chunked
//!   transfer encoding, as a client streaming from a pipe sends it).
//! - `form <base> <token> <MiB>` / `form-len <base> <token> <MiB>`: the same bytes as the `file`
//!   part of a multipart form to `POST /v1/media/upload`, streamed as `curl -F file=@…` does (a
//!   `user_id` part, then the file part with its filename and type, a curl-style boundary), without
//!   and with the form's `Content-Length` (curl sends it for `-F` files).
//! - `direct <base> <token> <MiB>`: `prepare-upload`, then the same bytes PUT straight to the
//!   presigned URL (the service is not in the data path; only the PUT is timed).
//! - `direct-chunked <base> <token> <MiB>`: the same bytes straight to S3 as one `PutObject` without
//!   a `Content-Length` (`common/direct_parts.rs`).
//! - `direct-parts <base> <token> <MiB>`: the same bytes straight to S3 as a multipart upload by the
//!   plain SDK, parts as the service cuts them (`common/direct_parts.rs`): what multipart costs the
//!   store, without the service.
//!
//!   Each of these reports the CPU seconds spent during the timed section by this process
//!   (`client`) and by the processes `MEDIA_LOAD_CPU_PIDS` names (`garage=PID,service=PID`).
//!
//!   After the timing, each of these deletes what it stored (`DELETE /v1/media/{id}`; a direct PUT is
//!   first completed, so that its staged object goes too): a long benchmark run holds on the disk only
//!   what Garage has not yet freed (it frees a deleted object's blocks ten minutes later). With
//!   `MEDIA_LOAD_KEEP=1` the media stay.
//! - `download <base> <token> <MiB> <rounds>`: uploads one file of `MiB`, then per round reads it
//!   whole through the service (`GET /v1/media/{id}`, proxied) and straight from S3 through its
//!   presigned URL, one after the other; MiB/s of each read.
//! - `read <base> <token> <id> <MiB>`: reads media `id` (`MiB` long) whole through the service
//!   once; MiB/s.
//! - `resolve <base> <token> <rate> <seconds>`: uploads 20 images, then sends a 20-placeholder resolve
//!   payload at a fixed rate (open loop) and reports latency percentiles.
//! - `presign <base> <token> <connections> <seconds>`: `GET /v1/media/{id}/presign` as fast as the
//!   connections allow, requests per second.
//! - `flood <base> <token> <parallel> <MiB>`: `parallel` raw uploads of `MiB` each at once (each
//!   request once, no retry); the count of each status (`scripts/bench-limits`).
//! - `mixed <base> <token> <rate> <seconds>`: the soak workload (`scripts/soak`), open loop at
//!   `rate` requests/s: 15 % uploads of 10 KiB–20 MiB (log-uniform sizes), 40 % presigns, 40 %
//!   resolves (4–20 placeholders), 5 % bad requests (each of a kind with a known answer). One
//!   JSON line per request on stdout (`t`, `route`, `status`, `ms`, `expected`), then a summary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

#[path = "common/direct_parts.rs"]
mod direct_parts;
#[path = "common/load.rs"]
mod load;

/// A boundary of the shape curl uses (24 dashes, then 22 alphanumerics).
const BOUNDARY: &str = "------------------------d74496d66958873e8b1c2a";

/// How an upload sends its bytes (see the module docs).
#[derive(Clone, Copy, PartialEq)]
enum Form {
    Raw,
    Chunked,
    Multipart,
    MultipartWithLength,
}

impl Form {
    fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "upload" => Self::Raw,
            "chunked" => Self::Chunked,
            "form" => Self::Multipart,
            "form-len" => Self::MultipartWithLength,
            _ => return None,
        })
    }
}

const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00";

/// A streamed body of `len` bytes starting with a PNG signature.
/// A seed no other run used: every timed upload sends bytes the store has not seen, as clients do
/// (the same bytes again would be deduplicated by Garage's block store — no block written — and by
/// the service's own dedup, flattering whichever side repeats them).
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    (nanos.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
}

fn generated(len: u64, seed: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(load::generated(len, seed, PNG_HEAD))
}

/// `MEDIA_LOAD_KEEP=1`: what a run stores stays (see the module docs).
fn keep() -> bool {
    std::env::var("MEDIA_LOAD_KEEP").is_ok_and(|keep| keep == "1")
}

struct Target {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Target {
    /// A raw upload of a generated PNG-headed file of `len` bytes.
    fn upload_request(&self, len: u64, seed: u64) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}/v1/media", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "image/png")
            .header("content-length", len)
            .body(generated(len, seed))
    }

    /// An upload of `len` generated bytes sent the way `form` says.
    fn form_request(&self, form: Form, len: u64, seed: u64) -> reqwest::RequestBuilder {
        match form {
            Form::Raw => self.upload_request(len, seed),
            Form::Chunked => self
                .http
                .post(format!("{}/v1/media", self.base))
                .bearer_auth(&self.token)
                .header("content-type", "image/png")
                .body(generated(len, seed)),
            Form::Multipart | Form::MultipartWithLength => {
                let head = format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"user_id\"\r\n\r\nbench\r\n\
                     --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.png\"\r\n\
                     Content-Type: image/png\r\n\r\n"
                );
                let tail = format!("\r\n--{BOUNDARY}--\r\n");
                let total = head.len() as u64 + len + tail.len() as u64;
                let body = futures::stream::once(async move { Ok(bytes::Bytes::from(head)) })
                    .chain(load::generated(len, seed, PNG_HEAD))
                    .chain(futures::stream::once(async move { Ok(bytes::Bytes::from(tail)) }));
                let request = self
                    .http
                    .post(format!("{}/v1/media/upload", self.base))
                    .bearer_auth(&self.token)
                    .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"));
                let request =
                    if form == Form::MultipartWithLength { request.header("content-length", total) } else { request };
                request.body(reqwest::Body::wrap_stream(body))
            }
        }
    }

    async fn upload(&self, len: u64, seed: u64) -> anyhow::Result<Value> {
        self.upload_as(Form::Raw, len, seed).await
    }

    async fn upload_as(&self, form: Form, len: u64, seed: u64) -> anyhow::Result<Value> {
        let response = self.form_request(form, len, seed).send().await?;
        anyhow::ensure!(response.status().is_success(), "upload answered {}", response.status());
        Ok(response.json().await?)
    }

    /// Deletes media `id` (untimed), unless `MEDIA_LOAD_KEEP=1`.
    async fn discard(&self, id: &str) -> anyhow::Result<()> {
        if keep() {
            return Ok(());
        }
        let response = self.http.delete(format!("{}/v1/media/{id}", self.base)).bearer_auth(&self.token).send().await?;
        anyhow::ensure!(response.status().is_success(), "DELETE {id} answered {}", response.status());
        Ok(())
    }

    /// Completes the direct upload `id` (its staged object is deleted on the way), then deletes it.
    async fn discard_direct(&self, id: &str) -> anyhow::Result<()> {
        if keep() {
            return Ok(());
        }
        let url = format!("{}/v1/media/{id}/complete", self.base);
        let response = self.http.post(url).bearer_auth(&self.token).send().await?;
        anyhow::ensure!(response.status().is_success(), "complete {id} answered {}", response.status());
        let stored: Value = response.json().await?;
        self.discard(stored["id"].as_str().unwrap_or(id)).await
    }

    /// When the PUT started (seconds since the epoch), its seconds, and the CPU each watched process
    /// spent meanwhile.
    async fn direct(&self, len: u64) -> anyhow::Result<(f64, f64, Value)> {
        let prepared: Value = self
            .http
            .post(format!("{}/v1/media/prepare-upload", self.base))
            .bearer_auth(&self.token)
            .json(&json!({"mime_type": "image/png", "bytes": len}))
            .send()
            .await?
            .json()
            .await?;
        let url = prepared["upload_url"].as_str().ok_or_else(|| anyhow::anyhow!("no upload_url: {prepared}"))?;
        let mut request = self.http.put(url).body(generated(len, fresh_seed()));
        for (name, value) in prepared["headers"].as_object().into_iter().flatten() {
            request = request.header(name.as_str(), value.as_str().unwrap_or_default());
        }
        let (started_unix, started, cpu) = (unix_now(), Instant::now(), load::CpuClocks::start());
        let response = request.send().await?;
        let (elapsed, cpu_s) = (started.elapsed().as_secs_f64(), cpu.spent());
        anyhow::ensure!(response.status().is_success(), "direct PUT answered {}", response.status());
        let id = prepared["id"].as_str().ok_or_else(|| anyhow::anyhow!("no id: {prepared}"))?;
        self.discard_direct(id).await?;
        Ok((started_unix, elapsed, cpu_s))
    }
}

/// The report of one timed upload of `len` bytes: its rate, and the CPU seconds each watched
/// process spent meanwhile (`load::CpuClocks`).
/// `started_unix` is when it started, in seconds since the epoch (`scripts/trace-s3-parts` lines
/// it up with the service's log).
fn timed_upload(mode: &str, len: u64, started_unix: f64, seconds: f64, cpu_s: Value) -> Value {
    let mib_per_s = (len >> 20) as f64 / seconds;
    json!({"mode": mode, "mib": len >> 20, "started_unix": started_unix, "seconds": seconds, "mib_per_s": mib_per_s, "cpu_s": cpu_s})
}

/// Now, in seconds since the epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |since| since.as_secs_f64())
}

/// Reads a response's body to its end; MiB/s from the request to the last byte.
async fn timed_read(request: reqwest::RequestBuilder, len: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = request.send().await?;
    anyhow::ensure!(response.status().is_success(), "download answered {}", response.status());
    let mut body = response.bytes_stream();
    let mut read = 0u64;
    while let Some(chunk) = body.next().await {
        read += chunk?.len() as u64;
    }
    anyhow::ensure!(read == len, "read {read} bytes, not {len}");
    Ok((len as f64 / (1024.0 * 1024.0)) / started.elapsed().as_secs_f64())
}

async fn download(target: Arc<Target>, len: u64, rounds: u64) -> anyhow::Result<Value> {
    let id = target.upload(len, 9).await?["id"].as_str().unwrap_or_default().to_owned();
    let (mut proxied, mut direct) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // The order turns every round, so neither read always comes first (after the upload, or
        // after the other read).
        let through = || target.http.get(format!("{}/v1/media/{id}", target.base)).bearer_auth(&target.token);
        if round % 2 == 0 {
            proxied.push(timed_read(through(), len).await?);
        }
        let presigned: Value = target
            .http
            .get(format!("{}/v1/media/{id}/presign", target.base))
            .bearer_auth(&target.token)
            .send()
            .await?
            .json()
            .await?;
        let url = presigned["url"].as_str().ok_or_else(|| anyhow::anyhow!("no url: {presigned}"))?;
        direct.push(timed_read(target.http.get(url), len).await?);
        if round % 2 == 1 {
            proxied.push(timed_read(through(), len).await?);
        }
    }
    Ok(json!({"mode": "download", "mib": len >> 20, "proxied_mib_per_s": proxied, "direct_mib_per_s": direct}))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn resolve(target: Arc<Target>, rate: u64, seconds: u64) -> anyhow::Result<Value> {
    let mut content = Vec::new();
    for seed in 0..20 {
        let uploaded = target.upload(2000 + seed, 1000 + seed).await?;
        let id = uploaded["id"].as_str().unwrap_or_default().to_owned();
        content.push(json!({"type": "image_url", "image_url": {"url": format!("data:image/png;{id}")}}));
    }
    let body = Arc::new(json!({"payload": {"model": "m", "messages": [{"role": "user", "content": content}]}}));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * seconds;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        ticker.tick().await;
        let (target, body) = (target.clone(), body.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            let response = target
                .http
                .post(format!("{}/v1/media/resolve", target.base))
                .bearer_auth(&target.token)
                .json(&*body)
                .send()
                .await?;
            anyhow::ensure!(response.status().is_success(), "resolve answered {}", response.status());
            response.bytes().await?;
            Ok(started.elapsed().as_secs_f64() * 1000.0)
        });
    }
    let mut latencies = Vec::with_capacity(total as usize);
    while let Some(result) = tasks.join_next().await {
        latencies.push(result??);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(json!({
        "mode": "resolve", "placeholders": 20, "rate": rate, "requests": latencies.len(),
        "p50_ms": percentile(&latencies, 0.50), "p99_ms": percentile(&latencies, 0.99),
        "max_ms": latencies.last().copied().unwrap_or_default(),
    }))
}

async fn presign(target: Arc<Target>, connections: usize, seconds: u64) -> anyhow::Result<Value> {
    let uploaded = target.upload(3000, 42).await?;
    let url = format!("{}/v1/media/{}/presign", target.base, uploaded["id"].as_str().unwrap_or_default());
    let rate = load::closed_loop(connections, seconds, move |_| {
        let request = target.http.get(&url).bearer_auth(&target.token);
        async move { load::expect_success(request.send().await?, "presign").await }
    })
    .await?;
    Ok(json!({"mode": "presign", "connections": connections, "requests_per_second": rate}))
}

/// `parallel` uploads of `len` bytes at once; how many got each status.
async fn flood(target: Arc<Target>, parallel: u64, len: u64) -> anyhow::Result<Value> {
    let started = Instant::now();
    let requests = (0..parallel).map(|seed| {
        let target = target.clone();
        async move {
            let response = target.upload_request(len, 1000 + seed).send().await;
            match response {
                Ok(response) => response.status().as_u16().to_string(),
                Err(err) if err.is_connect() => "connect_error".to_owned(),
                // The service answered (503/429) before reading the body and closed the request.
                Err(err) => err.status().map_or_else(|| "transport_error".to_owned(), |s| s.as_u16().to_string()),
            }
        }
    });
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    for status in futures::future::join_all(requests).await {
        *statuses.entry(status).or_default() += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({"mode": "flood", "parallel": parallel, "mib": len >> 20, "seconds": seconds, "statuses": statuses}))
}

/// One request of the mixed workload: its route label, the request, and the status a correct
/// service answers (`None`: 200).
fn mixed_request(target: &Target, known: &[String], n: u64) -> (&'static str, reqwest::RequestBuilder, Option<u16>) {
    let pick = |k: u64| known[(k % known.len() as u64) as usize].clone();
    let base = &target.base;
    match n % 20 {
        0..=2 => {
            // log-uniform between 10 KiB and 20 MiB
            let fraction = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
            let len = (10.0 * 1024.0 * 2048f64.powf(fraction)) as u64;
            ("upload", target.upload_request(len, 50_000 + n), None)
        }
        3..=10 => (
            "presign",
            target.http.get(format!("{base}/v1/media/{}/presign", pick(n))).bearer_auth(&target.token),
            None,
        ),
        11..=18 => {
            let content: Vec<Value> = (0..4 + n % 17)
                .map(|k| json!({"type": "image_url", "image_url": {"url": format!("data:image/png;{}", pick(n + k))}}))
                .collect();
            let body = json!({"payload": {"messages": [{"role": "user", "content": content}]}});
            (
                "resolve",
                target.http.post(format!("{base}/v1/media/resolve")).bearer_auth(&target.token).json(&body),
                None,
            )
        }
        _ => match (n / 20) % 4 {
            0 => (
                "bad:token",
                target.http.get(format!("{base}/v1/media/{}", pick(n))).bearer_auth("not-a-token"),
                Some(401),
            ),
            1 => (
                "bad:unknown_id",
                target
                    .http
                    .get(format!("{base}/v1/media/jan_00000000000000000000000000/presign"))
                    .bearer_auth(&target.token),
                Some(404),
            ),
            2 => (
                "bad:json",
                target
                    .http
                    .post(format!("{base}/v1/media/resolve"))
                    .bearer_auth(&target.token)
                    .header("content-type", "application/json")
                    .body("{\"payload\":"),
                Some(400),
            ),
            _ => (
                "bad:type",
                target
                    .http
                    .post(format!("{base}/v1/media"))
                    .bearer_auth(&target.token)
                    .header("content-type", "image/png")
                    .body("<html><script>alert(1)</script></html>"),
                Some(415),
            ),
        },
    }
}

/// The soak workload (see the module docs).
async fn mixed(target: Arc<Target>, rate: u64, seconds: u64) -> anyhow::Result<Value> {
    let mut known = Vec::new();
    for seed in 0..20 {
        known.push(target.upload(4000 + seed, 7000 + seed).await?["id"].as_str().unwrap_or_default().to_owned());
    }
    let known = Arc::new(known);
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..rate * seconds {
        ticker.tick().await;
        let (target, known) = (target.clone(), known.clone());
        tasks.spawn(async move {
            let (route, request, expected) = mixed_request(&target, &known, n);
            let sent = Instant::now();
            let status = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            let line = json!({
                "t": sent.duration_since(started).as_secs_f64(), "route": route, "status": status,
                "ms": sent.elapsed().as_secs_f64() * 1000.0, "expected": expected.unwrap_or(200),
            });
            println!("{line}");
            (route, status == expected.unwrap_or(200))
        });
    }
    let (mut total, mut unexpected) = (0u64, 0u64);
    while let Some(result) = tasks.join_next().await {
        let (_, ok) = result?;
        total += 1;
        unexpected += u64::from(!ok);
    }
    Ok(json!({"mode": "mixed", "rate": rate, "seconds": seconds, "requests": total, "unexpected": unexpected}))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(base), Some(token)) = (args.first(), args.get(1), args.get(2)) else {
        anyhow::bail!("usage: media_load <upload|chunked|form|form-len|direct|direct-parts|direct-chunked|download|read|resolve|presign|flood|mixed> <base-url> <token> <args…>");
    };
    let number = |i: usize| -> anyhow::Result<u64> {
        Ok(args.get(i).ok_or_else(|| anyhow::anyhow!("missing argument {i}"))?.parse()?)
    };
    let target = Arc::new(Target {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: base.trim_end_matches('/').to_owned(),
        token: token.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let report = runtime.block_on(async {
        match mode.as_str() {
            form @ ("upload" | "chunked" | "form" | "form-len") => {
                let len = number(3)? * 1024 * 1024;
                let (started_unix, started, cpu) = (unix_now(), Instant::now(), load::CpuClocks::start());
                let stored = target.upload_as(Form::parse(form).expect("an upload mode"), len, fresh_seed()).await?;
                let (seconds, cpu_s) = (started.elapsed().as_secs_f64(), cpu.spent());
                anyhow::ensure!(
                    stored["bytes"].as_u64() == Some(len),
                    "{form} stored {} bytes, not {len}",
                    stored["bytes"]
                );
                target.discard(stored["id"].as_str().unwrap_or_default()).await?;
                Ok(timed_upload(form, len, started_unix, seconds, cpu_s))
            }
            "direct" => {
                let len = number(3)? * 1024 * 1024;
                let (started_unix, seconds, cpu_s) = target.direct(len).await?;
                Ok(timed_upload("direct", len, started_unix, seconds, cpu_s))
            }
            direct @ ("direct-parts" | "direct-chunked") => {
                let len = number(3)? * 1024 * 1024;
                let (s3, bucket) = direct_parts::client()?;
                let key = format!("bench-{direct}/{:016x}", fresh_seed());
                let body = load::generated(len, fresh_seed(), PNG_HEAD);
                let (started_unix, started, cpu) = (unix_now(), Instant::now(), load::CpuClocks::start());
                if direct == "direct-parts" {
                    direct_parts::upload(&s3, &bucket, &key, body).await?;
                } else {
                    direct_parts::put_chunked(&s3, &bucket, &key, body).await?;
                }
                let (seconds, cpu_s) = (started.elapsed().as_secs_f64(), cpu.spent());
                if !keep() {
                    s3.delete_object().bucket(&bucket).key(&key).send().await?;
                }
                Ok(timed_upload(direct, len, started_unix, seconds, cpu_s))
            }
            "read" => {
                let (id, len) = (args.get(3).cloned().unwrap_or_default(), number(4)? * 1024 * 1024);
                let through = target.http.get(format!("{}/v1/media/{id}", target.base)).bearer_auth(&target.token);
                Ok(json!({"mode": "read", "mib": len >> 20, "mib_per_s": timed_read(through, len).await?}))
            }
            "download" => download(target.clone(), number(3)? * 1024 * 1024, number(4)?).await,
            "resolve" => resolve(target.clone(), number(3)?, number(4)?).await,
            "presign" => presign(target.clone(), number(3)? as usize, number(4)?).await,
            "flood" => flood(target.clone(), number(3)?, number(4)? * 1024 * 1024).await,
            "mixed" => mixed(target.clone(), number(3)?, number(4)?).await,
            other => anyhow::bail!("unknown mode {other:?}"),
        }
    })?;
    println!("{report}");
    Ok(())
}
