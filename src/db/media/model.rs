//! The plaintext side of a media row: what callers put in and get out of [`super::MediaRepo`].

use chrono::{DateTime, Utc};

use crate::crypto::CryptoError;
use crate::db::DbError;

/// Upload state of a media row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatus {
    /// A direct upload was prepared but not verified yet.
    Pending,
    /// The bytes are stored and verified.
    Ready,
}

impl MediaStatus {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
        }
    }

    pub(super) fn parse(text: &str) -> Result<Self, DbError> {
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
pub(super) struct MediaRow {
    pub(super) id: String,
    pub(super) tenant_id: String,
    pub(super) status: String,
    pub(super) mime: String,
    pub(super) size_bytes: i64,
    pub(super) dek_version: i32,
    #[sqlx(flatten)]
    pub(super) sealed: super::cipher::SealedColumns,
    pub(super) created_at: DateTime<Utc>,
    pub(super) retention_until: Option<DateTime<Utc>>,
    /// Raised by every in-place write (compare-and-set).
    pub(super) revision: i64,
}
