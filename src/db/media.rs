//! The encrypted media repository: plaintext [`MediaRecord`]s in and out, rows with
//! every sensitive column sealed under the tenant's current DEK in between.
//!
//! Encrypted columns: original filename, uploader subject, client `user_id` hint, storage key,
//! sha256 and free-form metadata. Plain columns: id, tenant, mime, size, status, timestamps,
//! retention and `dek_version`. Each value's AAD names its tenant, table, column and row, so a value
//! copied anywhere else fails with [`CryptoError::Integrity`](crate::crypto::CryptoError::Integrity)
//! (code `data_integrity`), never a wrong value. Every read is by `(tenant_id, id)`; there is no read
//! by id alone. Dedup goes through the blind index: `content_mac` is unique per tenant.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::journal;
use super::ready_cache::ReadyCache;
use super::tenant_keys::TenantKeys;
use super::{Database, DbError};
use crate::crypto::blind_index::content_mac;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::{sealed_version, FieldCipher, FieldContext};
use crate::crypto::CryptoError;
use crate::with_pool;

const TABLE: &str = "media_objects";

/// Upload state of a media row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatus {
    /// A direct upload was prepared but not verified yet.
    Pending,
    /// The bytes are stored and verified.
    Ready,
}

impl MediaStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
        }
    }

    fn parse(text: &str) -> Result<Self, DbError> {
        match text {
            "pending" => Ok(Self::Pending),
            "ready" => Ok(Self::Ready),
            _ => Err(CryptoError::Integrity.into()),
        }
    }
}

/// A media row in the clear: what is inserted, and what a read gives back (in [`StoredMedia`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRecord {
    /// `jan_…` id.
    pub id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Pending or ready.
    pub status: MediaStatus,
    /// Sniffed MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Original filename, when the client gave one.
    pub filename: Option<String>,
    /// The uploader: issuer and subject of their token ([`crate::auth::Principal::owner`]).
    pub uploader: String,
    /// The client-supplied `user_id` (a hint only).
    pub user_hint: Option<String>,
    /// Key of the bytes in the blob store.
    pub storage_key: String,
    /// SHA-256 of the bytes (absent while pending).
    pub sha256: Option<[u8; 32]>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// When the media expires, if retention applies.
    pub retention_until: Option<DateTime<Utc>>,
}

/// A media row read back: the record, decrypted, and what the database adds.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMedia {
    /// The plaintext record.
    pub record: MediaRecord,
    /// DEK version the row is sealed under.
    pub dek_version: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// What an insert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row was stored.
    Inserted,
    /// The tenant already has media with the same bytes: its id.
    Duplicate(String),
}

#[derive(sqlx::FromRow)]
struct MediaRow {
    id: String,
    tenant_id: String,
    status: String,
    mime: String,
    size_bytes: i64,
    dek_version: i32,
    #[sqlx(flatten)]
    sealed: SealedColumns,
    created_at: DateTime<Utc>,
    retention_until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, status, mime, size_bytes, dek_version, filename_enc, uploader_enc, \
     user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, retention_until";
const INSERT: &str = "INSERT INTO media_objects (tenant_id, id, status, mime, size_bytes, dek_version, content_mac, \
     filename_enc, uploader_enc, user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, updated_at, \
     retention_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)";
const SELECT_BY_MAC: &str = "SELECT id FROM media_objects WHERE tenant_id = $1 AND content_mac = $2";
const REENCRYPT: &str = "UPDATE media_objects SET dek_version = $4, filename_enc = $5, uploader_enc = $6, \
     user_hint_enc = $7, storage_key_enc = $8, sha256_enc = $9, metadata_enc = $10, updated_at = $11 \
     WHERE tenant_id = $1 AND id = $2 AND dek_version = $3";
const SELECT_STORAGE_KEYS: &str = "SELECT id, dek_version, storage_key_enc FROM media_objects \
     WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";
const REENCRYPT_PG: &str = "UPDATE media_objects AS m SET dek_version = $2, filename_enc = u.filename, \
     uploader_enc = u.uploader, user_hint_enc = u.user_hint, storage_key_enc = u.storage_key, sha256_enc = u.sha256, \
     metadata_enc = u.metadata, updated_at = $11 \
     FROM UNNEST($3::text[], $4::int4[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[]) \
     AS u(id, old_version, filename, uploader, user_hint, storage_key, sha256, metadata) \
     WHERE m.tenant_id = $1 AND m.id = u.id AND m.dek_version = u.old_version";
const MARK_READY: &str = "UPDATE media_objects SET status = 'ready', mime = $3, size_bytes = $4, dek_version = $5, \
     content_mac = $6, filename_enc = $7, uploader_enc = $8, user_hint_enc = $9, storage_key_enc = $10, sha256_enc = $11, \
     metadata_enc = $12, updated_at = $13 WHERE tenant_id = $1 AND id = $2 AND status = 'pending'";
const SWEEPABLE: &str = "SELECT tenant_id, id FROM media_objects \
     WHERE (retention_until < $1 OR (status = 'pending' AND created_at < $2)) AND (tenant_id, id) > ($3, $4) \
     ORDER BY tenant_id, id LIMIT $5";
const DELETE: &str = "DELETE FROM media_objects WHERE tenant_id = $1 AND id = $2 AND ($3 IS NULL OR status = $3)";

/// Encrypted access to `media_objects`.
#[derive(Debug, Clone)]
pub struct MediaRepo {
    db: Database,
    keys: Arc<TenantKeys>,
    cache: Option<Arc<ReadyCache>>,
}

/// The sensitive columns of a row in the clear.
#[derive(Debug, Clone, PartialEq)]
struct PlainColumns {
    filename: Option<String>,
    uploader: String,
    user_hint: Option<String>,
    storage_key: String,
    sha256: Option<[u8; 32]>,
    metadata: Option<serde_json::Value>,
}

impl From<&MediaRecord> for PlainColumns {
    fn from(record: &MediaRecord) -> Self {
        Self {
            filename: record.filename.clone(),
            uploader: record.uploader.clone(),
            user_hint: record.user_hint.clone(),
            storage_key: record.storage_key.clone(),
            sha256: record.sha256,
            metadata: record.metadata.clone(),
        }
    }
}

/// The same columns sealed under one DEK version (as stored in the `*_enc` columns).
#[derive(Debug, Clone, sqlx::FromRow)]
struct SealedColumns {
    #[sqlx(rename = "filename_enc")]
    filename: Option<Vec<u8>>,
    #[sqlx(rename = "uploader_enc")]
    uploader: Vec<u8>,
    #[sqlx(rename = "user_hint_enc")]
    user_hint: Option<Vec<u8>>,
    #[sqlx(rename = "storage_key_enc")]
    storage_key: Vec<u8>,
    #[sqlx(rename = "sha256_enc")]
    sha256: Option<Vec<u8>>,
    #[sqlx(rename = "metadata_enc")]
    metadata: Option<Vec<u8>>,
}

impl SealedColumns {
    /// How many values were sealed (each one is an encryption under the DEK).
    fn count(&self) -> u64 {
        2 + [&self.filename, &self.user_hint, &self.sha256, &self.metadata].iter().filter(|c| c.is_some()).count()
            as u64
    }
}

/// Binds the six sealed columns, in table order, to a statement on either database.
trait BindSealed<'q> {
    fn bind_sealed(self, sealed: &'q SealedColumns) -> Self;
}

impl<'q, DB> BindSealed<'q> for sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    Option<Vec<u8>>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    fn bind_sealed(self, sealed: &'q SealedColumns) -> Self {
        self.bind(sealed.filename.clone())
            .bind(sealed.uploader.clone())
            .bind(sealed.user_hint.clone())
            .bind(sealed.storage_key.clone())
            .bind(sealed.sha256.clone())
            .bind(sealed.metadata.clone())
    }
}

/// Seals and opens the columns of one row (tenant and id are part of every value's AAD).
struct RowCipher<'a> {
    cipher: &'a FieldCipher,
    tenant: &'a str,
    id: &'a str,
}

impl RowCipher<'_> {
    fn context<'c>(&'c self, column: &'c str) -> FieldContext<'c> {
        FieldContext { tenant: self.tenant, table: TABLE, column, row_id: self.id }
    }

    fn seal(&self, column: &str, plaintext: &[u8]) -> Vec<u8> {
        self.cipher.seal(&self.context(column), plaintext)
    }

    fn open(&self, column: &str, sealed: &[u8]) -> Result<Vec<u8>, DbError> {
        if sealed_version(sealed)? != self.cipher.version() {
            return Err(CryptoError::Integrity.into());
        }
        Ok(self.cipher.open(&self.context(column), sealed)?.to_vec())
    }

    fn open_text(&self, column: &str, sealed: &[u8]) -> Result<String, DbError> {
        String::from_utf8(self.open(column, sealed)?).map_err(|_| CryptoError::Integrity.into())
    }

    fn seal_all(&self, plain: &PlainColumns) -> SealedColumns {
        SealedColumns {
            filename: plain.filename.as_ref().map(|v| self.seal("filename", v.as_bytes())),
            uploader: self.seal("uploader", plain.uploader.as_bytes()),
            user_hint: plain.user_hint.as_ref().map(|v| self.seal("user_hint", v.as_bytes())),
            storage_key: self.seal("storage_key", plain.storage_key.as_bytes()),
            sha256: plain.sha256.as_ref().map(|v| self.seal("sha256", v)),
            metadata: plain.metadata.as_ref().map(|v| self.seal("metadata", v.to_string().as_bytes())),
        }
    }

    fn open_all(&self, sealed: &SealedColumns) -> Result<PlainColumns, DbError> {
        let sha256 = match &sealed.sha256 {
            Some(s) => Some(<[u8; 32]>::try_from(self.open("sha256", s)?).map_err(|_| CryptoError::Integrity)?),
            None => None,
        };
        let metadata = match &sealed.metadata {
            Some(s) => Some(serde_json::from_slice(&self.open("metadata", s)?).map_err(|_| CryptoError::Integrity)?),
            None => None,
        };
        Ok(PlainColumns {
            filename: sealed.filename.as_deref().map(|s| self.open_text("filename", s)).transpose()?,
            uploader: self.open_text("uploader", &sealed.uploader)?,
            user_hint: sealed.user_hint.as_deref().map(|s| self.open_text("user_hint", s)).transpose()?,
            storage_key: self.open_text("storage_key", &sealed.storage_key)?,
            sha256,
            metadata,
        })
    }
}

impl MediaRow {
    fn version(&self) -> Result<u32, DbError> {
        u32::try_from(self.dek_version).map_err(|_| CryptoError::Integrity.into())
    }
}

/// Rows read and re-sealed under a new DEK version, not yet written.
#[derive(Debug)]
pub struct PreparedBatch {
    last_id: Option<String>,
    updates: Vec<(String, u32, SealedColumns)>,
}

impl PreparedBatch {
    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.updates.len()
    }

    /// Whether the batch is empty (the tenant has no rows left after the cursor).
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// The keyset cursor for the next batch.
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }
}

/// What one re-encryption batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReencryptBatch {
    /// Rows read in this batch (0 means the tenant is done).
    pub scanned: u64,
    /// Rows moved to the target version.
    pub reencrypted: u64,
    /// Rows changed by someone else meanwhile (compare-and-set lost); the next pass sees them again.
    pub skipped: u64,
    /// The last id of the batch (keyset pagination cursor).
    pub last_id: Option<String>,
}

impl MediaRepo {
    /// A repository over `db`, keys from `keys`.
    pub fn new(db: Database, keys: Arc<TenantKeys>) -> Self {
        Self { db, keys, cache: None }
    }

    /// The same repository, caching decrypted ready rows for `ttl` (see [`ReadyCache`]; zero: off).
    pub fn with_cache(mut self, ttl: std::time::Duration) -> Self {
        self.cache = ReadyCache::new(ttl).map(Arc::new);
        self
    }

    /// Drops every cached row of `tenant` (after a shred in this process).
    pub fn forget_tenant(&self, tenant: &str) {
        if let Some(cache) = &self.cache {
            cache.forget_tenant(tenant);
        }
    }

    fn cached(&self, tenant: &str, id: &str) -> Option<StoredMedia> {
        self.cache.as_ref().and_then(|cache| cache.get(tenant, id))
    }

    fn remember(&self, media: &StoredMedia) {
        if let Some(cache) = &self.cache {
            cache.put(media);
        }
    }

    fn forget(&self, tenant: &str, id: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(tenant, id);
        }
    }

    /// The blind-index MAC of content with this SHA-256 in `tenant`.
    pub async fn content_mac(&self, tenant: &str, sha256: &[u8; 32]) -> Result<[u8; 32], DbError> {
        let index_key = self.keys.current(tenant, KeyPurpose::Index).await?;
        Ok(content_mac(&index_key, sha256))
    }

    /// Stores a row, sealing its sensitive columns. A ready row whose bytes the tenant already has
    /// is not stored: the existing id comes back as [`InsertOutcome::Duplicate`].
    pub async fn insert(&self, media: &MediaRecord) -> Result<InsertOutcome, DbError> {
        let tenant = media.tenant_id.as_str();
        let mac = match &media.sha256 {
            Some(sha) => Some(self.content_mac(tenant, sha).await?),
            None => None,
        };
        let dek = self.keys.current(tenant, KeyPurpose::Dek).await?;
        let cipher = FieldCipher::new(&dek);
        let row_cipher = RowCipher { cipher: &cipher, tenant, id: &media.id };
        let sealed = row_cipher.seal_all(&PlainColumns::from(media));
        let now = Utc::now();
        // The row and the end of its key's journal entry commit together (see `db::journal`).
        let result = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            sqlx::query(INSERT)
                .bind(tenant)
                .bind(&media.id)
                .bind(media.status.as_str())
                .bind(&media.mime)
                .bind(media.size as i64)
                .bind(dek.version as i32)
                .bind(mac.as_ref().map(|m| m.as_slice()))
                .bind_sealed(&sealed)
                .bind(now)
                .bind(media.retention_until)
                .execute(&mut *tx)
                .await?;
            sqlx::query(journal::CLOSE).bind(&media.storage_key).execute(&mut *tx).await?;
            tx.commit().await
        }
        .await);
        self.count_encryptions(tenant, dek.version, sealed.count()).await;
        match result {
            Ok(()) => Ok(InsertOutcome::Inserted),
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => match mac {
                Some(mac) => match self.id_by_mac(tenant, &mac).await? {
                    Some(existing) => Ok(InsertOutcome::Duplicate(existing)),
                    None => Err(sqlx::Error::Database(err).into()),
                },
                None => Err(sqlx::Error::Database(err).into()),
            },
            Err(err) => Err(err.into()),
        }
    }

    /// Counts encryptions after a row was written. A failure here must not turn a committed write
    /// into an error (the caller would clean up bytes the row points to), so it is logged: the count
    /// only decides when the next DEK version is rolled.
    async fn count_encryptions(&self, tenant: &str, version: u32, count: u64) {
        if let Err(err) = self.keys.record_encryptions(tenant, version, count).await {
            tracing::warn!(tenant, version, error = %err, "cannot count encryptions under a DEK");
        }
    }

    /// The id of the tenant's media with this content MAC, if any.
    pub async fn id_by_mac(&self, tenant: &str, mac: &[u8; 32]) -> Result<Option<String>, DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_BY_MAC)
            .bind(tenant)
            .bind(mac.as_slice())
            .fetch_optional(pool)
            .await)?)
    }

    /// The tenant's media with this id, decrypted; `None` when the tenant has no such id.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<StoredMedia>, DbError> {
        if let Some(hit) = self.cached(tenant, id) {
            return Ok(Some(hit));
        }
        let sql = format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id = $2");
        let row: Option<MediaRow> =
            with_pool!(&self.db, |pool| sqlx::query_as(&sql).bind(tenant).bind(id).fetch_optional(pool).await)?;
        match row {
            Some(row) => {
                let media = self.open_row(row).await?;
                self.remember(&media);
                Ok(Some(media))
            }
            None => Ok(None),
        }
    }

    /// The tenant's media among `ids`, decrypted, in one query (ids the tenant does not have are
    /// simply absent from the result).
    pub async fn get_many(&self, tenant: &str, ids: &[String]) -> Result<Vec<StoredMedia>, DbError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut missing = Vec::with_capacity(ids.len());
        for id in ids {
            match self.cached(tenant, id) {
                Some(hit) => out.push(hit),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let ids = &missing;
        let rows: Vec<MediaRow> = match &self.db {
            Database::Postgres(pool) => {
                let sql = format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id = ANY($2)");
                sqlx::query_as(&sql).bind(tenant).bind(ids).fetch_all(pool).await?
            }
            Database::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id IN (SELECT value FROM json_each($2))"
                );
                let list = serde_json::to_string(ids).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
                sqlx::query_as(&sql).bind(tenant).bind(list).fetch_all(pool).await?
            }
        };
        for row in rows {
            let media = self.open_row(row).await?;
            self.remember(&media);
            out.push(media);
        }
        Ok(out)
    }

    /// Marks a pending row ready after its bytes were verified: `ready` carries the verified type,
    /// size, hash and storage key, and the row is re-sealed under the current DEK. With `dedup`, a tenant that already has these bytes
    /// gets [`InsertOutcome::Duplicate`] and the row is left pending for the caller to remove;
    /// without it the row becomes ready with no content MAC (a second copy the index does not see).
    pub async fn mark_ready(
        &self,
        ready: &MediaRecord,
        staging_key: &str,
        dedup: bool,
    ) -> Result<InsertOutcome, DbError> {
        let sha256 = ready.sha256.ok_or(CryptoError::Integrity)?;
        let tenant = ready.tenant_id.as_str();
        debug_assert_eq!(ready.status, MediaStatus::Ready);
        let mac = if dedup { Some(self.content_mac(tenant, &sha256).await?) } else { None };
        let dek = self.keys.current(tenant, KeyPurpose::Dek).await?;
        let cipher = FieldCipher::new(&dek);
        let sealed = RowCipher { cipher: &cipher, tenant, id: &ready.id }.seal_all(&PlainColumns::from(ready));
        // The row moves to its verified key, whose journal entry ends, and the staging key it
        // leaves gets one, in one transaction (see `db::journal`).
        let result = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let updated = sqlx::query(MARK_READY)
                .bind(tenant)
                .bind(&ready.id)
                .bind(&ready.mime)
                .bind(ready.size as i64)
                .bind(dek.version as i32)
                .bind(mac.as_ref().map(|m| m.as_slice()))
                .bind_sealed(&sealed)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated == 1 {
                sqlx::query(journal::CLOSE).bind(&ready.storage_key).execute(&mut *tx).await?;
                sqlx::query(journal::OPEN).bind(staging_key).bind(Utc::now()).execute(&mut *tx).await?;
            }
            tx.commit().await.map(|()| updated)
        }
        .await);
        self.count_encryptions(tenant, dek.version, sealed.count()).await;
        match result {
            Ok(1) => Ok(InsertOutcome::Inserted),
            Ok(_) => Err(sqlx::Error::RowNotFound.into()),
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {
                let mac = mac.ok_or_else(|| DbError::from(sqlx::Error::Database(err)))?;
                let existing = self.id_by_mac(tenant, &mac).await?;
                existing.map(InsertOutcome::Duplicate).ok_or_else(|| sqlx::Error::RowNotFound.into())
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Up to `limit` rows (any tenant) that are past their retention, or pending since before
    /// `pending_before`, after the `(tenant, id)` cursor: `(tenant, id)` pairs for the sweeper.
    pub async fn sweepable(
        &self,
        now: DateTime<Utc>,
        pending_before: DateTime<Utc>,
        after: Option<&(String, String)>,
        limit: u32,
    ) -> Result<Vec<(String, String)>, DbError> {
        let (tenant, id) = after.map_or(("", ""), |(t, i)| (t.as_str(), i.as_str()));
        Ok(with_pool!(&self.db, |pool| sqlx::query_as(SWEEPABLE)
            .bind(now)
            .bind(pending_before)
            .bind(tenant)
            .bind(id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?)
    }

    /// Deletes the tenant's row — only while its status is still `status`, when given — and says
    /// whether it did. With `journal` (the key of the object the row referenced, still to be deleted,
    /// and when the sweeper may take it), the key is journaled in the same transaction, so a crash
    /// before the object is gone leaves it to the sweeper (`db::journal`).
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        status: Option<MediaStatus>,
        journal: Option<(&str, DateTime<Utc>)>,
    ) -> Result<bool, DbError> {
        self.forget(tenant, id);
        let status = status.map(MediaStatus::as_str);
        let deleted = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let deleted =
                sqlx::query(DELETE).bind(tenant).bind(id).bind(status).execute(&mut *tx).await?.rows_affected();
            if let (1, Some((key, at))) = (deleted, journal) {
                sqlx::query(journal::OPEN).bind(key).bind(at).execute(&mut *tx).await?;
            }
            tx.commit().await.map(|()| deleted)
        }
        .await)?;
        // Again after the delete: a read racing it may have cached the row meanwhile.
        self.forget(tenant, id);
        Ok(deleted == 1)
    }

    /// Up to `limit` of the tenant's rows after `after` (id order) with their decrypted storage keys,
    /// or the error that kept a storage key from being read.
    pub async fn storage_keys(
        &self,
        tenant: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Result<String, DbError>)>, DbError> {
        let rows: Vec<(String, i32, Vec<u8>)> = with_pool!(&self.db, |pool| sqlx::query_as(SELECT_STORAGE_KEYS)
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, version, sealed) in rows {
            let key = match u32::try_from(version) {
                Ok(version) => match self.keys.version(tenant, KeyPurpose::Dek, version).await {
                    Ok(dek) => {
                        RowCipher { cipher: &FieldCipher::new(&dek), tenant, id: &id }.open_text("storage_key", &sealed)
                    }
                    Err(err) => Err(err),
                },
                Err(_) => Err(CryptoError::Integrity.into()),
            };
            out.push((id, key));
        }
        Ok(out)
    }

    /// Writes a batch of re-encrypted rows, each only if still on the version it was read with. On
    /// Postgres one `UPDATE … FROM UNNEST(…)` statement (one round trip per batch); on SQLite one
    /// statement per row in one transaction (no network round trips there).
    async fn write_rows(
        &self,
        tenant: &str,
        target: u32,
        updates: &[(String, u32, SealedColumns)],
    ) -> Result<u64, DbError> {
        let now = Utc::now();
        match &self.db {
            Database::Postgres(pool) => {
                let column =
                    |f: fn(&SealedColumns) -> Option<Vec<u8>>| updates.iter().map(|(_, _, s)| f(s)).collect::<Vec<_>>();
                let result = sqlx::query(REENCRYPT_PG)
                    .bind(tenant)
                    .bind(target as i32)
                    .bind(updates.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>())
                    .bind(updates.iter().map(|(_, v, _)| *v as i32).collect::<Vec<_>>())
                    .bind(column(|s| s.filename.clone()))
                    .bind(column(|s| Some(s.uploader.clone())))
                    .bind(column(|s| s.user_hint.clone()))
                    .bind(column(|s| Some(s.storage_key.clone())))
                    .bind(column(|s| s.sha256.clone()))
                    .bind(column(|s| s.metadata.clone()))
                    .bind(now)
                    .execute(pool)
                    .await?;
                Ok(result.rows_affected())
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut changed = 0u64;
                for (id, old_version, sealed) in updates {
                    changed += sqlx::query(REENCRYPT)
                        .bind(tenant)
                        .bind(id)
                        .bind(*old_version as i32)
                        .bind(target as i32)
                        .bind_sealed(sealed)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(changed)
            }
        }
    }

    async fn open_row(&self, row: MediaRow) -> Result<StoredMedia, DbError> {
        let version = row.version()?;
        let dek = self.keys.version(&row.tenant_id, KeyPurpose::Dek, version).await?;
        let plain =
            RowCipher { cipher: &FieldCipher::new(&dek), tenant: &row.tenant_id, id: &row.id }.open_all(&row.sealed)?;
        let record = MediaRecord {
            filename: plain.filename,
            uploader: plain.uploader,
            user_hint: plain.user_hint,
            storage_key: plain.storage_key,
            sha256: plain.sha256,
            metadata: plain.metadata,
            status: MediaStatus::parse(&row.status)?,
            size: u64::try_from(row.size_bytes).map_err(|_| CryptoError::Integrity)?,
            retention_until: row.retention_until,
            mime: row.mime,
            id: row.id,
            tenant_id: row.tenant_id,
        };
        Ok(StoredMedia { record, dek_version: version, created_at: row.created_at })
    }

    /// Reads up to `limit` rows of `tenant` not yet on `target` (ids after `after`, in id order) and
    /// re-seals them: each row is opened with its own version, sealed under `target`, and the new
    /// values are opened again to verify them. Nothing is written yet ([`Self::write_reencrypted`]).
    pub async fn prepare_reencrypt(
        &self,
        tenant: &str,
        target: u32,
        after: Option<&str>,
        limit: u32,
    ) -> Result<PreparedBatch, DbError> {
        let new_cipher = FieldCipher::new(&*self.keys.version(tenant, KeyPurpose::Dek, target).await?);
        let select = format!(
            "SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND dek_version <> $2 AND id > $3 \
             ORDER BY id LIMIT $4"
        );
        let rows: Vec<MediaRow> = with_pool!(&self.db, |pool| sqlx::query_as(&select)
            .bind(tenant)
            .bind(target as i32)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        let mut old_ciphers: HashMap<u32, FieldCipher> = HashMap::new();
        let mut updates = Vec::with_capacity(rows.len());
        for row in &rows {
            let old_version = row.version()?;
            if let Entry::Vacant(slot) = old_ciphers.entry(old_version) {
                slot.insert(FieldCipher::new(&*self.keys.version(tenant, KeyPurpose::Dek, old_version).await?));
            }
            let plain = RowCipher { cipher: &old_ciphers[&old_version], tenant, id: &row.id }.open_all(&row.sealed)?;
            let resealer = RowCipher { cipher: &new_cipher, tenant, id: &row.id };
            let sealed = resealer.seal_all(&plain);
            if resealer.open_all(&sealed)? != plain {
                return Err(CryptoError::Integrity.into());
            }
            updates.push((row.id.clone(), old_version, sealed));
        }
        Ok(PreparedBatch { last_id: rows.last().map(|r| r.id.clone()), updates })
    }

    /// Writes a prepared batch (compare-and-set per row) and counts its encryptions.
    pub async fn write_reencrypted(
        &self,
        tenant: &str,
        target: u32,
        batch: PreparedBatch,
    ) -> Result<ReencryptBatch, DbError> {
        let encryptions: u64 = batch.updates.iter().map(|(_, _, sealed)| sealed.count()).sum();
        let reencrypted = self.write_rows(tenant, target, &batch.updates).await?;
        self.keys.record_encryptions(tenant, target, encryptions).await?;
        Ok(ReencryptBatch {
            scanned: batch.updates.len() as u64,
            reencrypted,
            skipped: batch.updates.len() as u64 - reencrypted,
            last_id: batch.last_id,
        })
    }
}
