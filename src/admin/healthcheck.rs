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

/// Exits 0 when the URL answers 200 within 3 seconds, 1 otherwise. With `MEDIA_TLS_CERT_FILE` set
/// the default URL is `https://127.0.0.1:…`, and — only for that loopback default — the certificate
/// is not verified (it names the service's public host, not 127.0.0.1).
pub async fn run(opts: &Opts) -> ExitCode {
    let tls = std::env::var_os("MEDIA_TLS_CERT_FILE").is_some();
    let url = opts.url.clone().unwrap_or_else(|| {
        let port = std::env::var("MEDIA_API_PORT").unwrap_or_else(|_| "8285".into());
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}/healthz")
    });
    let loopback_default = opts.url.is_none() && tls;
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(3)).no_proxy();
    let client = match builder.danger_accept_invalid_certs(loopback_default).build() {
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
