//! `media-api keys …`: master-key utilities and the key inventory.
//!
//! - `keys generate` prints a new master key in Fernet format, ready to add to `MEDIA_MASTER_KEYS`
//!   (`id:key`) or a keyring file. It needs no configuration.
//! - `keys status` prints, per tenant, every key version with its state, KEK and (for DEKs) the rows
//!   sealed under it and the rows whose object is, then the rows whose object is stored in the
//!   clear and the KEK ids in use: what a rotation (`--objects`) or `encrypt-objects` has left to do,
//!   and which master keys can be removed. A version retires only once both of its counts are zero.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Config;
use crate::crypto::keyring::Keyring;
use crate::db::media::MediaRepo;
use crate::db::tenant_keys::KeyRow;

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
    /// Media rows whose object is sealed under it (DEKs only; a dedup group's rows share one object).
    pub object_rows: Option<i64>,
}

/// The inventory.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Every key version.
    pub keys: Vec<StatusRow>,
    /// Media rows whose object is stored in the clear, per tenant (those with any).
    pub plain_object_rows: BTreeMap<String, i64>,
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
    let status = status(&services.media, tenant.as_deref()).await?;
    services.db.close().await;
    if *json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(())
}

/// Collects the inventory.
pub async fn status(repo: &MediaRepo, tenant: Option<&str>) -> anyhow::Result<Status> {
    type Counts = (BTreeMap<u32, i64>, BTreeMap<u32, i64>);
    let keys = repo.keys();
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut plain_object_rows = BTreeMap::new();
    let mut out = Vec::new();
    for key in keys.key_rows(tenant).await? {
        if !counts.contains_key(&key.tenant_id) {
            let rows = keys.rows_per_version(&key.tenant_id).await?.into_iter().collect();
            let (objects, plain) = repo.object_rows_per_version(&key.tenant_id).await?;
            if plain > 0 {
                plain_object_rows.insert(key.tenant_id.clone(), plain);
            }
            counts.insert(key.tenant_id.clone(), (rows, objects.into_iter().collect()));
        }
        let count = |of: fn(&Counts) -> &BTreeMap<u32, i64>| {
            (key.purpose == "dek")
                .then(|| counts.get(&key.tenant_id).and_then(|c| of(c).get(&key.version)).copied().unwrap_or(0))
        };
        let (rows, object_rows) = (count(|c| &c.0), count(|c| &c.1));
        out.push(StatusRow { key, rows, object_rows });
    }
    Ok(Status {
        keys: out,
        plain_object_rows,
        keks_in_use: keys.keks_in_use().await?.into_iter().collect(),
        primary_kek: keys.keyring().primary_id().to_owned(),
    })
}

fn print_table(status: &Status) {
    println!(
        "{:<24} {:<7} {:>7} {:<10} {:<12} {:>10} {:>12} {:>14}",
        "TENANT", "PURPOSE", "VERSION", "STATE", "KEK", "ROWS", "OBJECT ROWS", "ENCRYPTIONS"
    );
    let count = |n: Option<i64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    for row in &status.keys {
        println!(
            "{:<24} {:<7} {:>7} {:<10} {:<12} {:>10} {:>12} {:>14}",
            row.key.tenant_id,
            row.key.purpose,
            row.key.version,
            row.key.state,
            row.key.kek_id,
            count(row.rows),
            count(row.object_rows),
            row.key.encryptions
        );
    }
    println!();
    for (tenant, rows) in &status.plain_object_rows {
        println!("tenant {tenant}: {rows} row(s) whose object is stored in the clear (encrypt-objects)");
    }
    println!("primary KEK: {}", status.primary_kek);
    for (kek, count) in &status.keks_in_use {
        println!("KEK {kek}: wraps {count} key(s)");
    }
}
