//! Re-encrypting a tenant's rows under a new DEK version (what `rotate-keys` drives): batches are
//! read and re-sealed, verified, then written with a compare-and-set on the revision (and version)
//! they were read at, so a row changed meanwhile — a direct upload completed, sealed by a writer whose
//! cache still named the old version — is skipped and seen again by the next pass, never overwritten.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use chrono::Utc;

use super::cipher::{BindSealed, RowCipher, SealedColumns};
use super::model::MediaRow;
use super::sql::{COLUMNS, REENCRYPT, REENCRYPT_PG};
use super::MediaRepo;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::FieldCipher;
use crate::crypto::CryptoError;
use crate::db::{Database, DbError};
use crate::with_pool;

/// One row re-sealed under the target version, with what it was read as.
#[derive(Debug)]
struct RowUpdate {
    id: String,
    /// The DEK version it was read under.
    old_version: u32,
    /// The revision it was read at: the write happens only if it is still the row's.
    revision: i64,
    sealed: SealedColumns,
}

/// Rows read and re-sealed under a new DEK version, not yet written.
#[derive(Debug)]
pub struct PreparedBatch {
    last_id: Option<String>,
    updates: Vec<RowUpdate>,
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
    /// Writes a batch of re-encrypted rows, each only if it is still at the revision (and on the
    /// version) it was read at — a row completed or otherwise rewritten meanwhile is left alone. On
    /// Postgres one `UPDATE … FROM UNNEST(…)` statement (one round trip per batch); on SQLite one
    /// statement per row in one transaction (no network round trips there).
    async fn write_rows(&self, tenant: &str, target: u32, updates: &[RowUpdate]) -> Result<u64, DbError> {
        let now = Utc::now();
        match &self.db {
            Database::Postgres(pool) => {
                let column =
                    |f: fn(&SealedColumns) -> Option<Vec<u8>>| updates.iter().map(|u| f(&u.sealed)).collect::<Vec<_>>();
                let result = sqlx::query(REENCRYPT_PG)
                    .bind(tenant)
                    .bind(target as i32)
                    .bind(updates.iter().map(|u| u.id.as_str()).collect::<Vec<_>>())
                    .bind(updates.iter().map(|u| u.old_version as i32).collect::<Vec<_>>())
                    .bind(column(|s| s.filename.clone()))
                    .bind(column(|s| Some(s.uploader.clone())))
                    .bind(column(|s| s.user_hint.clone()))
                    .bind(column(|s| Some(s.storage_key.clone())))
                    .bind(column(|s| s.sha256.clone()))
                    .bind(column(|s| s.metadata.clone()))
                    .bind(now)
                    .bind(updates.iter().map(|u| u.revision).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                Ok(result.rows_affected())
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut changed = 0u64;
                for update in updates {
                    changed += sqlx::query(REENCRYPT)
                        .bind(tenant)
                        .bind(&update.id)
                        .bind(update.old_version as i32)
                        .bind(target as i32)
                        .bind_sealed(&update.sealed)
                        .bind(now)
                        .bind(update.revision)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(changed)
            }
        }
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
            updates.push(RowUpdate { id: row.id.clone(), old_version, revision: row.revision, sealed });
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
        let encryptions: u64 = batch.updates.iter().map(|u| u.sealed.count()).sum();
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
