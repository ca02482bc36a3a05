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
//!   bounds how long a shredded tenant's key can outlive its row in another process. Both caches
//!   are [`TtlCache`]s: expired entries are swept out, not kept for every tenant ever seen (they
//!   were: an issuer minting tenant ids grew them without bound, and a destroyed key's material
//!   stayed in memory until the process ended).
//! - Encryptions are counted per DEK version in the database; once a version passes the budget
//!   (default 2^31, below the 2^32 random-nonce bound), the next write rolls a new version.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::envelope::{self, DataKey, KeyPurpose, KeySlot, WrappedKey};
use crate::crypto::keyring::Keyring;
use crate::crypto::CryptoError;
use crate::db::audit::chain::{self, Record};
use crate::db::audit::SYSTEM_CHAIN;
use crate::db::notify::{self, CacheGate, Change};
use crate::db::ttl_cache::TtlCache;
use crate::db::{Database, DbError};
use crate::with_pool;

mod rewrap;

pub use rewrap::KeyToRewrap;

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

/// One `tenant_keys` row, without key material (for status output).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRow {
    /// Tenant.
    pub tenant_id: String,
    /// `dek` or `index`.
    pub purpose: String,
    /// Version.
    pub version: u32,
    /// Master key wrapping it.
    pub kek_id: String,
    /// `active`, `retired` or `destroyed`.
    pub state: String,
    /// Encryptions counted under it.
    pub encryptions: i64,
}

/// Unwrapped tenant keys, backed by the `tenant_keys` table.
pub struct TenantKeys {
    db: Database,
    keyring: Arc<Keyring>,
    settings: KeySettings,
    /// Unwrapped keys by version, for `key_ttl` (`None`: a zero TTL, nothing cached).
    keys: Option<TtlCache<SlotKey, Arc<DataKey>>>,
    /// The current version per tenant and purpose, for `current_ttl`.
    current: Option<TtlCache<(String, KeyPurpose), u32>>,
    /// Closed while changes by other processes cannot be heard (see [`super::notify`]).
    gate: CacheGate,
    /// Raised by every forget: a key read before a forget is not cached after it.
    generation: AtomicU64,
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys").field("settings", &self.settings).finish_non_exhaustive()
    }
}

const SELECT_CURRENT: &str = "SELECT version FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = $2 AND state = 'active' ORDER BY version DESC LIMIT 1";
const SELECT_MAX_VERSION: &str = "SELECT MAX(version) FROM tenant_keys WHERE tenant_id = $1 AND purpose = $2";
const SELECT_MAX_DESTROYED: &str =
    "SELECT MAX(version) FROM tenant_keys WHERE tenant_id = $1 AND purpose = $2 AND state = 'destroyed'";
const SELECT_WRAPPED: &str = "SELECT kek_id, wrapped_key, state FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3";
const SELECT_HELD: &str = "SELECT 1 FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3 AND wrapped_key IS NOT NULL AND state <> 'destroyed'";
const INSERT_KEY: &str = "INSERT INTO tenant_keys (tenant_id, purpose, version, kek_id, wrapped_key, state) \
     VALUES ($1, $2, $3, $4, $5, 'active') ON CONFLICT DO NOTHING";
/// Tenants with keys (not the system's audit key, held under the empty tenant id).
const SELECT_TENANTS: &str = "SELECT DISTINCT tenant_id FROM tenant_keys WHERE tenant_id <> '' ORDER BY tenant_id";
const SELECT_KEY_ROWS: &str = "SELECT tenant_id, purpose, version, kek_id, state, encryptions FROM tenant_keys \
     WHERE $1 IS NULL OR tenant_id = $1 ORDER BY tenant_id, purpose, version";
const SELECT_ROWS_PER_VERSION: &str = "SELECT dek_version, COUNT(*) FROM media_objects WHERE tenant_id = $1 \
     GROUP BY dek_version ORDER BY dek_version";
/// Tenants with keys; media rows whose DEK version, and rows whose object's, is below their tenant's
/// newest active one; ready rows whose object is in the clear.
const SELECT_ROTATION_BACKLOG: &str = "SELECT \
     (SELECT COUNT(DISTINCT tenant_id) FROM tenant_keys WHERE tenant_id <> ''), \
     (SELECT COUNT(*) FROM media_objects m WHERE m.dek_version < (SELECT MAX(k.version) FROM tenant_keys k \
        WHERE k.tenant_id = m.tenant_id AND k.purpose = 'dek' AND k.state = 'active')), \
     (SELECT COUNT(*) FROM media_objects m WHERE m.object_dek_version < (SELECT MAX(k.version) FROM tenant_keys k \
        WHERE k.tenant_id = m.tenant_id AND k.purpose = 'dek' AND k.state = 'active')), \
     (SELECT COUNT(*) FROM media_objects WHERE object_dek_version IS NULL AND status = 'ready')";
/// A version retires once no row is sealed under it and no row's object is (`rotate-keys --objects`).
const RETIRE_UNUSED: &str = "UPDATE tenant_keys SET state = 'retired' \
     WHERE tenant_id = $1 AND purpose = 'dek' AND state = 'active' AND version < $2 \
     AND NOT EXISTS (SELECT 1 FROM media_objects m WHERE m.tenant_id = tenant_keys.tenant_id \
     AND (m.dek_version = tenant_keys.version OR m.object_dek_version = tenant_keys.version)) RETURNING version";
/// Postgres: waits for the row writes in flight, which hold the tenant's state row shared (`db::tenants`).
const HOLD_TENANT_PG: &str = "SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE";
const SELECT_KEKS: &str = "SELECT kek_id, COUNT(*) FROM tenant_keys WHERE wrapped_key IS NOT NULL \
     GROUP BY kek_id ORDER BY kek_id";
const DESTROY: &str = "UPDATE tenant_keys SET state = 'destroyed', wrapped_key = NULL \
     WHERE tenant_id = $1 AND wrapped_key IS NOT NULL";
const COUNT_ENCRYPTIONS: &str = "UPDATE tenant_keys SET encryptions = encryptions + $4 \
     WHERE tenant_id = $1 AND purpose = $2 AND version = $3 RETURNING encryptions";

impl TenantKeys {
    /// A key store over `db`, unwrapping with `keyring`.
    pub fn new(db: Database, keyring: Arc<Keyring>, settings: KeySettings) -> Self {
        Self {
            db,
            keyring,
            settings,
            keys: TtlCache::new(settings.key_ttl),
            current: TtlCache::new(settings.current_ttl),
            gate: CacheGate::open(),
            generation: AtomicU64::new(0),
        }
    }

    /// The same store, using its caches only while `gate` is open.
    pub fn with_gate(mut self, gate: CacheGate) -> Self {
        self.gate = gate;
        self
    }

    /// The database the keys live in.
    pub fn db(&self) -> &Database {
        &self.db
    }

    /// The keyring (for rewrapping).
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The key new writes of `tenant` use for `purpose`, created on first use.
    pub async fn current(&self, tenant: &str, purpose: KeyPurpose) -> Result<Arc<DataKey>, DbError> {
        self.lookup(tenant, purpose, true).await?.ok_or(DbError::MissingKey { version: 0 })
    }

    /// The key new writes of `tenant` use for `purpose` if it has one; never creates one (the
    /// audit log pseudonymizes under a tenant's index key, and must not give a shredded tenant a
    /// key back).
    pub async fn existing(&self, tenant: &str, purpose: KeyPurpose) -> Result<Option<Arc<DataKey>>, DbError> {
        self.lookup(tenant, purpose, false).await
    }

    /// The audit key (the system's index key). Created on first use only while the log holds no
    /// keyed event: missing afterwards, it was removed, and a new one would leave the whole history
    /// unverifiable (and a forger free to start over) — refused instead.
    pub async fn audit_key(&self) -> Result<Arc<DataKey>, DbError> {
        if let Some(key) = self.existing(SYSTEM_CHAIN, KeyPurpose::Index).await? {
            return Ok(key);
        }
        const KEYED: &str = "SELECT 1 FROM audit_events WHERE format = 2 LIMIT 1";
        let keyed: Option<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(KEYED).fetch_optional(pool).await)?;
        if keyed.is_some() {
            // A concurrent first use may have made it (its row lands before any event it keys).
            return self.existing(SYSTEM_CHAIN, KeyPurpose::Index).await?.ok_or(DbError::AuditKeyMissing);
        }
        self.current(SYSTEM_CHAIN, KeyPurpose::Index).await
    }

    /// The current key (through the version cache), created when missing and `create` is set.
    async fn lookup(&self, tenant: &str, purpose: KeyPurpose, create: bool) -> Result<Option<Arc<DataKey>>, DbError> {
        let cached = self
            .current
            .as_ref()
            .filter(|_| self.gate.is_open())
            .and_then(|current| current.get(&(tenant.to_owned(), purpose)));
        let version = match cached {
            Some(version) => version,
            None => {
                let generation = self.generation.load(Ordering::Acquire);
                let version = match self.current_version(tenant, purpose).await? {
                    Some(version) => version,
                    None if create => self.first_version(tenant, purpose).await?,
                    None => return Ok(None),
                };
                if let Some(current) = self.current.as_ref().filter(|_| self.may_fill(generation)) {
                    current.put((tenant.to_owned(), purpose), version);
                }
                version
            }
        };
        self.version(tenant, purpose, version).await.map(Some)
    }

    /// The key of one version (to open values sealed under it).
    pub async fn version(&self, tenant: &str, purpose: KeyPurpose, version: u32) -> Result<Arc<DataKey>, DbError> {
        let slot_key = (tenant.to_owned(), purpose, version);
        if let Some(key) = self.keys.as_ref().filter(|_| self.gate.is_open()).and_then(|keys| keys.get(&slot_key)) {
            return Ok(key);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row: Option<(String, Option<Vec<u8>>, String)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SELECT_WRAPPED)
                .bind(tenant)
                .bind(purpose.as_str())
                .bind(version as i32)
                .fetch_optional(pool)
                .await)?;
        let (kek_id, wrapped, state) = row.ok_or(DbError::MissingKey { version })?;
        // A destroyed key stays destroyed, whatever material a row may show (never written back,
        // see `rewrap`; checked here as well).
        let wrapped = wrapped.filter(|_| state != "destroyed").ok_or(DbError::MissingKey { version })?;
        let token = String::from_utf8(wrapped).map_err(|_| CryptoError::Integrity)?;
        let slot = KeySlot { tenant, purpose, version };
        let key = Arc::new(envelope::unwrap(&self.keyring, slot, &WrappedKey { kek_id, token })?);
        if let Some(keys) = self.keys.as_ref().filter(|_| self.may_fill(generation)) {
            keys.put(slot_key, key.clone());
        }
        Ok(key)
    }

    /// Whether the database still holds version `version`'s material (not destroyed by a shred),
    /// asked of the database, never of the cache: another process's shred may not have reached it.
    pub async fn held(&self, tenant: &str, purpose: KeyPurpose, version: u32) -> Result<bool, DbError> {
        let held: Option<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_HELD)
            .bind(tenant)
            .bind(purpose.as_str())
            .bind(version as i32)
            .fetch_optional(pool)
            .await)?;
        Ok(held.is_some())
    }

    /// Whether what was read at `generation` may be cached: the gate is open and nothing was
    /// forgotten since (a key destroyed by another process, announced while this one was reading).
    fn may_fill(&self, generation: u64) -> bool {
        self.gate.is_open() && self.generation.load(Ordering::Acquire) == generation
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
        let version = self.next_version(tenant, purpose).await?;
        if let Some(current) = &self.current {
            current.remove(&(tenant.to_owned(), purpose));
        }
        notify::publish(&self.db, &Change::Tenant(tenant.to_owned())).await;
        Ok(version)
    }

    /// Creates the first live version: 1, or after a shred the one above the destroyed ones. Every
    /// concurrent first writer computes the same number, so they conflict on the primary key and
    /// share one key.
    async fn first_version(&self, tenant: &str, purpose: KeyPurpose) -> Result<u32, DbError> {
        self.create_above(tenant, purpose, SELECT_MAX_DESTROYED).await
    }

    /// Creates version max+1 (or 1) unless a concurrent writer just did; returns it.
    async fn next_version(&self, tenant: &str, purpose: KeyPurpose) -> Result<u32, DbError> {
        self.create_above(tenant, purpose, SELECT_MAX_VERSION).await
    }

    /// Creates the version one above what `max_query` (tenant, purpose → MAX(version)) returns.
    async fn create_above(&self, tenant: &str, purpose: KeyPurpose, max_query: &str) -> Result<u32, DbError> {
        let max: Option<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(max_query)
            .bind(tenant)
            .bind(purpose.as_str())
            .fetch_one(pool)
            .await)?;
        self.create_version(tenant, purpose, max.map_or(1, |v| v as u32 + 1)).await
    }

    /// Forgets every cached key of `tenant` (after shredding, or when a test wants a cold cache).
    pub fn forget_tenant(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(keys) = &self.keys {
            keys.retain(|(t, _, _), _| t != tenant);
        }
        if let Some(current) = &self.current {
            current.retain(|(t, _), _| t != tenant);
        }
    }

    /// Forgets every cached key (the invalidation listener reconnected).
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(keys) = &self.keys {
            keys.retain(|_, _| false);
        }
        if let Some(current) = &self.current {
            current.retain(|_, _| false);
        }
    }

    /// Every tenant that has keys, in order.
    pub async fn tenants(&self) -> Result<Vec<String>, DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_scalar(SELECT_TENANTS).fetch_all(pool).await)?)
    }

    /// The key rows of `tenant` (all tenants when `None`), without key material.
    pub async fn key_rows(&self, tenant: Option<&str>) -> Result<Vec<KeyRow>, DbError> {
        let rows: Vec<(String, String, i32, String, String, i64)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SELECT_KEY_ROWS).bind(tenant).fetch_all(pool).await)?;
        Ok(rows
            .into_iter()
            .map(|(tenant_id, purpose, version, kek_id, state, encryptions)| KeyRow {
                tenant_id,
                purpose,
                version: version as u32,
                kek_id,
                state,
                encryptions,
            })
            .collect())
    }

    /// Tenants with keys; media rows still encrypted under an older DEK version than their tenant's
    /// active one, and rows whose object is (what `rotate-keys [--objects]` has left to do); rows
    /// whose object is in the clear (`encrypt-objects`) — for the metrics.
    pub async fn rotation_backlog(&self) -> Result<(i64, i64, i64, i64), DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_as(SELECT_ROTATION_BACKLOG).fetch_one(pool).await)?)
    }

    /// Media rows of `tenant` per DEK version.
    pub async fn rows_per_version(&self, tenant: &str) -> Result<Vec<(u32, i64)>, DbError> {
        let rows: Vec<(i32, i64)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SELECT_ROWS_PER_VERSION).bind(tenant).fetch_all(pool).await)?;
        Ok(rows.into_iter().map(|(v, n)| (v as u32, n)).collect())
    }

    /// Retires the tenant's DEK versions below `keep` that no row uses any more, neither for its
    /// columns nor for its object (the check and the update are one statement, after the row writes
    /// in flight: an object sealed under a version retired meanwhile is refused a row, see
    /// `db::tenants::OBJECT_KEY_LIVE`). Returns the versions retired.
    pub async fn retire_unused(&self, tenant: &str, keep: u32) -> Result<Vec<u32>, DbError> {
        let hold = matches!(self.db, Database::Postgres(_)).then_some(HOLD_TENANT_PG);
        let retired: Vec<i32> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            if let Some(hold) = hold {
                sqlx::query(hold).bind(tenant).execute(&mut *tx).await?;
            }
            let retired = sqlx::query_scalar(RETIRE_UNUSED).bind(tenant).bind(keep as i32).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(retired)
        }
        .await)?;
        if !retired.is_empty() {
            self.forget_tenant(tenant);
            notify::publish(&self.db, &Change::Tenant(tenant.to_owned())).await;
        }
        Ok(retired.into_iter().map(|v| v as u32).collect())
    }

    /// Destroys every key of `tenant`: the wrapped material is deleted, the rows stay as a record.
    /// Returns how many keys were destroyed.
    pub async fn destroy_tenant(&self, tenant: &str) -> Result<u64, DbError> {
        let destroyed = with_pool!(&self.db, |pool| sqlx::query(DESTROY)
            .bind(tenant)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        self.forget_tenant(tenant);
        notify::publish(&self.db, &Change::Tenant(tenant.to_owned())).await;
        Ok(destroyed)
    }

    /// Key rows per KEK id (destroyed keys excluded): which master keys are still needed.
    pub async fn keks_in_use(&self) -> Result<Vec<(String, i64)>, DbError> {
        Ok(with_pool!(&self.db, |pool| sqlx::query_as(SELECT_KEKS).fetch_all(pool).await)?)
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
            let details =
                serde_json::json!({ "purpose": purpose.as_str(), "version": version, "kek_id": wrapped.kek_id });
            let details = details.to_string();
            let record =
                Record { tenant, kind: "key.created", actor: Some("system"), subject: None, details: &details };
            // The audit key is the system's index key: the one just made, or looked up (boxed: the
            // lookup may create it, which records its creation here in turn).
            if tenant == SYSTEM_CHAIN && purpose == KeyPurpose::Index {
                chain::append(&self.db, &key, &record).await?;
            } else {
                let audit_key = Box::pin(self.audit_key()).await?;
                chain::append(&self.db, &audit_key, &record).await?;
            }
        }
        Ok(version)
    }
}
