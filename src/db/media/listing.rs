//! Reads across many rows, for the sweeper and the admin commands rather than for requests: rows
//! past their retention or left pending, the tenants with rows, and a tenant's storage keys page by
//! page (what `reconcile` compares with the bucket and `shred` removes).

use chrono::{DateTime, Utc};

use super::cipher::RowCipher;
use super::sql::{SELECT_STORAGE_KEYS, SWEEPABLE, TENANTS};
use super::MediaRepo;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::FieldCipher;
use crate::crypto::CryptoError;
use crate::db::DbError;
use crate::with_pool;

impl MediaRepo {
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

    /// Every tenant that has media rows.
    pub async fn tenants(&self) -> Result<Vec<String>, DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_scalar(TENANTS).fetch_all(pool).await)?)
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
}
