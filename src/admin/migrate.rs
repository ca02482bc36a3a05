//! `media-api migrate`: apply pending migrations to the configured database, carry audit events of
//! before the keyed format forward (which needs the keyring), and exit.

use anyhow::Context;

use crate::config::Config;
use crate::db::audit::AuditLog;
use crate::db::Database;
use crate::services::{KeyServices, Role};

/// Options of `migrate` (none yet).
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {}

/// Applies the migrations, reseals legacy audit events, and prints what was done.
pub async fn run(config: &Config, _opts: &Opts) -> anyhow::Result<()> {
    let db = Database::connect(&config.database).await.context("cannot open the database")?;
    let report = db.migrate().await.context("cannot migrate the database")?;
    println!(
        "{} database {}: {} migration(s) applied now, {} already applied",
        db.backend(),
        config.database_url_for_logs(),
        report.newly_applied,
        report.already_applied
    );
    db.close().await;
    let services = KeyServices::open(config, &Role::Admin).await.context("cannot open the keys")?;
    let sealed = AuditLog::new(services.keys.clone()).after_migration(&report).await;
    services.db.close().await;
    let sealed = sealed.context("cannot reseal the audit events of before the keyed format")?;
    if sealed.chains > 0 || !sealed.broken_chains.is_empty() {
        println!("audit log: {} event(s) of {} chain(s) pseudonymized and resealed", sealed.events, sealed.chains);
    }
    if !sealed.broken_chains.is_empty() {
        anyhow::bail!(
            "audit chains {:?} do not hold and were left as they were: run `media-api audit verify`",
            sealed.broken_chains
        );
    }
    Ok(())
}
