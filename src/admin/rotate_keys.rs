//! `media-api rotate-keys`: online key rotation ([`crate::jobs::rotate`]); a JSON summary ends the run.

use anyhow::Context;

use crate::config::Config;
use crate::jobs::rotate::{rotate, RotateOptions};

/// Options of `rotate-keys`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Only this tenant (repeatable; default: every tenant).
    #[arg(long = "tenant", value_name = "TENANT")]
    pub tenants: Vec<String>,
    /// Rows re-encrypted per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch_size: u32,
    /// Only re-wrap keys under the primary KEK; do not re-encrypt rows.
    #[arg(long)]
    pub rewrap_only: bool,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Opts {
    /// The job's options.
    pub fn options(&self) -> RotateOptions {
        RotateOptions {
            tenants: self.tenants.clone(),
            batch_size: self.batch_size,
            rewrap_only: self.rewrap_only,
            dry_run: self.dry_run,
        }
    }
}

/// Runs the command against the configured database and prints the JSON summary.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    if let Some(bad) = opts.tenants.iter().find(|tenant| !crate::domain::tenant::is_valid_tenant(tenant)) {
        anyhow::bail!("{bad:?} is not a tenant id: {}", crate::domain::tenant::TENANT_RULE);
    }
    let services = super::open_key_services(config).await?;
    let (keys, repo, db) = (&services.keys, &services.media, &services.db);
    let summary = rotate(keys, repo, &opts.options()).await.context("rotation failed (a re-run resumes it)")?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    db.close().await;
    Ok(())
}
