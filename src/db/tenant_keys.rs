//! Tenant keys at rest and in memory: the `tenant_keys` table (wrapped DEKs and index keys) and the
//! cache of unwrapped keys in front of it.
//!
//! - A tenant's first key of each purpose is created on its first write. Versions are part of the
//!   primary key, so two processes creating the same version at once conflict and the loser reads
//!   the winner's key: there are never two different keys for one version.
//! - Several DEK versions may be `active` (still used by rows); new writes use the highest. The
//!   pointer to it is cached for [`KeySettings::current_ttl`] (a few seconds), so a version activated
//!   by `rotate-keys` in another process is picked up within that time.
//! - Unwrapped keys are cached for [`KeySettings::key_ttl`]; a version's key never changes, the TTL
//!   bounds how long a shredded tenant's key can outlive its row in another process.
//! - Encryptions are counted per DEK version in the database; once a version passes the budget
//!   (default 2^31, below the 2^32 random-nonce bound), the next write rolls a new version.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::crypto::envelope::{self, DataKey, KeyPurpose, KeySlot, WrappedKey};
use crate::crypto::keyring::Keyring;
use crate::crypto::CryptoError;
use crate::db::{Database, DbError};
use crate::with_pool;

/// Cache and budget settings.
#[derive(Debug, Clone, Copy)]
pub struct KeySettings {
    /// How long the "current version" pointer is trusted before the database is asked again.
    pub current_ttl: Duration,
    /// How long an unwrapped key stays in memory.
    pub key_ttl: Duration,
    /// Encryptions per DEK version before a new version is rolled.
    pub encryption_budget: u64,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self { current_ttl: Duration::from_secs(5), key_ttl: Duration::from_secs(300), encryption_budget: 1 << 31 }
    }
}

type SlotKey = (String, KeyPurpose, u32);

/// Unwrapped tenant keys, backed by the `tenant_keys` table.
pub struct TenantKeys {
    db: Database,
    keyring: Arc<Keyring>,
    settings: KeySettings,
    keys: RwLock<HashMap<SlotKey, (Arc<DataKey>, Instant)>>,
    current: RwLock<HashMap<(String, KeyPurpose), (u32, Instant)>>,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys").field("settings", &self.settings).finish_non_exhaustive()
    }
}

const SELECT_CURRENT: &str = "SELECT version FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = $2 AND state = 'active' ORDER BY version DESC LIMIT 1";
const SELECT_MAX_VERSION: &str = "SELECT MAX(version) FROM tenant_keys WHERE tenant_id = $1 AND purpose = $2";
const SELECT_WRAPPED: &str = "SELECT kek_id, wrapped_key, state FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3";
const INSERT_KEY: &str = "INSERT INTO tenant_keys (tenant_id, purpose, version, kek_id, wrapped_key, state) \
     VALUES ($1, $2, $3, $4, $5, 'active') ON CONFLICT DO NOTHING";
const COUNT_ENCRYPTIONS: &str = "UPDATE tenant_keys SET encryptions = encryptions + $4 \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3 RETURNING encryptions";

impl TenantKeys {
    /// A key store over `db`, unwrapping with `keyring`.
    pub fn new(db: Database, keyring: Arc<Keyring>, settings: KeySettings) -> Self {
        Self { db, keyring, settings, keys: RwLock::default(), current: RwLock::default() }
    }

    /// The keyring (for rewrapping).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The key new writes of `tenant` use for `purpose`, created on first use.
    pub async fn current(&self, tenant: &str, purpose: KeyPurpose) -> Result<Arc<DataKey>, DbError> {
        let cached = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(tenant.to_owned(), purpose))
            .filter(|(_, at)| at.elapsed() < self.settings.current_ttl)
            .map(|(version, _)| *version);
        let version = match cached {
            Some(version) => version,
            None => {
                let version = match self.current_version(tenant, purpose).await? {
                    Some(version) => version,
                    None => self.create_version(tenant, purpose, 1).await?,
                };
                self.current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((tenant.to_owned(), purpose), (version, Instant::now()));
                version
            }
        };
        self.version(tenant, purpose, version).await
    }

    /// The key of one version (to open values sealed under it).
    pub async fn version(&self, tenant: &str, purpose: KeyPurpose, version: u32) -> Result<Arc<DataKey>, DbError> {
        let slot_key = (tenant.to_owned(), purpose, version);
        if let Some((key, at)) = self.keys.read().unwrap_or_else(PoisonError::into_inner).get(&slot_key) {
            if at.elapsed() < self.settings.key_ttl {
                return Ok(key.clone());
            }
        }
        let row: Option<(String, Option<Vec<u8>>, String)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SELECT_WRAPPED)
                .bind(tenant)
                .bind(purpose.as_str())
                .bind(version as i32)
                .fetch_optional(pool)
                .await)?;
        let (kek_id, wrapped, _state) = row.ok_or(DbError::MissingKey { version })?;
        let wrapped = wrapped.ok_or(DbError::MissingKey { version })?;
        let token = String::from_utf8(wrapped).map_err(|_| CryptoError::Integrity)?;
        let slot = KeySlot { tenant, purpose, version };
        let key = Arc::new(envelope::unwrap(&self.keyring, slot, &WrappedKey { kek_id, token })?);
        self.keys.write().unwrap_or_else(PoisonError::into_inner).insert(slot_key, (key.clone(), Instant::now()));
        Ok(key)
    }

    /// Counts `count` encryptions under a DEK version; rolls a new version once the budget is spent.
    pub async fn record_encryptions(&self, tenant: &str, version: u32, count: u64) -> Result<(), DbError> {
        let total: Option<i64> = with_pool!(&self.db, |pool| sqlx::query_scalar(COUNT_ENCRYPTIONS)
            .bind(tenant)
            .bind(KeyPurpose::Dek.as_str())
            .bind(version as i32)
            .bind(count as i64)
            .fetch_optional(pool)
            .await)?;
        if total.is_some_and(|total| total as u64 >= self.settings.encryption_budget) {
            tracing::info!(tenant, version, "encryption budget of this data key spent: rolling a new version");
            self.roll(tenant, KeyPurpose::Dek).await?;
        }
        Ok(())
    }

    /// Creates the next version of a tenant's key and makes it current; returns its version.
    /// Concurrent rolls create one version (the loser of the insert uses the winner's).
    pub async fn roll(&self, tenant: &str, purpose: KeyPurpose) -> Result<u32, DbError> {
        let max: Option<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_MAX_VERSION)
            .bind(tenant)
            .bind(purpose.as_str())
            .fetch_one(pool)
            .await)?;
        let next = max.map_or(1, |v| v as u32 + 1);
        let version = self.create_version(tenant, purpose, next).await?;
        self.current.write().unwrap_or_else(PoisonError::into_inner).remove(&(tenant.to_owned(), purpose));
        Ok(version)
    }

    /// Forgets every cached key of `tenant` (after shredding, or when a test wants a cold cache).
    pub fn forget_tenant(&self, tenant: &str) {
        self.keys.write().unwrap_or_else(PoisonError::into_inner).retain(|(t, _, _), _| t != tenant);
        self.current.write().unwrap_or_else(PoisonError::into_inner).retain(|(t, _), _| t != tenant);
    }

    async fn current_version(&self, tenant: &str, purpose: KeyPurpose) -> Result<Option<u32>, DbError> {
        let version: Option<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_CURRENT)
            .bind(tenant)
            .bind(purpose.as_str())
            .fetch_optional(pool)
            .await)?;
        Ok(version.map(|v| v as u32))
    }

    /// Inserts `version` with a fresh key unless it exists; either way returns `version`.
    async fn create_version(&self, tenant: &str, purpose: KeyPurpose, version: u32) -> Result<u32, DbError> {
        let key = DataKey::generate(version);
        let wrapped = envelope::wrap(&self.keyring, KeySlot { tenant, purpose, version }, &key);
        let inserted = with_pool!(&self.db, |pool| sqlx::query(INSERT_KEY)
            .bind(tenant)
            .bind(purpose.as_str())
            .bind(version as i32)
            .bind(&wrapped.kek_id)
            .bind(wrapped.token.as_bytes())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        if inserted == 1 {
            tracing::info!(tenant, purpose = purpose.as_str(), version, kek = %wrapped.kek_id, "created tenant key");
        }
        Ok(version)
    }
}
