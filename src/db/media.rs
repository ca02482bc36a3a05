//! The encrypted media repository: plaintext [`NewMedia`]/[`Media`] structs in and out, rows with
//! every sensitive column sealed under the tenant's current DEK in between.
//!
//! Encrypted columns: original filename, uploader subject, client `user_id` hint, storage key,
//! sha256 and free-form metadata. Plain columns: id, tenant, mime, size, status, timestamps,
//! retention and `dek_version`. Each value's AAD names its tenant, table, column and row, so a value
//! copied anywhere else fails with [`CryptoError::Integrity`](crate::crypto::CryptoError::Integrity)
//! (code `data_integrity`), never a wrong value. Every read is by `(tenant_id, id)`; there is no read
//! by id alone. Dedup goes through the blind index: `content_mac` is unique per tenant.

use std::sync::Arc;

use chrono::{DateTime, Utc};

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

/// A media row to insert, in the clear.
#[derive(Debug, Clone)]
pub struct NewMedia {
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
    /// Subject of the uploader's token.
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

/// A media row read back, decrypted.
#[derive(Debug, Clone, PartialEq)]
pub struct Media {
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
    /// Original filename.
    pub filename: Option<String>,
    /// Uploader subject.
    pub uploader: String,
    /// Client `user_id` hint.
    pub user_hint: Option<String>,
    /// Blob store key.
    pub storage_key: String,
    /// SHA-256 of the bytes.
    pub sha256: Option<[u8; 32]>,
    /// Free-form metadata.
    pub metadata: Option<serde_json::Value>,
    /// DEK version the row is sealed under.
    pub dek_version: u32,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Retention deadline.
    pub retention_until: Option<DateTime<Utc>>,
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
    filename_enc: Option<Vec<u8>>,
    uploader_enc: Vec<u8>,
    user_hint_enc: Option<Vec<u8>>,
    storage_key_enc: Vec<u8>,
    sha256_enc: Option<Vec<u8>>,
    metadata_enc: Option<Vec<u8>>,
    created_at: DateTime<Utc>,
    retention_until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, tenant_id, status, mime, size_bytes, dek_version, filename_enc, uploader_enc, \
     user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, retention_until";
const INSERT: &str = "INSERT INTO media_objects (tenant_id, id, status, mime, size_bytes, dek_version, content_mac, \
     filename_enc, uploader_enc, user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, updated_at, \
     retention_until) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)";
const SELECT_BY_MAC: &str = "SELECT id FROM media_objects WHERE tenant_id = $1 AND content_mac = $2";
const DELETE: &str = "DELETE FROM media_objects WHERE tenant_id = $1 AND id = $2";

/// Encrypted access to `media_objects`.
#[derive(Debug, Clone)]
pub struct MediaRepo {
    db: Database,
    keys: Arc<TenantKeys>,
}

/// Seals the optional columns of one row under one cipher, counting encryptions.
struct Sealer<'a> {
    cipher: FieldCipher,
    tenant: &'a str,
    id: &'a str,
    count: u64,
}

impl Sealer<'_> {
    fn seal(&mut self, column: &str, plaintext: &[u8]) -> Vec<u8> {
        self.count += 1;
        let context = FieldContext { tenant: self.tenant, table: TABLE, column, row_id: self.id };
        self.cipher.seal(&context, plaintext)
    }

    fn seal_opt(&mut self, column: &str, plaintext: Option<&[u8]>) -> Option<Vec<u8>> {
        plaintext.map(|p| self.seal(column, p))
    }
}

impl MediaRepo {
    /// A repository over `db`, keys from `keys`.
    pub fn new(db: Database, keys: Arc<TenantKeys>) -> Self {
        Self { db, keys }
    }

    /// The blind-index MAC of content with this SHA-256 in `tenant`.
    pub async fn content_mac(&self, tenant: &str, sha256: &[u8; 32]) -> Result<[u8; 32], DbError> {
        let index_key = self.keys.current(tenant, KeyPurpose::Index).await?;
        Ok(content_mac(&index_key, sha256))
    }

    /// Stores a row, sealing its sensitive columns. A ready row whose bytes the tenant already has
    /// is not stored: the existing id comes back as [`InsertOutcome::Duplicate`].
    pub async fn insert(&self, media: &NewMedia) -> Result<InsertOutcome, DbError> {
        let tenant = media.tenant_id.as_str();
        let mac = match &media.sha256 {
            Some(sha) => Some(self.content_mac(tenant, sha).await?),
            None => None,
        };
        let dek = self.keys.current(tenant, KeyPurpose::Dek).await?;
        let mut sealer = Sealer { cipher: FieldCipher::new(&dek), tenant, id: &media.id, count: 0 };
        let metadata = media.metadata.as_ref().map(|m| m.to_string().into_bytes());
        let filename = sealer.seal_opt("filename", media.filename.as_deref().map(str::as_bytes));
        let uploader = sealer.seal("uploader", media.uploader.as_bytes());
        let user_hint = sealer.seal_opt("user_hint", media.user_hint.as_deref().map(str::as_bytes));
        let storage_key = sealer.seal("storage_key", media.storage_key.as_bytes());
        let sha256 = sealer.seal_opt("sha256", media.sha256.as_ref().map(|s| s.as_slice()));
        let metadata = sealer.seal_opt("metadata", metadata.as_deref());
        let now = Utc::now();
        let result = with_pool!(&self.db, |pool| sqlx::query(INSERT)
            .bind(tenant)
            .bind(&media.id)
            .bind(media.status.as_str())
            .bind(&media.mime)
            .bind(media.size as i64)
            .bind(dek.version as i32)
            .bind(mac.as_ref().map(|m| m.as_slice()))
            .bind(&filename)
            .bind(&uploader)
            .bind(&user_hint)
            .bind(&storage_key)
            .bind(&sha256)
            .bind(&metadata)
            .bind(now)
            .bind(media.retention_until)
            .execute(pool)
            .await
            .map(|_| ()));
        self.keys.record_encryptions(tenant, dek.version, sealer.count).await?;
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

    /// The id of the tenant's media with this content MAC, if any.
    pub async fn id_by_mac(&self, tenant: &str, mac: &[u8; 32]) -> Result<Option<String>, DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_BY_MAC)
            .bind(tenant)
            .bind(mac.as_slice())
            .fetch_optional(pool)
            .await)?)
    }

    /// The tenant's media with this id, decrypted; `None` when the tenant has no such id.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<Media>, DbError> {
        let sql = format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND id = $2");
        let row: Option<MediaRow> =
            with_pool!(&self.db, |pool| sqlx::query_as(&sql).bind(tenant).bind(id).fetch_optional(pool).await)?;
        match row {
            Some(row) => Ok(Some(self.open_row(row).await?)),
            None => Ok(None),
        }
    }

    /// Deletes the tenant's row; `false` when there was none.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, DbError> {
        let deleted = with_pool!(&self.db, |pool| sqlx::query(DELETE)
            .bind(tenant)
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(deleted == 1)
    }

    async fn open_row(&self, row: MediaRow) -> Result<Media, DbError> {
        let version = u32::try_from(row.dek_version).map_err(|_| CryptoError::Integrity)?;
        let dek = self.keys.version(&row.tenant_id, KeyPurpose::Dek, version).await?;
        let cipher = FieldCipher::new(&dek);
        let open = |column: &str, sealed: &[u8]| -> Result<Vec<u8>, DbError> {
            if sealed_version(sealed)? != version {
                return Err(CryptoError::Integrity.into());
            }
            let context = FieldContext { tenant: &row.tenant_id, table: TABLE, column, row_id: &row.id };
            Ok(cipher.open(&context, sealed)?.to_vec())
        };
        let text = |column: &str, sealed: &[u8]| -> Result<String, DbError> {
            String::from_utf8(open(column, sealed)?).map_err(|_| CryptoError::Integrity.into())
        };
        let sha256 = match &row.sha256_enc {
            Some(sealed) => Some(<[u8; 32]>::try_from(open("sha256", sealed)?).map_err(|_| CryptoError::Integrity)?),
            None => None,
        };
        let metadata = match &row.metadata_enc {
            Some(sealed) => {
                Some(serde_json::from_slice(&open("metadata", sealed)?).map_err(|_| CryptoError::Integrity)?)
            }
            None => None,
        };
        Ok(Media {
            filename: row.filename_enc.as_deref().map(|s| text("filename", s)).transpose()?,
            uploader: text("uploader", &row.uploader_enc)?,
            user_hint: row.user_hint_enc.as_deref().map(|s| text("user_hint", s)).transpose()?,
            storage_key: text("storage_key", &row.storage_key_enc)?,
            sha256,
            metadata,
            status: MediaStatus::parse(&row.status)?,
            size: u64::try_from(row.size_bytes).map_err(|_| CryptoError::Integrity)?,
            dek_version: version,
            created_at: row.created_at,
            retention_until: row.retention_until,
            mime: row.mime,
            id: row.id,
            tenant_id: row.tenant_id,
        })
    }
}
