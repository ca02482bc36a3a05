//! Load generator for `scripts/bench-media`, against a running service; prints one JSON line per run.
//!
//! - `upload <base> <token> <MiB>`: one raw-body upload of a generated PNG-headed file, streamed.
//! - `direct <base> <token> <MiB>`: `prepare-upload`, then the same bytes PUT straight to the
//!   presigned URL (the service is not in the data path; only the PUT is timed).
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

use serde_json::{json, Value};

#[path = "common/load.rs"]
mod load;

const PNG_HEAD: &[u8] = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00";

/// A streamed body of `len` bytes starting with a PNG signature.
fn generated(len: u64, seed: u64) -> reqwest::Body {
    reqwest::Body::wrap_stream(load::generated(len, seed, PNG_HEAD))
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

    async fn upload(&self, len: u64, seed: u64) -> anyhow::Result<Value> {
        let response = self.upload_request(len, seed).send().await?;
        anyhow::ensure!(response.status().is_success(), "upload answered {}", response.status());
        Ok(response.json().await?)
    }

    async fn direct(&self, len: u64) -> anyhow::Result<f64> {
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
        let mut request = self.http.put(url).body(generated(len, 7));
        for (name, value) in prepared["headers"].as_object().into_iter().flatten() {
            request = request.header(name.as_str(), value.as_str().unwrap_or_default());
        }
        let started = Instant::now();
        let response = request.send().await?;
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(response.status().is_success(), "direct PUT answered {}", response.status());
        Ok(elapsed)
    }
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
        anyhow::bail!("usage: media_load <upload|direct|resolve|presign|flood|mixed> <base-url> <token> <args…>");
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
            "upload" => {
                let len = number(3)? * 1024 * 1024;
                let started = Instant::now();
                target.upload(len, 1).await?;
                let seconds = started.elapsed().as_secs_f64();
                Ok(json!({"mode": "upload", "mib": len >> 20, "seconds": seconds, "mib_per_s": (len >> 20) as f64 / seconds}))
            }
            "direct" => {
                let len = number(3)? * 1024 * 1024;
                let seconds = target.direct(len).await?;
                Ok(json!({"mode": "direct", "mib": len >> 20, "seconds": seconds, "mib_per_s": (len >> 20) as f64 / seconds}))
            }
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
