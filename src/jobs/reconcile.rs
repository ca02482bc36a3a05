//! The net under every crash and race: objects in the service's key spaces (`<prefix>m/`,
//! `<prefix>staging/`) that no media row and no journal entry references, older than a grace period,
//! are deleted (`media-api reconcile`). Nothing else in the bucket is ever listed or touched.
//!
//! Order matters. The store is listed first (only objects older than the grace period count), then
//! the journal is read, then the rows: an upload journals its key before its first byte and the row
//! that comes to reference the key closes the entry in its own transaction, so a key is in the
//! journal when it is read or in a row when the rows are read after it — never in neither while
//! it is live. A row whose storage key cannot be decrypted makes the whole pass refuse to delete:
//! its object cannot be told from an orphan.
//!
//! Memory holds the listed keys and the journal, never every row's key: rows are read page by page
//! and each key crosses off the listed one it names. The background pass of the sweeper
//! ([`reconcile_shard`]) lists one sixteenth of the key space at a time (keys are random hex after
//! `m/` and `staging/`), so a pass stays bounded whatever the bucket holds.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::removal::Removal;
use crate::db::{journal, locks};

/// The key spaces the service creates objects in (see `media::ingest::pipeline`).
const KEY_SPACES: [&str; 2] = ["m/", "staging/"];

/// Rows read per query.
const PAGE: u32 = 1000;
/// Shards of the key space (the first hex digit of a random key).
pub const SHARDS: u8 = 16;

/// What a pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Objects under the service's prefix older than the grace period.
    pub objects_listed: u64,
    /// Storage keys media rows reference.
    pub rows: u64,
    /// Keys in the blob journal (uploads in flight, deletes to finish).
    pub journaled: u64,
    /// Objects referenced by nothing.
    pub orphans: u64,
    /// Orphans deleted (0 with `dry_run`).
    pub orphans_deleted: u64,
    /// Orphans whose delete failed (logged; the next pass retries).
    pub failed: u64,
}

/// Why a pass deleted nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    /// The store could not be listed.
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    /// Another process is reconciling.
    #[error("another reconcile pass is running on this database; run this again when it ends")]
    Busy,
    /// Some rows' storage keys did not decrypt.
    #[error("{0} rows' storage keys cannot be read (a missing master key?): nothing was deleted")]
    UnreadableRows(u64),
}

/// One pass over the store under the service's key prefix (see the module docs).
pub async fn reconcile(removal: &Removal, grace: Duration, dry_run: bool) -> Result<ReconcileReport, ReconcileError> {
    // Only the key spaces the service writes (`m/`, `staging/`) under its prefix: with no prefix
    // the bucket may be shared, and nothing else in it is the service's to judge.
    let spaces = KEY_SPACES.map(|space| format!("{}{space}", removal.key_prefix()));
    locked(removal, &spaces, grace, dry_run).await
}

/// One pass over shard `shard` (mod [`SHARDS`]) of the key spaces: the keys whose random part
/// starts with that hex digit.
pub async fn reconcile_shard(removal: &Removal, shard: u8, grace: Duration) -> Result<ReconcileReport, ReconcileError> {
    let digit = char::from_digit(u32::from(shard % SHARDS), 16).expect("a hex digit");
    let spaces = KEY_SPACES.map(|space| format!("{}{space}{digit}", removal.key_prefix()));
    locked(removal, &spaces, grace, false).await
}

/// The sweeper's bounded pass: the next shard each time (per process; replicas skip while another
/// one holds the lock).
#[derive(Debug, Default)]
pub struct ShardCursor(AtomicU8);

impl ShardCursor {
    /// Reconciles the next shard.
    pub async fn next_pass(&self, removal: &Removal, grace: Duration) -> Result<ReconcileReport, ReconcileError> {
        let shard = self.0.fetch_add(1, Ordering::Relaxed) % SHARDS;
        reconcile_shard(removal, shard, grace).await
    }
}

/// A pass over the keys under `spaces`, holding the reconcile lock.
async fn locked(
    removal: &Removal,
    spaces: &[String],
    grace: Duration,
    dry_run: bool,
) -> Result<ReconcileReport, ReconcileError> {
    let lock = locks::try_lock(removal.db(), locks::RECONCILE).await?.ok_or(ReconcileError::Busy)?;
    let report = reconcile_locked(removal, spaces, grace, dry_run).await;
    lock.release().await;
    report
}

/// [`reconcile`] over `spaces` with its lock held.
async fn reconcile_locked(
    removal: &Removal,
    spaces: &[String],
    grace: Duration,
    dry_run: bool,
) -> Result<ReconcileReport, ReconcileError> {
    let mut report = ReconcileReport::default();
    let mut listed = HashSet::new();
    for prefix in spaces {
        listed.extend(removal.blobs().list_older_than(prefix, grace).await?);
    }
    report.objects_listed = listed.len() as u64;
    let journaled = journal::keys(removal.db()).await?;
    report.journaled = journaled.len() as u64;
    for key in &journaled {
        listed.remove(key);
    }
    let mut unreadable = 0u64;
    for tenant in removal.media().tenants().await? {
        let mut after: Option<String> = None;
        loop {
            let page = removal.media().storage_keys(&tenant, after.as_deref(), PAGE).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (id, key) in page {
                match key {
                    Ok(key) => {
                        report.rows += 1;
                        listed.remove(&key);
                    }
                    Err(err) => {
                        tracing::warn!(tenant, id, error = %err, "reconcile cannot read a row's storage key");
                        unreadable += 1;
                    }
                }
            }
        }
    }
    if unreadable > 0 {
        return Err(ReconcileError::UnreadableRows(unreadable));
    }
    // What is left is referenced by nothing.
    for key in &listed {
        report.orphans += 1;
        if dry_run {
            continue;
        }
        match removal.blobs().delete(key).await {
            Ok(()) => report.orphans_deleted += 1,
            Err(err) => {
                tracing::warn!(error = %err, "reconcile cannot delete an orphaned object");
                report.failed += 1;
            }
        }
    }
    Ok(report)
}
