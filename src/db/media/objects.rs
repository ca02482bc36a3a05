//! Moving objects to a new DEK version, the rows' side (what `rotate-keys --objects` and
//! `encrypt-objects` drive; the copy itself is `media::rekey`): finding the objects still sealed
//! under another version (or stored in the clear), and the compare-and-set that points their rows
//! at the copy.
//!
//! An object is moved as a whole with every row that references it — a dedup group ([`super::group`])
//! shares one object — in one transaction that:
//! 1. checks, as every row write does, that the tenant is active and the target version is its
//!    current DEK (`db::tenants`), then takes the group's lock, so no upload joins it meanwhile;
//! 2. reads the group's rows (on Postgres `FOR UPDATE NOWAIT`: a row held by a delete in flight —
//!    which takes its row before the group — makes this move give way at once instead of deadlock)
//!    and requires every one to still reference the old object under the old version;
//! 3. re-seals each row under the target version with the new storage key (a compare-and-set on
//!    the revision just read), and moves the journal: the new key's entry ends — it must still be
//!    there (a copy that took longer than the abandoned-upload age may have been swept) — and the
//!    old key gets one as kept until `grace` after this transaction (`db::journal`: the sweeper
//!    takes it then, a shred of its tenant at once), so a crash before the old object is deleted
//!    leaves it to the sweeper.
//!
//! Anything else — a row deleted, joined with a changed object, a lock not granted, the tenant's
//! key changed — makes the move [`MoveOutcome::Lost`]: nothing is written, the caller deletes its
//! copy and a later pass sees the object again.

use std::time::Duration;

use chrono::Utc;

use super::cipher::{BindSealed, RowCipher, SealedColumns};
use super::model::MediaRow;
use super::sql::COLUMNS;
use super::{group, MediaRepo};
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::FieldCipher;
use crate::crypto::CryptoError;
use crate::db::notify::{self, Change};
use crate::db::tenants::{self, WriteCheck};
use crate::db::{journal, Database, DbError};
use crate::with_pool;

/// Which objects are to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectsToMove {
    /// Objects sealed under any DEK version other than this one (`rotate-keys --objects`).
    SealedNotUnder(u32),
    /// Objects stored in the clear (`encrypt-objects`).
    Plain,
}

impl ObjectsToMove {
    /// The condition on a row, as SQL (no bind parameter: the version is a number).
    fn condition(self) -> String {
        match self {
            Self::SealedNotUnder(target) => {
                format!("object_dek_version IS NOT NULL AND object_dek_version <> {}", target as i32)
            }
            Self::Plain => "object_dek_version IS NULL".to_owned(),
        }
    }
}

/// One stored object to move, as its rows were read (all rows of its group reference it).
#[derive(Debug, Clone)]
pub struct ObjectToMove {
    /// The tenant.
    pub tenant: String,
    /// The row it was found through.
    pub id: String,
    /// Its group's content MAC (`None`: a row of its own, see [`super::group`]).
    pub mac: Option<[u8; 32]>,
    /// Where it is stored.
    pub storage_key: String,
    /// The DEK version it is sealed under (`None`: in the clear).
    pub object_dek_version: Option<u32>,
    /// Plaintext size.
    pub size: u64,
    /// Sniffed type (stored with the copy).
    pub mime: String,
    /// SHA-256 of the plaintext, which the copy must reproduce.
    pub sha256: Option<[u8; 32]>,
}

/// A page of objects to move.
#[derive(Debug, Default)]
pub struct ObjectBatch {
    /// One entry per object (the first row of each group in the page).
    pub objects: Vec<ObjectToMove>,
    /// Rows read: 0 means nothing is left after the cursor.
    pub rows: usize,
    /// The keyset cursor for the next page.
    pub last_id: Option<String>,
}

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveOutcome {
    /// The rows now reference the copy; the old key is journaled, to be deleted.
    Moved {
        /// Rows moved (the group's size).
        rows: u64,
    },
    /// Nothing was written (why, for the log): the caller deletes its copy.
    Lost(&'static str),
}

#[derive(sqlx::FromRow)]
struct RowWithMac {
    #[sqlx(flatten)]
    row: MediaRow,
    content_mac: Option<Vec<u8>>,
}

/// Compare-and-set on the revision read in the move's transaction.
const MOVE: &str = "UPDATE media_objects SET dek_version = $3, object_dek_version = $3, filename_enc = $4, \
     uploader_enc = $5, user_hint_enc = $6, storage_key_enc = $7, sha256_enc = $8, metadata_enc = $9, \
     updated_at = $10, revision = revision + 1 WHERE tenant_id = $1 AND id = $2 AND revision = $11";
/// Postgres: a lock not granted at once (`NOWAIT`), a deadlock broken.
const GIVE_WAY: [&str; 2] = ["55P03", "40P01"];

impl MediaRepo {
    /// Up to `limit` ready rows of `tenant` whose object is `which`, after `after` (id order), as
    /// the objects they reference: a group's object once per page.
    pub async fn objects_to_move(
        &self,
        tenant: &str,
        which: ObjectsToMove,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ObjectBatch, DbError> {
        let sql = format!(
            "SELECT {COLUMNS}, content_mac FROM media_objects WHERE tenant_id = $1 AND status = 'ready' AND {} \
             AND id > $2 ORDER BY id LIMIT $3",
            which.condition()
        );
        let rows: Vec<RowWithMac> = with_pool!(&self.db, |pool| sqlx::query_as(&sql)
            .bind(tenant)
            .bind(after.unwrap_or(""))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await)?;
        let mut batch =
            ObjectBatch { rows: rows.len(), last_id: rows.last().map(|r| r.row.id.clone()), ..Default::default() };
        for RowWithMac { row, content_mac } in rows {
            let mac = content_mac.map(|m| <[u8; 32]>::try_from(m.as_slice())).transpose();
            let mac = mac.map_err(|_| CryptoError::Integrity)?;
            if mac.is_some() && batch.objects.iter().any(|o| o.mac == mac) {
                continue;
            }
            let object_dek_version = row.object_dek_version.map(u32::try_from).transpose();
            let object_dek_version = object_dek_version.map_err(|_| CryptoError::Integrity)?;
            let record = self.open_row(row).await?.record;
            batch.objects.push(ObjectToMove {
                tenant: record.tenant_id,
                id: record.id,
                mac,
                storage_key: record.storage_key,
                object_dek_version,
                size: record.size,
                mime: record.mime,
                sha256: record.sha256,
            });
        }
        Ok(batch)
    }

    /// Ready rows of `tenant` whose object is `which` (what is left to move).
    pub async fn objects_left(&self, tenant: &str, which: ObjectsToMove) -> Result<i64, DbError> {
        let sql = format!(
            "SELECT COUNT(*) FROM media_objects WHERE tenant_id = $1 AND status = 'ready' AND {}",
            which.condition()
        );
        Ok(with_pool!(&self.db, |pool| sqlx::query_scalar(&sql).bind(tenant).fetch_one(pool).await)?)
    }

    /// Rows of `tenant` per DEK version their object is sealed under (the inventory's object
    /// count), and rows whose object is in the clear.
    pub async fn object_rows_per_version(&self, tenant: &str) -> Result<(Vec<(u32, i64)>, i64), DbError> {
        const SQL: &str = "SELECT object_dek_version, COUNT(*) FROM media_objects WHERE tenant_id = $1 \
             GROUP BY object_dek_version ORDER BY object_dek_version";
        let counts: Vec<(Option<i32>, i64)> =
            with_pool!(&self.db, |pool| sqlx::query_as(SQL).bind(tenant).fetch_all(pool).await)?;
        let plain = counts.iter().filter(|(v, _)| v.is_none()).map(|(_, n)| n).sum();
        let sealed = counts.into_iter().filter_map(|(v, n)| Some((u32::try_from(v?).ok()?, n))).collect();
        Ok((sealed, plain))
    }

    /// Points every row of `object`'s group at its copy under `new_key`, sealed under `target` (the
    /// tenant's current DEK), re-sealing the rows under `target` too — or nothing (see the module
    /// docs). On [`MoveOutcome::Moved`] the old key is journaled as kept until `grace` after the
    /// move; `new_key` no longer is.
    pub async fn move_object(
        &self,
        object: &ObjectToMove,
        new_key: &str,
        target: u32,
        grace: Duration,
    ) -> Result<MoveOutcome, DbError> {
        let tenant = object.tenant.as_str();
        if let Some(mac) = &object.mac {
            self.warm_group_keys(tenant, mac).await?;
        }
        let cipher = FieldCipher::new(&*self.keys.version(tenant, KeyPurpose::Dek, target).await?);
        let result = self.move_once(object, (new_key, grace), target, &cipher).await;
        let moved = match result {
            Ok(Ok(moved)) => moved,
            Ok(Err(WriteCheck::Shredding)) => return Err(DbError::TenantShredding),
            Ok(Err(_)) => MoveOutcome::Lost("the tenant's current key changed"),
            Err(DbError::Sqlx(sqlx::Error::Database(err))) if err.code().is_some_and(|c| GIVE_WAY.contains(&&*c)) => {
                MoveOutcome::Lost("a row of the group is being written")
            }
            Err(err) => return Err(err),
        };
        Ok(moved)
    }

    async fn move_once(
        &self,
        object: &ObjectToMove,
        (new_key, grace): (&str, Duration),
        target: u32,
        cipher: &FieldCipher,
    ) -> Result<Result<MoveOutcome, WriteCheck>, DbError> {
        let tenant = object.tenant.as_str();
        let (guard, lock) = (tenants::guard_sql(&self.db), group::lock_sql(&self.db));
        let hold = match &self.db {
            Database::Postgres(_) => " FOR UPDATE NOWAIT",
            Database::Sqlite(_) => "",
        };
        let by = if object.mac.is_some() { "content_mac" } else { "id" };
        let members =
            format!("SELECT {COLUMNS} FROM media_objects WHERE tenant_id = $1 AND {by} = $2 ORDER BY id{hold}");
        let now = Utc::now();
        let result: Result<Result<MoveOutcome, WriteCheck>, DbError> = with_pool!(&self.db, |pool| async {
            let mut tx = pool.begin().await?;
            check_write!(tx, guard, tenant, target);
            let rows: Vec<MediaRow> = match &object.mac {
                Some(mac) => {
                    lock_group!(tx, lock, tenant, mac);
                    sqlx::query_as(&members).bind(tenant).bind(mac.as_slice()).fetch_all(&mut *tx).await?
                }
                None => sqlx::query_as(&members).bind(tenant).bind(&object.id).fetch_all(&mut *tx).await?,
            };
            let updates = match self.resealed(object, new_key, cipher, rows).await? {
                Ok(updates) => updates,
                Err(why) => {
                    tx.rollback().await?;
                    return Ok(Ok(MoveOutcome::Lost(why)));
                }
            };
            for (id, revision, sealed) in &updates {
                let changed = sqlx::query(MOVE)
                    .bind(tenant)
                    .bind(id)
                    .bind(target as i32)
                    .bind_sealed(sealed)
                    .bind(now)
                    .bind(revision)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if changed != 1 {
                    tx.rollback().await?;
                    return Ok(Ok(MoveOutcome::Lost("a row changed")));
                }
            }
            if sqlx::query(journal::CLOSE).bind(new_key).execute(&mut *tx).await?.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(Ok(MoveOutcome::Lost("its copy was swept as abandoned")));
            }
            // Dated (`created_at` too, for a sweeper of an earlier version) from as late as can be.
            let until = Utc::now() + chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(7));
            let keep = sqlx::query(journal::KEEP).bind(&object.storage_key).bind(until).bind(until).bind(tenant);
            keep.execute(&mut *tx).await?;
            tx.commit().await?;
            let encryptions = updates.iter().map(|(_, _, sealed)| sealed.count()).sum();
            self.count_encryptions(tenant, target, encryptions).await;
            for (id, _, _) in &updates {
                self.forget(id);
                notify::publish(&self.db, &Change::Row { tenant: tenant.to_owned(), id: id.clone() }).await;
            }
            Ok(Ok(MoveOutcome::Moved { rows: updates.len() as u64 }))
        }
        .await);
        result
    }

    /// The group's rows (read in the move's transaction) re-sealed under `cipher` with `new_key`
    /// as their storage key, each with the revision it was read at; or why the move is off (a row
    /// no longer references the object as it was read, or none is left).
    async fn resealed(
        &self,
        object: &ObjectToMove,
        new_key: &str,
        cipher: &FieldCipher,
        rows: Vec<MediaRow>,
    ) -> Result<Result<Vec<(String, i64, SealedColumns)>, &'static str>, DbError> {
        if rows.is_empty() {
            return Ok(Err("its rows are gone"));
        }
        let tenant = object.tenant.as_str();
        let mut updates = Vec::with_capacity(rows.len());
        for row in rows {
            let version = row.version()?;
            let object_version = row.object_dek_version.map(|v| u32::try_from(v).map_err(|_| CryptoError::Integrity));
            let dek = self.keys.version(tenant, KeyPurpose::Dek, version).await?;
            let mut plain = RowCipher { cipher: &FieldCipher::new(&dek), tenant, id: &row.id }.open_all(&row.sealed)?;
            if row.status != "ready"
                || plain.storage_key != object.storage_key
                || object_version.transpose()? != object.object_dek_version
            {
                return Ok(Err("its rows reference another object"));
            }
            plain.storage_key = new_key.to_owned();
            let resealer = RowCipher { cipher, tenant, id: &row.id };
            let sealed = resealer.seal_all(&plain);
            if resealer.open_all(&sealed)? != plain {
                return Err(CryptoError::Integrity.into());
            }
            updates.push((row.id, row.revision, sealed));
        }
        Ok(Ok(updates))
    }
}
