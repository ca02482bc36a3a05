//! Load generator for `scripts/bench-auth`: hammers `GET /v1/auth/whoami` of a running service (in
//! `AUTH_MODE=optional`) over keep-alive connections and prints requests per second as JSON.
//!
//! `auth_load <base-url> <keys-dir> <none|reuse|fresh> <seconds> <connections>`
//! - `none`: no Authorization header (the anonymous principal: the unauthenticated baseline);
//! - `reuse`: one dev-issuer token for every request (what a client does);
//! - `fresh`: a different token on every request (every request pays a signature check).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_api::auth::dev_issuer::{DevIssuer, TokenRequest};
use media_api::config::Config;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, keys_dir, mode, seconds, connections] = args.as_slice() else {
        anyhow::bail!("usage: auth_load <base-url> <keys-dir> <none|reuse|fresh> <seconds> <connections>");
    };
    let seconds: u64 = seconds.parse()?;
    let connections: usize = connections.parse()?;
    let tokens = tokens(keys_dir, mode, seconds)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let rps = runtime.block_on(load(format!("{base}/v1/auth/whoami"), tokens, seconds, connections))?;
    println!("{}", serde_json::json!({ "mode": mode, "requests_per_second": rps }));
    Ok(())
}

/// The tokens to send: none, one, or enough distinct ones that none repeats during the run.
fn tokens(keys_dir: &str, mode: &str, seconds: u64) -> anyhow::Result<Arc<Vec<Option<String>>>> {
    let count = match mode {
        "none" => return Ok(Arc::new(vec![None])),
        "reuse" => 1,
        "fresh" => 40_000 * seconds as usize,
        other => anyhow::bail!("unknown mode {other:?}"),
    };
    let config = Config::from_vars(&Default::default())?;
    let issuer = DevIssuer::load_or_create(std::path::Path::new(keys_dir))?;
    (0..count)
        .map(|i| {
            let subject = format!("bench-{i}");
            let request = TokenRequest {
                subject: &subject,
                tenant: "bench",
                roles: &[],
                scopes: &[],
                ttl: Duration::from_secs(3600),
            };
            Ok(Some(issuer.mint(&config.auth, &request)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map(Arc::new)
}

async fn load(url: String, tokens: Arc<Vec<Option<String>>>, seconds: u64, connections: usize) -> anyhow::Result<f64> {
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(connections).build()?;
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
            let (done, next, stop) = (done.clone(), next.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed) as usize % tokens.len();
                    let mut request = client.get(&url);
                    if let Some(token) = &tokens[index] {
                        request = request.bearer_auth(token);
                    }
                    let response = request.send().await?;
                    anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                    response.bytes().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / elapsed)
}
