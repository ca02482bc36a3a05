//! Sealing a row: the sensitive columns in the clear ([`PlainColumns`]) and sealed
//! ([`SealedColumns`]), and the [`RowCipher`] that moves between them under one DEK version, each
//! value's AAD naming its tenant, table, column and row.

use super::model::{MediaRecord, MediaRow};
use super::sql::TABLE;
use crate::crypto::field::{sealed_version, FieldCipher, FieldContext};
use crate::crypto::CryptoError;
use crate::db::DbError;

/// The sensitive columns of a row in the clear.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PlainColumns {
    pub(super) filename: Option<String>,
    pub(super) uploader: String,
    pub(super) user_hint: Option<String>,
    pub(super) storage_key: String,
    pub(super) sha256: Option<[u8; 32]>,
    pub(super) metadata: Option<serde_json::Value>,
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
pub(super) struct SealedColumns {
    #[sqlx(rename = "filename_enc")]
    pub(super) filename: Option<Vec<u8>>,
    #[sqlx(rename = "uploader_enc")]
    pub(super) uploader: Vec<u8>,
    #[sqlx(rename = "user_hint_enc")]
    pub(super) user_hint: Option<Vec<u8>>,
    #[sqlx(rename = "storage_key_enc")]
    pub(super) storage_key: Vec<u8>,
    #[sqlx(rename = "sha256_enc")]
    pub(super) sha256: Option<Vec<u8>>,
    #[sqlx(rename = "metadata_enc")]
    pub(super) metadata: Option<Vec<u8>>,
}

impl SealedColumns {
    /// How many values were sealed (each one is an encryption under the DEK).
    pub(super) fn count(&self) -> u64 {
        2 + [&self.filename, &self.user_hint, &self.sha256, &self.metadata].iter().filter(|c| c.is_some()).count()
            as u64
    }
}

/// Binds the six sealed columns, in table order, to a statement on either database.
pub(super) trait BindSealed<'q> {
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
pub(super) struct RowCipher<'a> {
    pub(super) cipher: &'a FieldCipher,
    pub(super) tenant: &'a str,
    pub(super) id: &'a str,
}

impl RowCipher<'_> {
    pub(super) fn context<'c>(&'c self, column: &'c str) -> FieldContext<'c> {
        FieldContext { tenant: self.tenant, table: TABLE, column, row_id: self.id }
    }

    pub(super) fn seal(&self, column: &str, plaintext: &[u8]) -> Vec<u8> {
        self.cipher.seal(&self.context(column), plaintext)
    }

    pub(super) fn open(&self, column: &str, sealed: &[u8]) -> Result<Vec<u8>, DbError> {
        if sealed_version(sealed)? != self.cipher.version() {
            return Err(CryptoError::Integrity.into());
        }
        Ok(self.cipher.open(&self.context(column), sealed)?.to_vec())
    }

    pub(super) fn open_text(&self, column: &str, sealed: &[u8]) -> Result<String, DbError> {
        String::from_utf8(self.open(column, sealed)?).map_err(|_| CryptoError::Integrity.into())
    }

    pub(super) fn seal_all(&self, plain: &PlainColumns) -> SealedColumns {
        SealedColumns {
            filename: plain.filename.as_ref().map(|v| self.seal("filename", v.as_bytes())),
            uploader: self.seal("uploader", plain.uploader.as_bytes()),
            user_hint: plain.user_hint.as_ref().map(|v| self.seal("user_hint", v.as_bytes())),
            storage_key: self.seal("storage_key", plain.storage_key.as_bytes()),
            sha256: plain.sha256.as_ref().map(|v| self.seal("sha256", v)),
            metadata: plain.metadata.as_ref().map(|v| self.seal("metadata", v.to_string().as_bytes())),
        }
    }

    pub(super) fn open_all(&self, sealed: &SealedColumns) -> Result<PlainColumns, DbError> {
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
    pub(super) fn version(&self) -> Result<u32, DbError> {
        u32::try_from(self.dek_version).map_err(|_| CryptoError::Integrity.into())
    }
}
