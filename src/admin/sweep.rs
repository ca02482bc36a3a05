//! `media-api sweep`: one pass of the retention sweeper ([`crate::jobs::sweep`]), its report as JSON.

use std::time::Duration;

use crate::config::Config;
use crate::jobs::sweep::{sweep_once, SweepAges};

/// Options of `sweep` (one pass, then its report as JSON).
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Age after which an unfinished write counts as abandoned ("1h", "10m", "0s"). Lower it only
    /// while no upload is in flight — after a crash, with the service stopped or idle.
    #[arg(long, default_value = "1h", value_parser = parse_age)]
    pub abandoned_after: Duration,
}

/// A duration argument ("1h", "10m", "0s").
pub fn parse_age(value: &str) -> Result<Duration, String> {
    crate::config::parse_duration(value).ok_or_else(|| format!("{value:?} is not a duration such as 1h, 10m or 0s"))
}

/// Runs one pass and prints its report as JSON.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let services = super::open_services(config).await?;
    let ages = SweepAges { presign_ttl: config.presign_ttl, abandoned_after: opts.abandoned_after };
    let report = sweep_once(services.pipeline.removal(), ages).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    services.db.close().await;
    Ok(())
}
