//! `media-api tenant shred <tenant> --yes`: crypto-shredding of one tenant ([`crate::jobs::shred`]).

use crate::config::Config;
use crate::domain::tenant::{is_valid_tenant, TENANT_RULE};
use crate::jobs::shred::shred;

/// Options of `tenant`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: TenantCommand,
}

/// Subcommands of `tenant`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TenantCommand {
    /// Destroy a tenant's keys, objects and rows for good.
    Shred {
        /// The tenant id.
        tenant: String,
        /// Confirm: without it nothing is done.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs `tenant shred`.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let TenantCommand::Shred { tenant, yes } = &opts.command;
    if !is_valid_tenant(tenant) {
        anyhow::bail!("{tenant:?} is not a tenant id: {TENANT_RULE}");
    }
    if !yes {
        anyhow::bail!(
            "refusing to shred tenant {tenant:?} without --yes: its keys, objects and rows would be destroyed for good"
        );
    }
    let services = super::open_services(config).await?;
    let report = shred(&services.keys, services.pipeline.removal(), tenant).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    services.db.close().await;
    Ok(())
}
