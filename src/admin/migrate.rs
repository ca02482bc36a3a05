//! `media-api migrate`: apply pending migrations to the configured database and exit.

use anyhow::Context;

use crate::config::Config;
use crate::db::Database;

/// Options of `migrate` (none yet).
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {}

/// Applies the migrations and prints what was done.
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
    Ok(())
}
