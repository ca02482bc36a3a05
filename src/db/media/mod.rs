//! The encrypted media repository: plaintext [`MediaRecord`]s in and out, rows with
//! every sensitive column sealed under the tenant's current DEK in between.
//!
//! Encrypted columns: original filename, uploader subject, client `user_id` hint, storage key,
//! sha256 and free-form metadata. Plain columns: id, tenant, mime, size, status, timestamps,
//! retention and `dek_version`. Each value's AAD names its tenant, table, column and row, so a value
//! copied anywhere else fails with [`CryptoError::Integrity`](crate::crypto::CryptoError::Integrity)
//! (code `data_integrity`), never a wrong value. Every read is by `(tenant_id, id)`; there is no read
//! by id alone. Dedup goes through the blind index: the rows of a tenant with one `content_mac`
//! share one object, whose reference count is the number of those rows ([`group`]).
//!
//! Files: [`model`] (plaintext records), [`sql`], [`cipher`] (sealing a row), [`group`] (dedup
//! groups: shared objects and their references), [`rotate`] (re-encryption batches), [`objects`]
//! (moving objects to a new DEK version), [`listing`] (rows across tenants for the sweeper and the
//! admin commands); decrypted
//! ready rows are cached for a few seconds in a [`TtlCache`](crate::db::ttl_cache::TtlCache).

mod by_id;
mod cache;
mod cipher;
mod coalesce;
#[macro_use]
mod group;
mod listing;
mod model;
mod rotate;
mod sql;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use coalesce::ReadCounts;
pub use model::{Deletion, InsertOutcome, MediaRecord, MediaStatus, StoredMedia};
pub use objects::{MoveOutcome, ObjectBatch, ObjectToMove, ObjectsToMove};
pub use rotate::{PreparedBatch, ReencryptBatch};

use super::journal;
use super::notify::{self, CacheGate, Change};
use super::read_lane::ReadLane;
use super::tenant_keys::TenantKeys;
use super::tenants::{self, WriteCheck};
use super::ttl_cache::TtlCache;
use super::{Database, DbError};
use crate::crypto::blind_index::content_mac;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::FieldCipher;
use crate::crypto::CryptoError;
use crate::with_pool;
use cipher::{BindSealed, PlainColumns, RowCipher};
use model::MediaRow;
use sql::*;

/// Times a write is sealed again when the tenant's keys changed under it.
const WRITE_ATTEMPTS: usize = 3;

/// Inside a write's transaction: checks the tenant's state and current DEK version (see
/// [`super::tenants`]) and returns early from the transaction's block when the write may not happen.
macro_rules! check_write {
    ($tx:expr, $guard:expr, $tenant:expr, $version:expr) => {{
        // Writes first: on SQLite they take the write lock before anything is read (a read that
        // later turned into a write could fail on another writer's commit instead of waiting), and
        // on Postgres a shredded tenant is started afresh before its row is held shared (two
        // writers upgrading a shared hold to an update would deadlock).
        sqlx::query(tenants::ENSURE).bind($tenant).execute(&mut *$tx).await?;
        sqlx::query(tenants::REACTIVATE).bind($tenant).bind(Utc::now()).execute(&mut *$tx).await?;
        let state: Option<String> = sqlx::query_scalar($guard).bind($tenant).fetch_optional(&mut *$tx).await?;
        let current: Option<i32> = sqlx::query_scalar(tenants::CURRENT_DEK).bind($tenant).fetch_one(&mut *$tx).await?;
        if let refused @ (WriteCheck::Shredding | WriteCheck::StaleKey) =
            WriteCheck::of(state.as_deref(), current, $version)
        {
            return Ok(Err(refused));
        }
    }};
}

/// Inside a write's transaction, once the row's placement is known: when the row references an
/// object of its own sealed under a DEK version (`$outcome` is [`InsertOutcome::Inserted`] and
/// `$version` is `Some`), refuses the write with [`DbError::KeyChanged`] unless that version is
/// still active (see [`tenants::OBJECT_KEY_LIVE`]).
macro_rules! check_object_key {
    ($tx:expr, $tenant:expr, $outcome:expr, $version:expr) => {
        if let (InsertOutcome::Inserted, Some(version)) = ($outcome, $version) {
            let live: i64 = sqlx::query_scalar(tenants::OBJECT_KEY_LIVE)
                .bind($tenant)
                .bind(version as i32)
                .fetch_one(&mut *$tx)
                .await?;
            if live == 0 {
                $tx.rollback().await?;
                return Err(DbError::KeyChanged);
            }
        }
    };
}

mod objects; // after the macros it uses

/// Encrypted access to `media_objects`.
#[derive(Debug, Clone)]
pub struct MediaRepo {
    db: Database,
    keys: Arc<TenantKeys>,
    cache: Option<Arc<TtlCache<String, Arc<StoredMedia>>>>,
    /// Closed while changes by other processes cannot be heard (see [`super::notify`]).
    gate: CacheGate,
    /// Raised by every forget: a row read before a forget is not cached after it.
    generation: Arc<AtomicU64>,
    /// The server's connections for reads by id (PostgreSQL), beside the pool.
    read_lane: Option<Arc<coalesce::LaneReads>>,
}

impl MediaRepo {
    /// The tenant keys that seal the rows.
    pub fn keys(&self) -> &Arc<TenantKeys> {
        &self.keys
    }

    /// A repository over `db`, keys from `keys`.
    pub fn new(db: Database, keys: Arc<TenantKeys>) -> Self {
        Self { db, keys, cache: None, gate: CacheGate::open(), generation: Arc::default(), read_lane: None }
    }

    /// The same repository, reading rows by id through `lane` (see [`ReadLane`]).
    pub fn with_read_lane(mut self, lane: Option<Arc<ReadLane>>) -> Self {
        self.read_lane = lane.map(|lane| Arc::new(coalesce::LaneReads::new(lane)));
        self
    }

    /// The same repository, using its cache only while `gate` is open.
    pub fn with_gate(mut self, gate: CacheGate) -> Self {
        self.gate = gate;
        self
    }

    /// The same repository, caching decrypted ready rows for `ttl` (see [`TtlCache`]; zero: off).
    pub fn with_cache(mut self, ttl: std::time::Duration) -> Self {
        self.cache = TtlCache::new(ttl).map(Arc::new);
        self
    }

    /// The blind-index MAC of content with this SHA-256 in `tenant`.
    pub async fn content_mac(&self, tenant: &str, sha256: &[u8; 32]) -> Result<[u8; 32], DbError> {
        let index_key = self.keys.current(tenant, KeyPurpose::Index).await?;
        Ok(content_mac(&index_key, sha256))
    }

    /// Stores a row, sealing its sensitive columns, in the group of its bytes ([`group`]): when
    /// the same uploader already has these bytes nothing is stored and their row's id comes back as
    /// [`InsertOutcome::Duplicate`]; when someone else has, the row references that object
    /// ([`InsertOutcome::Joined`]). Refused with [`DbError::TenantShredding`] while the tenant is
    /// being shredded; sealed again with fresh keys when the key this process had cached is no
    /// longer the tenant's current one.
    pub async fn insert(&self, media: &MediaRecord) -> Result<InsertOutcome, DbError> {
        self.with_fresh_keys(&media.tenant_id, || self.insert_once(media)).await
    }

    /// Runs a write until its key check passes: a stale cached key is forgotten and the write
    /// sealed again, at most [`WRITE_ATTEMPTS`] times.
    async fn with_fresh_keys<T, F>(&self, tenant: &str, write: impl Fn() -> F) -> Result<T, DbError>
    where
        F: std::future::Future<Output = Result<Result<T, WriteCheck>, DbError>>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            match write().await? {
                Ok(done) => return Ok(done),
                Err(WriteCheck::Shredding) => return Err(DbError::TenantShredding),
                Err(_) => self.keys.forget_tenant(tenant),
            }
        }
        Err(DbError::KeyChanged)
    }

    async fn insert_once(&self, media: &MediaRecord) -> Result<Result<InsertOutcome, WriteCheck>, DbError> {
        let tenant = media.tenant_id.as_str();
        let mac = match &media.sha256 {
            Some(sha) => Some(self.content_mac(tenant, sha).await?),
            None => None,
        };
        if let Some(mac) = &mac {
            self.warm_group_keys(tenant, mac).await?;
        }
        let dek = self.keys.current(tenant, KeyPurpose::Dek).await?;
        let cipher = FieldCipher::new(&dek);
        let row_cipher = RowCipher { cipher: &cipher, tenant, id: &media.id };
        let mut sealed = row_cipher.seal_all(&PlainColumns::from(media));
        let now = Utc::now();
        let (guard, lock) = (tenants::guard_sql(&self.db), group::lock_sql(&self.db));
        // The check, the group's placement, the row and the end of its key's journal entry commit
        // together (see `db::tenants`, `group` and `db::journal`).
        let result: Result<Result<InsertOutcome, WriteCheck>, DbError> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            check_write!(tx, guard, tenant, dek.version);
            let placement = match &mac {
                Some(mac) => {
                    self.place(tenant, Some(media.uploader.as_str()), group_members!(tx, lock, tenant, mac)).await?
                }
                None => group::Placement::First,
            };
            let outcome = placement.apply(&row_cipher, &mut sealed);
            if let InsertOutcome::Duplicate(_) = outcome {
                tx.rollback().await?;
                return Ok(Ok(outcome));
            }
            check_object_key!(tx, tenant, &outcome, media.object_dek_version);
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
                .bind(object_version(&outcome, media).map(|v| v as i32))
                .execute(&mut *tx)
                .await?;
            if outcome == InsertOutcome::Inserted {
                sqlx::query(journal::CLOSE).bind(&media.storage_key).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Ok(outcome))
        }
        .await);
        // Counted whatever happened to the row: the values were sealed (the budget is about nonces).
        let extra = group::extra_encryptions(&result);
        self.count_encryptions(tenant, dek.version, sealed.count() + extra).await;
        result
    }

    /// Counts encryptions after a row was written. A failure here must not turn a committed write
    /// into an error (the caller would clean up bytes the row points to), so it is logged: the count
    /// only decides when the next DEK version is rolled.
    async fn count_encryptions(&self, tenant: &str, version: u32, count: u64) {
        if let Err(err) = self.keys.record_encryptions(tenant, version, count).await {
            tracing::warn!(tenant, version, error = %err, "cannot count encryptions under a DEK");
        }
    }

    /// The tenant's media with this id, decrypted; `None` when the tenant has no such id.
    pub async fn get(&self, tenant: &str, id: &str) -> Result<Option<StoredMedia>, DbError> {
        Ok(self.get_shared(tenant, id).await?.map(Arc::unwrap_or_clone))
    }

    /// [`Self::get`], the row shared with the cache rather than copied (a cached row costs no
    /// allocation).
    pub async fn get_shared(&self, tenant: &str, id: &str) -> Result<Option<Arc<StoredMedia>>, DbError> {
        if let Some(hit) = self.cached(tenant, id) {
            return Ok(Some(hit));
        }
        let generation = self.generation();
        match self.row_by_id(tenant, id).await? {
            Some(row) => {
                let media = Arc::new(self.open_row(row).await?);
                self.remember(&media, generation);
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
                Some(hit) => out.push(Arc::unwrap_or_clone(hit)),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let generation = self.generation();
        for row in self.rows_by_ids(tenant, &missing).await? {
            let media = Arc::new(self.open_row(row).await?);
            self.remember(&media, generation);
            out.push(Arc::unwrap_or_clone(media));
        }
        Ok(out)
    }

    /// Marks a pending row ready after its bytes were verified: `ready` carries the verified type,
    /// size, hash and storage key, and the row is re-sealed under the current DEK, in the group of
    /// its bytes ([`group`]): when another row has them it references their object
    /// ([`InsertOutcome::Joined`]). With `dedup`, when the same uploader already has these bytes the
    /// answer is [`InsertOutcome::Duplicate`] and the row is left pending for the caller to remove;
    /// without it the row joins the group under its own id whoever has the bytes.
    pub async fn mark_ready(
        &self,
        ready: &MediaRecord,
        staging_key: &str,
        dedup: bool,
    ) -> Result<InsertOutcome, DbError> {
        self.with_fresh_keys(&ready.tenant_id, || self.mark_ready_once(ready, staging_key, dedup)).await
    }

    async fn mark_ready_once(
        &self,
        ready: &MediaRecord,
        staging_key: &str,
        dedup: bool,
    ) -> Result<Result<InsertOutcome, WriteCheck>, DbError> {
        let sha256 = ready.sha256.ok_or(CryptoError::Integrity)?;
        let tenant = ready.tenant_id.as_str();
        debug_assert_eq!(ready.status, MediaStatus::Ready);
        let mac = self.content_mac(tenant, &sha256).await?;
        self.warm_group_keys(tenant, &mac).await?;
        let dek = self.keys.current(tenant, KeyPurpose::Dek).await?;
        let cipher = FieldCipher::new(&dek);
        let row_cipher = RowCipher { cipher: &cipher, tenant, id: &ready.id };
        let mut sealed = row_cipher.seal_all(&PlainColumns::from(ready));
        let (guard, lock) = (tenants::guard_sql(&self.db), group::lock_sql(&self.db));
        let uploader = dedup.then_some(ready.uploader.as_str());
        // The check and the group's placement, then the row moves to its verified key (whose
        // journal entry ends, unless the row joined a group) and the staging key it leaves gets
        // one, in one transaction (see `db::tenants`, `group`, `db::journal`).
        let result: Result<Result<InsertOutcome, WriteCheck>, DbError> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            check_write!(tx, guard, tenant, dek.version);
            let placement = self.place(tenant, uploader, group_members!(tx, lock, tenant, &mac)).await?;
            let outcome = placement.apply(&row_cipher, &mut sealed);
            if let InsertOutcome::Duplicate(_) = outcome {
                tx.rollback().await?;
                return Ok(Ok(outcome));
            }
            check_object_key!(tx, tenant, &outcome, ready.object_dek_version);
            let updated = sqlx::query(MARK_READY)
                .bind(tenant)
                .bind(&ready.id)
                .bind(&ready.mime)
                .bind(ready.size as i64)
                .bind(dek.version as i32)
                .bind(mac.as_slice())
                .bind_sealed(&sealed)
                .bind(Utc::now())
                .bind(object_version(&outcome, ready).map(|v| v as i32))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated != 1 {
                tx.rollback().await?;
                return Err(sqlx::Error::RowNotFound.into());
            }
            if outcome == InsertOutcome::Inserted {
                sqlx::query(journal::CLOSE).bind(&ready.storage_key).execute(&mut *tx).await?;
            }
            sqlx::query(journal::OPEN).bind(staging_key).bind(Utc::now()).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(Ok(outcome))
        }
        .await);
        let extra = group::extra_encryptions(&result);
        self.count_encryptions(tenant, dek.version, sealed.count() + extra).await;
        result
    }

    /// Deletes the tenant's row — only while its status is still `status`, when given — and says
    /// what it did: whether other rows of its group ([`group`]) still reference its object
    /// ([`Deletion::Shared`]) or it was the last ([`Deletion::Last`]). With `journal` (the key of the
    /// object the row referenced, and when the sweeper may take it), the key is journaled in the
    /// same transaction when the row was the object's last reference, so a crash before the object
    /// is gone leaves it to the sweeper (`db::journal`).
    pub async fn delete(
        &self,
        tenant: &str,
        id: &str,
        status: Option<MediaStatus>,
        journal: Option<(&str, DateTime<Utc>)>,
    ) -> Result<Deletion, DbError> {
        self.forget(id);
        let status = status.map(MediaStatus::as_str);
        let lock = group::lock_sql(&self.db);
        let deletion: Result<Deletion, DbError> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            let deleted: Option<Option<Vec<u8>>> =
                sqlx::query_scalar(DELETE).bind(tenant).bind(id).bind(status).fetch_optional(&mut *tx).await?;
            let deletion = match deleted {
                None => Deletion::None,
                Some(None) => Deletion::Last,
                Some(Some(mac)) => {
                    let mac = <[u8; 32]>::try_from(mac.as_slice()).map_err(|_| CryptoError::Integrity)?;
                    lock_group!(tx, lock, tenant, &mac);
                    let left: i64 = sqlx::query_scalar(group::REFERENCES)
                        .bind(tenant)
                        .bind(mac.as_slice())
                        .fetch_one(&mut *tx)
                        .await?;
                    if left == 0 {
                        Deletion::Last
                    } else {
                        Deletion::Shared
                    }
                }
            };
            if let (Deletion::Last, Some((key, at))) = (deletion, journal) {
                sqlx::query(journal::OPEN).bind(key).bind(at).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(deletion)
        }
        .await);
        let deletion = deletion?;
        // Again after the delete: a read racing it may have cached the row meanwhile.
        self.forget(id);
        if deletion.deleted() {
            notify::publish(&self.db, &Change::Row { tenant: tenant.to_owned(), id: id.to_owned() }).await;
        }
        Ok(deletion)
    }

    async fn open_row(&self, row: MediaRow) -> Result<StoredMedia, DbError> {
        let version = row.version()?;
        let dek = self.keys.version(&row.tenant_id, KeyPurpose::Dek, version).await?;
        let plain =
            RowCipher { cipher: &FieldCipher::new(&dek), tenant: &row.tenant_id, id: &row.id }.open_all(&row.sealed)?;
        let object_dek_version = row.object_dek_version.map(u32::try_from).transpose();
        let record = MediaRecord {
            object_dek_version: object_dek_version.map_err(|_| CryptoError::Integrity)?,
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
}

/// The DEK version of the object a row written with `outcome` references: the group's when it
/// joined one, else its own.
fn object_version(outcome: &InsertOutcome, media: &MediaRecord) -> Option<u32> {
    match outcome {
        InsertOutcome::Joined { object_dek_version, .. } => *object_dek_version,
        _ => media.object_dek_version,
    }
}
