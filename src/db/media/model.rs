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
    /// The tenant DEK version the object is sealed under (DESIGN §9); `None`: stored in the clear.
    /// Rows sharing an object (a dedup group) share it. The row's own columns are sealed under
    /// [`StoredMedia::dek_version`], which rotation changes without touching the object.
    pub object_dek_version: Option<u32>,
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

/// What an insert (or a completion) did; see [`super::group`] for the dedup rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The row was stored and references its own new object (the first of its bytes in the tenant).
    Inserted,
    /// The row was stored, but the tenant already has these bytes: it references the existing
    /// object, under this storage key, and the object the caller just wrote is referenced by nothing
    /// (still journaled, for the caller to delete).
    Joined {
        /// The storage key of the shared object (the row's storage key).
        storage_key: String,
        /// The DEK version the shared object is sealed under (`None`: in the clear), now the row's.
        object_dek_version: Option<u32>,
    },
    /// The same uploader already has media with these bytes: its id. Nothing was written.
    Duplicate(String),
}

/// What a row delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// No row was deleted (gone already, or no longer in the state asked for).
    None,
    /// The row was deleted; other rows still reference its object, which stays.
    Shared,
    /// The row was deleted and was its object's last reference: the object is to be deleted (its key
    /// was journaled in the same transaction, when a key was given).
    Last,
}

impl Deletion {
    /// Whether a row was deleted.
    pub fn deleted(self) -> bool {
        self != Self::None
    }
}

#[derive(Clone, sqlx::FromRow)]
pub(super) struct MediaRow {
    pub(super) id: String,
    pub(super) tenant_id: String,
    pub(super) status: String,
    pub(super) mime: String,
    pub(super) size_bytes: i64,
    pub(super) dek_version: i32,
    pub(super) object_dek_version: Option<i32>,
    #[sqlx(flatten)]
    pub(super) sealed: super::cipher::SealedColumns,
    pub(super) created_at: DateTime<Utc>,
    pub(super) retention_until: Option<DateTime<Utc>>,
    /// Raised by every in-place write (compare-and-set).
    pub(super) revision: i64,
}
