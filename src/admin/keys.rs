//! `media-api keys …`: master-key utilities and the key inventory.
//!
//! - `keys generate` prints a new master key in Fernet format, ready to add to `MEDIA_MASTER_KEYS`
//!   (`id:key`) or a keyring file. It needs no configuration.
//! - `keys status` prints, per tenant, every key version with its state, KEK and (for DEKs) the rows
//!   that still use it, then the KEK ids in use: what a rotation has left to do, and which master
//!   keys can be removed.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::crypto::keyring::Keyring;
use crate::db::tenant_keys::{KeyRow, TenantKeys};

/// Options of `keys`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// Subcommands of `keys`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (Fernet format: 32 bytes, URL-safe base64).
    Generate,
    /// Print the key inventory: versions, states, rows per version, KEKs in use.
    Status {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

impl Opts {
    /// Whether the command runs without configuration (`generate`).
    pub fn needs_config(&self) -> bool {
        !matches!(self.command, KeysCommand::Generate)
    }
}

/// One key version in the inventory.
#[derive(Debug, Serialize)]
pub struct StatusRow {
    /// The key row.
    #[serde(flatten)]
    pub key: KeyRow,
    /// Media rows sealed under it (DEKs only).
    pub rows: Option<i64>,
}

/// The inventory.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Every key version.
    pub keys: Vec<StatusRow>,
    /// Key rows per KEK id.
    pub keks_in_use: BTreeMap<String, i64>,
    /// The keyring's primary id.
    pub primary_kek: String,
}

/// Prints a new master key.
pub fn generate() {
    println!("{}", Keyring::generate_key());
}

/// Runs a `keys` subcommand that needs the configuration.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let KeysCommand::Status { tenant, json } = &opts.command else {
        generate();
        return Ok(());
    };
    let services = super::open_key_services(config).await?;
    let status = status(&services.keys, tenant.as_deref()).await?;
    services.db.close().await;
    if *json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(())
}

/// Collects the inventory.
pub async fn status(keys: &TenantKeys, tenant: Option<&str>) -> anyhow::Result<Status> {
    let mut rows_per_version: BTreeMap<String, BTreeMap<u32, i64>> = BTreeMap::new();
    let mut out = Vec::new();
    for key in keys.key_rows(tenant).await? {
        if !rows_per_version.contains_key(&key.tenant_id) {
            let counts = keys.rows_per_version(&key.tenant_id).await?.into_iter().collect();
            rows_per_version.insert(key.tenant_id.clone(), counts);
        }
        let rows = (key.purpose == "dek")
            .then(|| rows_per_version.get(&key.tenant_id).and_then(|c| c.get(&key.version)).copied().unwrap_or(0));
        out.push(StatusRow { key, rows });
    }
    Ok(Status {
        keys: out,
        keks_in_use: keys.keks_in_use().await?.into_iter().collect(),
        primary_kek: keys.keyring().primary_id().to_owned(),
    })
}

fn print_table(status: &Status) {
    println!(
        "{:<24} {:<7} {:>7} {:<10} {:<12} {:>10} {:>14}",
        "TENANT", "PURPOSE", "VERSION", "STATE", "KEK", "ROWS", "ENCRYPTIONS"
    );
    for row in &status.keys {
        let rows = row.rows.map_or_else(|| "-".to_owned(), |n| n.to_string());
        println!(
            "{:<24} {:<7} {:>7} {:<10} {:<12} {:>10} {:>14}",
            row.key.tenant_id,
            row.key.purpose,
            row.key.version,
            row.key.state,
            row.key.kek_id,
            rows,
            row.key.encryptions
        );
    }
    println!();
    println!("primary KEK: {}", status.primary_kek);
    for (kek, count) in &status.keks_in_use {
        println!("KEK {kek}: wraps {count} key(s)");
    }
}
