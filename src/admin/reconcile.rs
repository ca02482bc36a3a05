//! `media-api reconcile`: deletes objects that no media row and no journal entry references
//! ([`crate::jobs::reconcile`]), older than `--grace`; its report as JSON.

use std::time::Duration;

use crate::config::Config;
use crate::jobs::reconcile::reconcile;

/// Options of `reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Only objects last written longer ago than this count ("1h", "10m", "0s").
    #[arg(long, default_value = "1h", value_parser = super::sweep::parse_age)]
    pub grace: Duration,
    /// Count the orphans, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one pass and prints its report as JSON.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let services = super::open_services(config).await?;
    let report = reconcile(services.pipeline.removal(), opts.grace, opts.dry_run).await;
    services.db.close().await;
    println!("{}", serde_json::to_string_pretty(&report?)?);
    Ok(())
}
