//! Removing what is stored, in the order that leaves nothing unreachable: a media's row goes first
//! (its object key journaled in the same transaction), then its object, then the journal entry —
//! the object only with the last row that references it (dedup shares objects, `db::media::group`).
//! The delete use case, a refused direct upload and the sweeper all remove through [`Removal`], so
//! the rule lives in one place; whatever a crash interrupts stays journaled and the sweeper ends it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::db::audit::AuditLog;
use crate::db::journal;
use crate::db::media::{Deletion, MediaRecord, MediaRepo, MediaStatus};
use crate::db::{Database, DbError};
use crate::storage::BlobStore;
use crate::telemetry::metrics::names;
use crate::telemetry::throttle::LogEvery;

/// Deletes of failed uploads' keys running at once in the background ([`Removal::discard_failed`]).
pub const BACKGROUND_DISCARDS: usize = 64;

/// How often a failed upload's delete left to the sweeper is logged (each one is counted).
const DEFERRED_LOG_EVERY: Duration = Duration::from_secs(60);

/// Deletes rows and objects (cheap to clone).
#[derive(Clone)]
pub struct Removal {
    blobs: Arc<dyn BlobStore>,
    media: MediaRepo,
    db: Database,
    audit: AuditLog,
    /// How long a direct-upload URL can stay usable (`MEDIA_PRESIGN_MAX_TTL`).
    staging_ttl: Duration,
    /// The prefix of every key the service creates (`MEDIA_STORAGE_PREFIX`).
    key_prefix: Arc<str>,
    /// Permits for background deletes of failed uploads' keys ([`BACKGROUND_DISCARDS`]).
    discards: Arc<Semaphore>,
    /// The warning when no permit is free, at most once per [`DEFERRED_LOG_EVERY`].
    deferred: Arc<LogEvery>,
}

impl Removal {
    /// Removes from `blobs` and `media`, journaling in `db`; staging keys stay journaled for
    /// `staging_ttl` (a client may still PUT to them). `key_prefix` is `MEDIA_STORAGE_PREFIX`.
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        media: MediaRepo,
        db: Database,
        staging_ttl: Duration,
        key_prefix: &str,
    ) -> Self {
        let audit = AuditLog::new(media.keys().clone());
        let discards = Arc::new(Semaphore::new(BACKGROUND_DISCARDS));
        let deferred = Arc::new(LogEvery::new(DEFERRED_LOG_EVERY));
        Self { blobs, media, db, audit, staging_ttl, key_prefix: Arc::from(key_prefix), discards, deferred }
    }

    /// The metadata database (rows, blob journal).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The audit log (in the same database, keyed by its tenant keys).
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The blob store.
    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// The media rows.
    pub fn media(&self) -> &MediaRepo {
        &self.media
    }

    /// How long a direct-upload URL can stay usable (`MEDIA_PRESIGN_MAX_TTL`).
    pub fn staging_ttl(&self) -> Duration {
        self.staging_ttl
    }

    /// The prefix of every key the service creates (`MEDIA_STORAGE_PREFIX`).
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// Deletes a media's row, then — when no other row shares it (`db::media::group`) — its object
    /// (`false`: the row was gone or had changed). In that order a failure in between leaves no row
    /// pointing at nothing; the object's key is journaled with the delete of its last row, so the
    /// sweeper finishes the job if this process dies first.
    ///
    /// Only a row still in the state the caller read is deleted (a pending upload that became ready
    /// meanwhile stays). A pending row's staging key stays journaled until its upload URL has expired
    /// — a client may still PUT to it after the row is gone — and the sweeper deletes it then.
    pub async fn remove(&self, media: &MediaRecord) -> Result<bool, DbError> {
        let now = Utc::now();
        let sweep_at = match media.status {
            MediaStatus::Pending => now + chrono::Duration::from_std(self.staging_ttl).unwrap_or_default(),
            MediaStatus::Ready => now,
        };
        let journal = Some((media.storage_key.as_str(), sweep_at));
        match self.media.delete(&media.tenant_id, &media.id, Some(media.status), journal).await? {
            Deletion::None => return Ok(false),
            Deletion::Shared => {}
            Deletion::Last => match media.status {
                MediaStatus::Ready => self.discard(&media.storage_key).await,
                MediaStatus::Pending => {
                    if let Err(err) = self.blobs.delete(&media.storage_key).await {
                        tracing::warn!(error = %err, "cannot delete a staged upload: the sweeper will retry");
                    }
                }
            },
        }
        Ok(true)
    }

    /// What a failed upload leaves: its key, journaled before its first byte. The object is deleted
    /// in a task of its own (tracked by `tasks`, so a shutdown drains it), waited for at most `wait`:
    /// an upload that failed because the store stalled is answered then, not after the delete's own
    /// attempts on the same stalled store. When the store failed (`store_failed`, rather than the
    /// client), the journal entry stays: a request the store left unanswered may still land its
    /// object after the delete, and the sweeper deletes the key again once the entry is
    /// `--abandoned-after` old. At most [`BACKGROUND_DISCARDS`] such deletes run at once, so a client
    /// making uploads fail fast on a store whose deletes hang cannot pile up tasks and connections;
    /// past that, the key is left to the sweeper (counted in `media_failed_upload_deletes_deferred_total`,
    /// logged at most once a minute: such a client could otherwise write a line per upload).
    pub async fn discard_failed(&self, storage_key: &str, store_failed: bool, wait: Duration, tasks: &TaskTracker) {
        let Ok(permit) = self.discards.clone().try_acquire_owned() else {
            metrics::counter!(names::DISCARDS_DEFERRED).increment(1);
            if let Some(deferred) = self.deferred.record() {
                tracing::warn!(
                    key = storage_key,
                    deferred,
                    "too many deletes of failed uploads running: the sweeper will delete their objects"
                );
            }
            return;
        };
        let (removal, key) = (self.clone(), storage_key.to_owned());
        let deleting = tasks.spawn(async move {
            match store_failed {
                true => match removal.blobs.delete(&key).await {
                    Ok(()) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot delete a failed upload's object: the sweeper will retry")
                    }
                },
                false => removal.discard(&key).await,
            }
            drop(permit);
        });
        // Dropping the handle after `wait` leaves the task running.
        let _ = tokio::time::timeout(wait, deleting).await;
    }

    /// Deletes an object no row references, then its journal entry. When either fails the entry
    /// stays and the sweeper retries (logged).
    pub async fn discard(&self, storage_key: &str) {
        if let Err(err) = self.blobs.delete(storage_key).await {
            tracing::warn!(error = %err, "cannot delete an object that has no row: the sweeper will retry");
            return;
        }
        if let Err(err) = journal::close(&self.db, storage_key).await {
            tracing::warn!(error = %err, "cannot close the journal entry of a deleted object: the sweeper will retry");
        }
    }
}
