//! The one ingestion pipeline every upload source goes through, in a single pass over the bytes:
//! size limit (a declared `Content-Length` first, then while streaming), type sniffing of the first
//! bytes before anything is stored, SHA-256 and size while the bytes stream into the blob store
//! under a random key — sealed on their way there when object encryption is on (`media::sealed`;
//! the hash, the size and the dedup index stay the plaintext's) — then per-tenant dedup through the
//! blind index and the encrypted row (each upload its own row; identical bytes share one object,
//! see `db::media::group`).
//!
//! Memory is bounded by the blob store's part buffers: the body is never collected. Any failure
//! after bytes started flowing leaves nothing behind: the blob store drops a failed or abandoned
//! write (no object, no multipart upload), and an object whose row cannot be written is deleted.
//! Every key is journaled before its first byte (`db::journal`), so what a crash interrupts is
//! found and deleted by the sweeper.
//! Handlers run [`Pipeline::ingest`] in its own task so that a client disconnecting after its body
//! was stored cannot cancel the row write half-way.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use futures::{stream, StreamExt};
use rand::RngCore;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;

pub use super::upload::{Expected, Upload};

use super::limit::{is_limit_exceeded, limit_stream};
use super::sniff::{Allowlist, DeclaredBy, SNIFF_BYTES};
use super::sources::{zeroed, zeros};
use super::ByteStream;
use crate::auth::Principal;
use crate::crypto::object::sealed_len;
use crate::db::audit::{Actor, AuditEvent, Subject};
use crate::db::journal;
use crate::db::media::{InsertOutcome, MediaRecord, MediaRepo, MediaStatus};
use crate::db::{Database, DbError};
use crate::domain::media_id::new_id;
use crate::jobs::removal::Removal;
use crate::media::error::MediaError;
use crate::media::rekey::reseal_unrecorded;
use crate::media::sealed::Sealing;
use crate::storage::{BlobStore, StorageError};

/// How long a failed upload's answer waits for the delete of its key (see `Removal::discard_failed`).
const DISCARD_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Bytes that passed the checks and are stored.
#[derive(Debug)]
struct StoredBytes {
    key: String,
    mime: String,
    /// Plaintext bytes (what the row records, whatever is stored).
    size: u64,
    sha256: [u8; 32],
    /// The DEK version the object is sealed under, when encryption is on.
    object_dek_version: Option<u32>,
}

/// What the pass over the plaintext counts: its SHA-256 and its length.
#[derive(Default)]
struct Tally {
    sha256: Sha256,
    bytes: u64,
}

/// A stored (or deduplicated) upload.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// The media record (the caller's existing one when deduplicated).
    pub record: MediaRecord,
    /// True when the caller had already uploaded these bytes: `record` is that earlier upload
    /// (another caller's identical bytes only share storage, invisibly: a new record, `false`).
    pub deduped: bool,
}

/// Everything the pipeline needs; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    blobs: Arc<dyn BlobStore>,
    media: MediaRepo,
    db: Database,
    allow: Arc<Allowlist>,
    max_bytes: u64,
    /// Seal new objects (`MEDIA_OBJECT_ENCRYPTION`).
    encrypt: bool,
    retention: Option<chrono::Duration>,
    key_prefix: Arc<str>,
    tasks: TaskTracker,
    removal: Removal,
}

impl Pipeline {
    /// A pipeline storing into `blobs` and `media`, auditing into `db`, with the limits of `config`.
    pub fn new(blobs: Arc<dyn BlobStore>, media: MediaRepo, db: Database, config: &crate::config::Config) -> Self {
        Self {
            removal: Removal::new(
                blobs.clone(),
                media.clone(),
                db.clone(),
                config.presign_max_ttl,
                &config.storage_prefix,
            ),
            blobs,
            media,
            db,
            allow: Arc::new(Allowlist::new(&config.allowed_types)),
            max_bytes: config.max_bytes,
            encrypt: config.object_encryption,
            retention: config.retention_days.map(|days| chrono::Duration::days(i64::from(days))),
            key_prefix: Arc::from(config.storage_prefix.as_str()),
            tasks: TaskTracker::new(),
        }
    }

    /// A new random object key (see [`random_storage_key`]) under `MEDIA_STORAGE_PREFIX`.
    pub fn new_storage_key(&self) -> String {
        format!("{}{}", self.key_prefix, random_storage_key())
    }

    /// The media rows.
    pub fn repo(&self) -> &MediaRepo {
        &self.media
    }

    /// The blob store.
    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// The metadata database (rows, audit, blob journal).
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The prefix of every key this pipeline creates (`MEDIA_STORAGE_PREFIX`).
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// A key for a client's direct upload: under `staging/`, never where verified bytes live.
    pub fn new_staging_key(&self) -> String {
        format!("{}staging/{}", self.key_prefix, random_storage_key().trim_start_matches("m/"))
    }

    /// When a media stored now expires (`MEDIA_RETENTION_DAYS`).
    pub fn retention_until(&self) -> Option<chrono::DateTime<Utc>> {
        self.retention.map(|days| Utc::now() + days)
    }

    /// The size limit in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
    }

    /// Waits (at most `grace`) for detached ingests to finish — at shutdown, after the connections
    /// are gone, so every interrupted upload has aborted its multipart upload before the process
    /// exits. Returns how many were still running when `grace` passed.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }

    /// Runs `work` as a tracked task (so [`Pipeline::drain`] waits for it) holding `hold` (the
    /// upload's concurrency slot) to its end, even when the request is gone: a client that leaves
    /// or times out cannot cut an upload or a completion between its stored bytes and its row.
    pub async fn detached<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, MediaError>> + Send + 'static,
        hold: impl Send + 'static,
    ) -> Result<T, MediaError> {
        self.tasks
            .spawn(async move {
                let result = work.await;
                drop(hold);
                result
            })
            .await
            .map_err(|err| MediaError::Interrupted(std::io::Error::other(err)))?
    }

    /// Checks, stores and records one upload (see the module docs). The media service refuses an
    /// oversized `user_id` before it reads a body; it is checked here again for any other caller.
    pub async fn ingest(&self, caller: &Principal, upload: Upload, body: ByteStream) -> Result<Ingested, MediaError> {
        super::sources::check_user_hint(upload.user_hint.as_deref())?;
        let (filename, user_hint) = (upload.filename.clone(), upload.user_hint.clone());
        let stored = self.store(&caller.tenant, upload, body).await?;
        let record = MediaRecord {
            id: new_id(),
            tenant_id: caller.tenant.clone(),
            status: MediaStatus::Ready,
            mime: stored.mime,
            size: stored.size,
            filename,
            uploader: caller.owner(),
            user_hint,
            storage_key: stored.key,
            object_dek_version: stored.object_dek_version,
            sha256: Some(stored.sha256),
            metadata: None,
            retention_until: self.retention_until(),
        };
        self.record(caller, record).await
    }

    /// The single pass over the bytes: size limit, type check of the first bytes, SHA-256 (of the
    /// plaintext) while they stream into the blob store under a fresh key — sealed on the way when
    /// object encryption is on (`sealed`). Nothing is left behind on failure.
    async fn store(&self, tenant: &str, mut upload: Upload, body: ByteStream) -> Result<StoredBytes, MediaError> {
        if upload.content_length.is_some_and(|length| length > self.max_bytes) {
            return Err(MediaError::TooLarge { limit: self.max_bytes });
        }
        if let Some(by_name) = upload.filename.as_deref().and_then(super::sniff::from_filename) {
            upload.declared.push(by_name);
        }
        // Fused: the prefix read may already have seen the end, and the rest is chained after it.
        let mut body = limit_stream(body, self.max_bytes).fuse().boxed();
        let prefix = self.read_prefix(&mut body).await?;
        if prefix.is_empty() {
            return Err(MediaError::Empty);
        }
        let mime = self.allow.check(&prefix[..prefix.len().min(SNIFF_BYTES)], &upload.declared)?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tap = tally.clone();
        let stream = stream::once(async move { Ok(prefix) })
            .chain(body)
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    let mut tally = tap.lock().unwrap_or_else(PoisonError::into_inner);
                    tally.sha256.update(bytes);
                    tally.bytes += bytes.len() as u64;
                }
            })
            .boxed();
        let key = self.new_storage_key();
        let sealing = match self.encrypt {
            true => Some(Sealing::new(self.media.keys(), tenant, &key).await?),
            false => None,
        };
        let object_dek_version = sealing.as_ref().map(|sealing| sealing.dek_version);
        let stored_len = |length: u64| if sealing.is_some() { sealed_len(length) } else { length };
        let length = upload.content_length.map(stored_len);
        let at_most = stored_len(self.max_bytes);
        let expected = upload.expected.map(|expected| {
            // A file shorter than guessed is made up with zeros, one per byte the client sent after
            // it (none of those bytes reaches the store, where the object is then cut back) — and,
            // sealed, the header and tags the guess counted beyond the file's: at most its overhead.
            let overhead = stored_len(expected.length) - expected.length;
            (stored_len(expected.length), zeroed(expected.after).chain(zeros(overhead)).boxed())
        });
        let stream = match sealing {
            Some(sealing) => sealing.seal(stream),
            None => stream,
        };
        journal::open(&self.db, &key).await?;
        let written = match (length, expected) {
            (Some(length), _) => self.blobs.put_sized(&key, &mime, length, stream).await,
            (None, Some((length, after))) => self.blobs.put_expecting(&key, &mime, length, stream, after).await,
            (None, None) => self.blobs.put_at_most(&key, &mime, at_most, stream).await,
        };
        let tally = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
        let stored = match (written, object_dek_version) {
            (Ok(written), Some(_)) if written != sealed_len(tally.bytes) => {
                Err(StorageError::backend(self.blobs.backend(), "put", "the stored object is not the sealed length"))
            }
            (written, _) => written,
        };
        if let Err(err) = stored {
            // Normally nothing was written; the delete makes sure (and when the store failed, the
            // sweeper makes sure again later). A store that stalled may stall the delete too: the
            // client is not kept waiting for it longer than `DISCARD_WAIT`.
            let store_failed = !matches!(err, StorageError::Source(_));
            self.removal.discard_failed(&key, store_failed, DISCARD_WAIT, &self.tasks).await;
            return Err(self.put_error(err));
        }
        let sha256 = tally.sha256.finalize().into();
        Ok(StoredBytes { key, mime, size: tally.bytes, sha256, object_dek_version })
    }

    /// Verifies a direct upload (`prepare-upload`, then a PUT to the presigned URL). The client wrote
    /// to a staging key; its object is streamed through the same single pass as every upload (size
    /// within the limit and equal to the declared size, sniffed type equal to the declared one and to
    /// the filename's, SHA-256) into a fresh key that no client can write — sealed, with encryption
    /// on — and the staging object is deleted — so bytes cannot be swapped after they were checked,
    /// and no plaintext the client wrote outlives the completion. Then the row becomes ready,
    /// sharing the object of identical bytes the tenant already has; with `dedup`, when the caller
    /// already uploaded these bytes the pending id disappears in favour of the caller's existing one.
    /// A refused upload is deleted with its row.
    pub async fn complete(
        &self,
        caller: &Principal,
        pending: MediaRecord,
        dedup: bool,
    ) -> Result<Ingested, MediaError> {
        let object = match self.blobs.get(&pending.storage_key, None).await {
            Ok(object) => object,
            Err(StorageError::NotFound) => {
                return Err(MediaError::invalid(
                    "not_uploaded",
                    "nothing has been uploaded to this media's upload URL yet",
                ))
            }
            Err(err) => return Err(err.into()),
        };
        let mismatch = pending.size > 0 && object.total_size != pending.size && object.total_size <= self.max_bytes;
        let checked = if mismatch {
            Err(MediaError::invalid(
                "length_mismatch",
                format!("{} bytes were uploaded but {} were declared", object.total_size, pending.size),
            ))
        } else {
            let mut declared = vec![(DeclaredBy::Prepared, pending.mime.clone())];
            declared.extend(pending.filename.as_deref().and_then(super::sniff::from_filename));
            let upload = Upload { declared, content_length: Some(object.total_size), ..Upload::default() };
            self.store(&pending.tenant_id, upload, object.body).await
        };
        let stored = match checked {
            Ok(stored) => stored,
            Err(err) => {
                self.remove(&pending).await?;
                return Err(err);
            }
        };
        let staging = pending.storage_key.clone();
        let ready = MediaRecord {
            mime: stored.mime,
            size: stored.size,
            sha256: Some(stored.sha256),
            storage_key: stored.key,
            object_dek_version: stored.object_dek_version,
            status: MediaStatus::Ready,
            ..pending
        };
        match self.media.mark_ready(&ready, &staging, dedup).await {
            Ok(outcome @ (InsertOutcome::Inserted | InsertOutcome::Joined { .. })) => {
                self.discard(&staging).await;
                let ready = self.settle(ready, outcome).await;
                let details = json!({"direct": true});
                self.audit(&caller.tenant, &caller.subject, "media.uploaded", &ready.id, details).await;
                Ok(Ingested { record: ready, deduped: false })
            }
            Ok(InsertOutcome::Duplicate(existing)) => {
                // The row still references the staging object; the verified copy is journaled.
                let pending = MediaRecord { storage_key: staging, status: MediaStatus::Pending, ..ready.clone() };
                self.discard(&ready.storage_key).await;
                self.remove(&pending).await?;
                self.earlier(caller, &existing).await
            }
            Err(err) => {
                // Someone else completed (or removed) the row meanwhile: keep theirs. Otherwise the
                // row is still pending and its staged object stays, so completing can be retried.
                // The verified copy is deleted only when the update certainly did not happen; after
                // a lost commit its journal entry says which way it went, and the sweeper follows.
                if matches!(
                    err,
                    DbError::Sqlx(sqlx::Error::RowNotFound) | DbError::TenantShredding | DbError::KeyChanged
                ) {
                    self.discard(&ready.storage_key).await;
                }
                match self.media.get(&caller.tenant, &ready.id).await? {
                    Some(current) if current.record.status == MediaStatus::Ready => {
                        Ok(Ingested { record: current.record, deduped: false })
                    }
                    // Deleted meanwhile (a DELETE, the sweeper): there is nothing to complete.
                    None if matches!(err, DbError::Sqlx(sqlx::Error::RowNotFound)) => Err(MediaError::NotFound),
                    _ => Err(err.into()),
                }
            }
        }
    }

    /// Deletes a media's row, then its object (see [`Removal::remove`]).
    pub async fn remove(&self, media: &MediaRecord) -> Result<bool, MediaError> {
        Ok(self.removal.remove(media).await?)
    }

    /// Reads from `body` until [`SNIFF_BYTES`] are buffered or the body ends.
    async fn read_prefix(&self, body: &mut ByteStream) -> Result<Bytes, MediaError> {
        let mut prefix = BytesMut::new();
        while prefix.len() < SNIFF_BYTES {
            match body.next().await {
                Some(Ok(chunk)) => prefix.extend_from_slice(&chunk),
                Some(Err(err)) => return Err(self.source_error(err)),
                None => break,
            }
        }
        Ok(prefix.freeze())
    }

    fn source_error(&self, err: std::io::Error) -> MediaError {
        match is_limit_exceeded(&err) {
            Some(limit) => MediaError::TooLarge { limit },
            None => MediaError::Interrupted(err),
        }
    }

    fn put_error(&self, err: StorageError) -> MediaError {
        match err {
            StorageError::Source(err) => self.source_error(err),
            other => MediaError::Storage(other),
        }
    }

    /// Writes the row of stored bytes (sharing the object of identical bytes the tenant already
    /// has, see `db::media::group`), or — when the caller already uploaded them — deletes the new
    /// object and answers with the caller's existing media (`deduped`: a retry is idempotent).
    async fn record(&self, caller: &Principal, record: MediaRecord) -> Result<Ingested, MediaError> {
        // On an error the object stays: if the commit happened after all (its answer lost), the row
        // references it; if not, its journal entry is still there and the sweeper deletes it. A
        // refusal certainly wrote nothing, so its object goes at once.
        let mut record = record;
        let mut resealed = false;
        let outcome = loop {
            match self.media.insert(&record).await {
                Ok(outcome) => break outcome,
                // Sealed under a version retired while the bytes streamed (`rotate-keys --objects`):
                // sealed again under the current one, once (a destroyed key cannot be read: refused).
                Err(DbError::KeyChanged) if !resealed && record.object_dek_version.is_some() => {
                    match reseal_unrecorded(self, &record).await {
                        Ok(moved) => (record, resealed) = (moved, true),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot seal an upload again under the current key");
                            self.discard(&record.storage_key).await;
                            return Err(DbError::KeyChanged.into());
                        }
                    }
                }
                Err(err @ (DbError::TenantShredding | DbError::KeyChanged)) => {
                    self.discard(&record.storage_key).await;
                    return Err(err.into());
                }
                Err(err) => return Err(err.into()),
            }
        };
        match outcome {
            InsertOutcome::Inserted | InsertOutcome::Joined { .. } => {
                let record = self.settle(record, outcome).await;
                self.audit(&caller.tenant, &caller.subject, "media.uploaded", &record.id, json!({})).await;
                Ok(Ingested { record, deduped: false })
            }
            InsertOutcome::Duplicate(existing) => {
                self.discard(&record.storage_key).await;
                self.earlier(caller, &existing).await
            }
        }
    }

    /// The caller's earlier upload `id` of the same bytes, as the answer to a duplicate upload.
    async fn earlier(&self, caller: &Principal, id: &str) -> Result<Ingested, MediaError> {
        let existing = self.media.get(&caller.tenant, id).await?;
        let existing = existing.ok_or(DbError::Sqlx(sqlx::Error::RowNotFound))?;
        Ok(Ingested { record: existing.record, deduped: true })
    }

    /// The record of a row just written: when it joined the group of its bytes (another row has
    /// them, see `db::media::group`) it references their object, and the copy just written is
    /// deleted.
    async fn settle(&self, record: MediaRecord, outcome: InsertOutcome) -> MediaRecord {
        match outcome {
            InsertOutcome::Joined { storage_key, object_dek_version } => {
                self.discard(&record.storage_key).await;
                MediaRecord { storage_key, object_dek_version, ..record }
            }
            _ => record,
        }
    }

    /// Deletes an object no row references, then its journal entry (see [`Removal::discard`]).
    pub async fn discard(&self, storage_key: &str) {
        self.removal.discard(storage_key).await;
    }

    /// Appends a media event to the tenant's audit chain (failures are logged, not returned: the
    /// media operation itself succeeded).
    pub async fn audit(&self, tenant: &str, caller: &str, kind: &str, id: &str, details: serde_json::Value) {
        let event = AuditEvent { tenant, kind, actor: Actor::Caller(caller), subject: Subject::Media(id), details };
        self.removal.audit().record(&event).await;
    }

    /// The removal shared with the sweeper.
    pub fn removal(&self) -> &Removal {
        &self.removal
    }
}

/// A random object key: it says nothing about the tenant, the id or the content.
pub fn random_storage_key() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("m/{}", hex::encode(bytes))
}
