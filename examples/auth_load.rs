//! Load generator for `scripts/bench-auth`: hammers `GET /v1/auth/whoami` of a running service (in
//! `AUTH_MODE=optional`) over keep-alive connections and prints requests per second as JSON.
//!
//! `auth_load <base-url> <keys-dir> <none|reuse|fresh> <seconds> <connections>`
//! - `none`: no Authorization header (the anonymous principal: the unauthenticated baseline);
//! - `reuse`: one dev-issuer token for every request (what a client does);
//! - `fresh`: a different token on every request (every request pays a signature check).

use std::sync::Arc;
use std::time::Duration;

use media_api::auth::dev_issuer::{DevIssuer, TokenRequest};
use media_api::config::Config;

#[path = "common/load.rs"]
mod load;

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
    load::closed_loop(connections, seconds, move |n| {
        let mut request = client.get(&url);
        if let Some(token) = &tokens[n as usize % tokens.len()] {
            request = request.bearer_auth(token);
        }
        async move { load::expect_success(request.send().await?, "whoami").await }
    })
    .await
}
