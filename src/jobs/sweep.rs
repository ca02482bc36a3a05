//! The retention sweeper: one pass is `media-api sweep`, and the service runs one in the background
//! every `MEDIA_SWEEP_INTERVAL`.
//!
//! A pass deletes (row first, its key journaled, then the object: [`super::removal`]) every media
//! past its `retention_until` (`MEDIA_RETENTION_DAYS`) and every direct upload still pending after
//! its URL's TTL plus an hour, each recorded as `media.expired` in the tenant's audit chain; then it
//! aborts multipart uploads and removes temporary files abandoned for more than an hour, and deletes
//! the objects whose journal entries are that old (`db::journal`): together, what a crash leaves
//! behind; and the old objects a key rotation or `encrypt-objects` kept whose grace has ended. In
//! the service each pass is followed by a bounded reconcile pass over the next shard of the key
//! space ([`super::reconcile::ShardCursor`]).

use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::reconcile::{ReconcileError, ShardCursor};
use super::removal::Removal;
use crate::db::audit::{Actor, AuditEvent, Subject};
use crate::db::media::MediaStatus;
use crate::db::{journal, locks};

/// Rows handled per query.
const BATCH: u32 = 200;
/// Age after which an unfinished write is abandoned.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Media deleted because their retention passed.
    pub expired: u64,
    /// Pending direct uploads deleted because they were never completed.
    pub stale_pending: u64,
    /// Multipart uploads aborted / temporary files removed.
    pub abandoned_uploads: u64,
    /// Objects no row references that a crash left behind, and old objects past their grace
    /// (journaled keys, see `db::journal`).
    pub orphans_deleted: u64,
    /// Rows that could not be read or deleted (logged; retried next pass).
    pub failed: u64,
    /// Another process was sweeping: this pass did nothing (one sweeper runs at a time per database).
    pub skipped: bool,
}

/// What a pass considers abandoned.
#[derive(Debug, Clone, Copy)]
pub struct SweepAges {
    /// Validity of upload URLs: a pending upload older than this plus `abandoned_after` is stale.
    pub presign_ttl: Duration,
    /// Age after which an unfinished write is abandoned ([`ABANDONED_AFTER`]).
    pub abandoned_after: Duration,
}

/// One pass (see the module docs).
pub async fn sweep_once(removal: &Removal, ages: SweepAges) -> anyhow::Result<SweepReport> {
    let Some(lock) = locks::try_lock(removal.db(), locks::SWEEP).await? else {
        return Ok(SweepReport { skipped: true, ..SweepReport::default() });
    };
    let report = sweep_locked(removal, ages).await;
    lock.release().await;
    report
}

/// [`sweep_once`] with the sweeper's lock held.
async fn sweep_locked(removal: &Removal, ages: SweepAges) -> anyhow::Result<SweepReport> {
    let (media, blobs) = (removal.media(), removal.blobs());
    let mut report = SweepReport::default();
    let now = chrono::Utc::now();
    let pending_before = now - chrono::Duration::from_std(ages.presign_ttl + ages.abandoned_after)?;
    let mut cursor: Option<(String, String)> = None;
    loop {
        let batch = media.sweepable(now, pending_before, cursor.as_ref(), BATCH).await?;
        for (tenant, id) in &batch {
            let record = match media.get(tenant, id).await {
                Ok(Some(stored)) => stored.record,
                Ok(None) => continue,
                Err(err) => {
                    tracing::warn!(tenant, id, error = %err, "sweeper cannot read a row");
                    report.failed += 1;
                    continue;
                }
            };
            match removal.remove(&record).await {
                Ok(true) => {}
                // Completed or deleted meanwhile: nothing for the sweeper.
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!(tenant, id, error = %err, "sweeper cannot delete a media");
                    report.failed += 1;
                    continue;
                }
            }
            let reason = match record.status {
                MediaStatus::Pending => {
                    report.stale_pending += 1;
                    "never_completed"
                }
                MediaStatus::Ready => {
                    report.expired += 1;
                    "retention"
                }
            };
            let details = json!({ "reason": reason });
            let event = AuditEvent {
                tenant,
                kind: "media.expired",
                actor: Actor::System,
                subject: Subject::Media(id),
                details,
            };
            removal.audit().record(&event).await;
        }
        // Keyset pagination: rows that failed stay behind the cursor, so they cannot starve the rest.
        match batch.last() {
            Some(last) if batch.len() == BATCH as usize => cursor = Some(last.clone()),
            _ => break,
        }
    }
    report.abandoned_uploads = blobs.abort_stale_uploads(removal.key_prefix(), ages.abandoned_after).await?;
    let journaled_before = now - chrono::Duration::from_std(ages.abandoned_after)?;
    loop {
        let keys = journal::stale(removal.db(), journaled_before, now, BATCH).await?;
        let mut progressed = false;
        for key in &keys {
            match blobs.delete(key).await {
                Ok(()) => {
                    journal::close(removal.db(), key).await?;
                    report.orphans_deleted += 1;
                    progressed = true;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper cannot delete an orphaned object");
                    report.failed += 1;
                }
            }
        }
        if keys.len() < BATCH as usize || !progressed {
            break;
        }
    }
    Ok(report)
}

/// Runs [`sweep_once`] every `interval` until the returned task is aborted, each followed (with a
/// `reconcile_grace`) by a reconcile pass over the next shard of the key space.
pub fn spawn_background(
    removal: Removal,
    presign_ttl: Duration,
    interval: Duration,
    reconcile_grace: Option<Duration>,
) -> tokio::task::JoinHandle<()> {
    let ages = SweepAges { presign_ttl, abandoned_after: ABANDONED_AFTER };
    let shards = ShardCursor::default();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            match sweep_once(&removal, ages).await {
                Ok(report) if report.skipped => tracing::debug!("another process is sweeping; pass skipped"),
                Ok(report) if report != SweepReport::default() => tracing::info!(?report, "sweep done"),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "sweep failed"),
            }
            let Some(grace) = reconcile_grace else { continue };
            match shards.next_pass(&removal, grace).await {
                Ok(report) if report.orphans > 0 => tracing::info!(?report, "reconcile pass done"),
                Ok(_) | Err(ReconcileError::Busy) => {}
                Err(err) => tracing::warn!(error = %err, "reconcile pass failed"),
            }
        }
    })
}
