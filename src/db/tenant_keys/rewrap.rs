//! Re-wrapping tenant keys under the primary KEK (`rotate-keys` after a KEK rotation): the keys
//! not under it are read, re-wrapped in memory, and written back by a compare-and-set on the KEK they
//! were read under — and only while their material is still there: a key a shred destroyed between
//! the read and the write stays destroyed (its row is never given material back).

use super::TenantKeys;
use crate::crypto::envelope::{self, KeyPurpose, KeySlot, WrappedKey};
use crate::crypto::CryptoError;
use crate::db::{Database, DbError};
use crate::with_pool;

/// Key rows re-wrapped per transaction.
const REWRAP_BATCH: usize = 500;

const SELECT_NOT_UNDER: &str = "SELECT tenant_id, purpose, version, kek_id, wrapped_key FROM tenant_keys \
     WHERE kek_id <> $1 AND wrapped_key IS NOT NULL AND state <> 'destroyed' \
     AND ($2 IS NULL OR tenant_id = $2) ORDER BY tenant_id, purpose, version";
const REWRAP: &str = "UPDATE tenant_keys SET kek_id = $5, wrapped_key = $6 \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3 AND kek_id = $4 \
     AND wrapped_key IS NOT NULL AND state <> 'destroyed'";
const REWRAP_PG: &str = "UPDATE tenant_keys AS t SET kek_id = $1, wrapped_key = u.wrapped \
     FROM UNNEST($2::text[], $3::text[], $4::int4[], $5::text[], $6::bytea[]) \
     AS u(tenant_id, purpose, version, old_kek, wrapped) \
     WHERE t.tenant_id = u.tenant_id AND t.purpose = u.purpose AND t.version = u.version AND t.kek_id = u.old_kek \
     AND t.wrapped_key IS NOT NULL AND t.state <> 'destroyed'";

/// A key row as read for re-wrapping: where it is and its wrapped material.
#[derive(Debug, Clone)]
pub struct KeyToRewrap {
    tenant_id: String,
    purpose: String,
    version: i32,
    kek_id: String,
    wrapped: Vec<u8>,
}

impl TenantKeys {
    /// Re-wraps every key of `tenant` (every tenant when `None`) that is not under the primary KEK.
    /// Returns how many keys were re-wrapped.
    pub async fn rewrap_to_primary(&self, tenant: Option<&str>) -> Result<u64, DbError> {
        let keys = self.not_under_primary(tenant).await?;
        self.rewrap(&keys).await
    }

    /// The live keys of `tenant` (every tenant when `None`) not wrapped under the primary KEK.
    pub async fn not_under_primary(&self, tenant: Option<&str>) -> Result<Vec<KeyToRewrap>, DbError> {
        let rows: Vec<(String, String, i32, String, Vec<u8>)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SELECT_NOT_UNDER)
                .bind(self.keyring.primary_id())
                .bind(tenant)
                .fetch_all(pool)
                .await)?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, purpose, version, kek_id, wrapped)| KeyToRewrap {
                tenant_id,
                purpose,
                version,
                kek_id,
                wrapped,
            })
            .collect())
    }

    /// Re-wraps `keys` (as read by [`Self::not_under_primary`]) under the primary KEK. Each update
    /// is a compare-and-set on the old KEK id, so concurrent runs cannot clobber each other, and
    /// skips a key destroyed since it was read. Returns how many keys were re-wrapped.
    pub async fn rewrap(&self, keys: &[KeyToRewrap]) -> Result<u64, DbError> {
        let mut rewrapped = 0;
        for chunk in keys.chunks(REWRAP_BATCH) {
            let mut updates = Vec::with_capacity(chunk.len());
            for key in chunk {
                let purpose = match key.purpose.as_str() {
                    "dek" => KeyPurpose::Dek,
                    _ => KeyPurpose::Index,
                };
                let token = String::from_utf8(key.wrapped.clone()).map_err(|_| CryptoError::Integrity)?;
                let slot = KeySlot { tenant: &key.tenant_id, purpose, version: key.version as u32 };
                let old = WrappedKey { kek_id: key.kek_id.clone(), token };
                let wrapped = envelope::rewrap(&self.keyring, slot, &old)?;
                updates.push((&key.tenant_id, purpose.as_str(), key.version, &key.kek_id, wrapped));
            }
            rewrapped += self.write_rewrapped(&updates).await?;
        }
        Ok(rewrapped)
    }

    /// Stores re-wrapped keys, each only if still under the KEK it was read with: on Postgres one
    /// `UPDATE … FROM UNNEST(…)` per batch, on SQLite one statement per key in one transaction.
    async fn write_rewrapped(
        &self,
        updates: &[(&String, &'static str, i32, &String, WrappedKey)],
    ) -> Result<u64, DbError> {
        match &self.db {
            Database::Postgres(pool) => {
                let result = sqlx::query(REWRAP_PG)
                    .bind(self.keyring.primary_id())
                    .bind(updates.iter().map(|u| u.0.as_str()).collect::<Vec<_>>())
                    .bind(updates.iter().map(|u| u.1).collect::<Vec<_>>())
                    .bind(updates.iter().map(|u| u.2).collect::<Vec<_>>())
                    .bind(updates.iter().map(|u| u.3.as_str()).collect::<Vec<_>>())
                    .bind(updates.iter().map(|u| u.4.token.as_bytes().to_vec()).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                Ok(result.rows_affected())
            }
            Database::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                let mut changed = 0u64;
                for (tenant_id, purpose, version, old_kek, wrapped) in updates {
                    changed += sqlx::query(REWRAP)
                        .bind(tenant_id.as_str())
                        .bind(*purpose)
                        .bind(*version)
                        .bind(old_kek.as_str())
                        .bind(&wrapped.kek_id)
                        .bind(wrapped.token.as_bytes())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(changed)
            }
        }
    }
}
