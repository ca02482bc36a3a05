//! `media-api healthcheck`: a tiny HTTP probe of `/healthz`, so a container image needs no shell or
//! curl for its `HEALTHCHECK`.

use std::process::ExitCode;
use std::time::Duration;

/// Options of `healthcheck`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// URL to probe (default: http://127.0.0.1:$MEDIA_API_PORT/healthz).
    #[arg(long)]
    pub url: Option<String>,
}

/// Exits 0 when the URL answers 200 within 3 seconds, 1 otherwise.
pub async fn run(opts: &Opts) -> ExitCode {
    let url = opts.url.clone().unwrap_or_else(|| {
        let port = std::env::var("MEDIA_API_PORT").unwrap_or_else(|_| "8285".into());
        format!("http://127.0.0.1:{port}/healthz")
    });
    let client = match reqwest::Client::builder().timeout(Duration::from_secs(3)).no_proxy().build() {
        Ok(client) => client,
        Err(err) => {
            eprintln!("healthcheck: {err}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(response) if response.status().is_success() => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!("healthcheck: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("healthcheck: {url}: {err}");
            ExitCode::FAILURE
        }
    }
}
