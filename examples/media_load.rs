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

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(base), Some(token)) = (args.first(), args.get(1), args.get(2)) else {
        anyhow::bail!("usage: media_load <upload|direct|resolve|presign> <base-url> <token> <args…>");
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
            other => anyhow::bail!("unknown mode {other:?}"),
        }
    })?;
    println!("{report}");
    Ok(())
}
