//! `media-api audit verify`: walk every tenant's audit hash chain and report the first broken link.
//! Exits 0 when every chain holds, 1 otherwise; prints a JSON report either way.

use anyhow::Context;

use crate::config::Config;
use crate::db::{audit, Database};

/// Options of `audit`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Subcommands of `audit`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditCommand {
    /// Check every chain's hashes and links.
    Verify,
}

/// Runs `audit verify`; an error when a chain is broken.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let AuditCommand::Verify = opts.command;
    let db = Database::connect(&config.database).await.context("cannot open the database")?;
    let report = audit::verify(&db).await.context("cannot read the audit log")?;
    db.close().await;
    println!("{}", serde_json::to_string_pretty(&report)?);
    match report.broken.first() {
        None => Ok(()),
        Some(first) => anyhow::bail!(
            "audit chain of tenant {:?} is broken at event {}: {}",
            first.tenant,
            first.chain_seq,
            first.reason
        ),
    }
}
