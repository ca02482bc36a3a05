//! Crypto-shredding of one tenant (what `media-api tenant shred <tenant> --yes` runs).
//!
//! Order matters for a crash in the middle: the tenant moves to `shredding` first (refusing its
//! writes everywhere until a run completes), each row is deleted with its object's key journaled
//! (when it was the last row referencing the object: dedup shares objects, `db::media::group`),
//! then the object, and the tenant's keys are destroyed last, so a re-run finds whatever rows are
//! left and finishes, and the sweeper deletes any object whose delete a crash cut off.
//! Once the keys are destroyed the tenant's rows in the live database cannot be decrypted and every
//! read of its IDs answers 404. Backups taken *before* the shred still hold the wrapped keys (and
//! bucket backups hold the plain object bytes): they must be expired on their own schedule.

use anyhow::Context;
use chrono::Utc;
use serde::Serialize;

use super::removal::Removal;
use crate::db::media::Deletion;
use crate::db::tenant_keys::TenantKeys;
use crate::db::{journal, locks, tenants};

const PAGE: u32 = 500;

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
    /// Old objects a key rotation or `encrypt-objects` kept for their grace (`db::journal`): with
    /// the tenant gone no link to them may work any more.
    pub kept_objects_deleted: u64,
    /// Keys destroyed.
    pub keys_destroyed: u64,
}

/// Moves the tenant to `shredding` (every write of it is refused from then on, in every process;
/// writes in flight are waited for), deletes its objects and rows — each key journaled until
/// upload URLs still out there have expired, so an object PUT to one later is swept — and the old
/// objects kept for a grace after a move (in the clear, after `encrypt-objects`), then destroys
/// its keys and marks it `shredded` (its next write starts afresh, with new keys).
pub async fn shred(keys: &TenantKeys, removal: &Removal, tenant: &str) -> anyhow::Result<ShredReport> {
    // Rotation and shredding of one tenant exclude each other, in every process.
    let lock = locks::lock_tenant(keys.db(), tenant).await?;
    tenants::set_state(keys.db(), tenant, "shredding").await?;
    let (repo, blobs) = (removal.media(), removal.blobs());
    let mut report = ShredReport { tenant: tenant.to_owned(), ..ShredReport::default() };
    let mut after: Option<String> = None;
    loop {
        let page = repo.storage_keys(tenant, after.as_deref(), PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let sweep_at = Utc::now() + chrono::Duration::from_std(removal.staging_ttl()).unwrap_or_default();
        for (id, storage_key) in page {
            let key = match storage_key {
                Ok(key) => Some(key),
                Err(err) => {
                    tracing::warn!(tenant, id, error = %err, "storage key unreadable: its object cannot be deleted");
                    report.objects_unreadable += 1;
                    None
                }
            };
            // The row first, its key journaled when it was the object's last reference (rows of a
            // dedup group share one object): a failed object delete stays journaled for the sweeper.
            let deletion = repo.delete(tenant, &id, None, key.as_deref().map(|key| (key, sweep_at))).await?;
            report.rows_deleted += u64::from(deletion.deleted());
            if let (Deletion::Last, Some(key)) = (deletion, &key) {
                blobs.delete(key).await.with_context(|| format!("cannot delete the object of {id}"))?;
                report.objects_deleted += 1;
            }
        }
    }
    loop {
        let kept = journal::kept_by(keys.db(), tenant, PAGE).await?;
        for key in &kept {
            blobs.delete(key).await.context("cannot delete an old object kept for its grace")?;
            journal::close(keys.db(), key).await?;
            report.kept_objects_deleted += 1;
        }
        if kept.len() < PAGE as usize {
            break;
        }
    }
    report.keys_destroyed = keys.destroy_tenant(tenant).await?;
    tenants::set_state(keys.db(), tenant, "shredded").await?;
    let details = serde_json::to_value(&report)?;
    removal.audit().admin(tenant, "tenant.shredded", details).await?;
    lock.release().await;
    Ok(report)
}
