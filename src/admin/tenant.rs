//! `media-api tenant shred <tenant> --yes`: crypto-shredding of one tenant.
//!
//! Order matters for a crash in the middle: each object is deleted from the blob store before its
//! row, and the tenant's keys are destroyed last, so a re-run finds whatever is left and finishes.
//! Once the keys are destroyed the tenant's rows in the live database cannot be decrypted and every
//! read of its IDs answers 404. Backups taken *before* the shred still hold the wrapped keys (and
//! bucket backups hold the plain object bytes): they must be expired on their own schedule.

use anyhow::Context;
use serde::Serialize;

use crate::config::Config;
use crate::db::audit::{self, AuditEvent};
use crate::db::media::MediaRepo;
use crate::db::tenant_keys::TenantKeys;
use crate::storage::BlobStore;

const PAGE: u32 = 500;

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

/// What a shred did.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct ShredReport {
    /// The tenant.
    pub tenant: String,
    /// Objects deleted from the blob store.
    pub objects_deleted: u64,
    /// Rows whose storage key could not be decrypted (their objects could not be found).
    pub objects_unreadable: u64,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Keys destroyed.
    pub keys_destroyed: u64,
}

/// Runs `tenant shred`.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    let TenantCommand::Shred { tenant, yes } = &opts.command;
    if !yes {
        anyhow::bail!(
            "refusing to shred tenant {tenant:?} without --yes: its keys, objects and rows would be destroyed for good"
        );
    }
    let services = super::Services::open(config).await?;
    let report = shred(&services.keys, &services.media, services.blobs.as_ref(), tenant).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    services.db.close().await;
    Ok(())
}

/// Deletes the tenant's objects and rows, then destroys its keys.
pub async fn shred(
    keys: &TenantKeys,
    repo: &MediaRepo,
    blobs: &dyn BlobStore,
    tenant: &str,
) -> anyhow::Result<ShredReport> {
    let mut report = ShredReport { tenant: tenant.to_owned(), ..ShredReport::default() };
    let mut after: Option<String> = None;
    loop {
        let page = repo.storage_keys(tenant, after.as_deref(), PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, storage_key) in page {
            match storage_key {
                Ok(key) => {
                    blobs.delete(&key).await.with_context(|| format!("cannot delete the object of {id}"))?;
                    report.objects_deleted += 1;
                }
                Err(err) => {
                    tracing::warn!(tenant, id, error = %err, "storage key unreadable: its object cannot be deleted");
                    report.objects_unreadable += 1;
                }
            }
            if repo.delete(tenant, &id, None, None).await? {
                report.rows_deleted += 1;
            }
        }
    }
    report.keys_destroyed = keys.destroy_tenant(tenant).await?;
    let details = serde_json::to_value(&report)?;
    audit::append(
        keys.db(),
        &AuditEvent { tenant, kind: "tenant.shredded", actor: Some("admin"), subject: None, details },
    )
    .await?;
    Ok(report)
}
