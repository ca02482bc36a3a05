//! The blob journal (`blob_journal`): keys of objects that no media row references — an upload
//! being written, or an object whose row is gone and whose delete is still to come.
//!
//! The protocol that makes a crash (`kill -9`, a lost node) leave no unreachable object behind:
//! - an upload's key is journaled ([`open`]) before its first byte is written;
//! - the row that comes to reference a key removes its entry in the same transaction
//!   ([`CLOSE`], run by the media repository's insert and mark-ready);
//! - a row delete journals its key in the same transaction ([`OPEN`]);
//! - once an object is deleted (or was never completed), its entry goes ([`close`]).
//!
//! An entry older than any upload can last therefore names an object nothing else can reach; the
//! sweeper deletes the object (a missing one counts as deleted) and then the entry ([`stale`]).
//! Keys are random (`m/<hex>`) and say nothing about tenant or content, so they are stored plain.
//!
//! An old object whose rows moved to a copy (`jobs::objects`) is *kept* for a grace — links signed
//! before the move name it — and journaled ([`KEEP`]) with the time it may go and its tenant: the
//! sweeper deletes it once that time has passed (not an abandoned-upload age later), and a shred
//! deletes a tenant's kept objects at once ([`kept_by`]).

use chrono::{DateTime, Utc};

use super::{Database, DbError};
use crate::with_pool;

pub(crate) const OPEN: &str =
    "INSERT INTO blob_journal (storage_key, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";
/// Journals an old object kept until `$3` (`delete_after`) for tenant `$4`.
pub(crate) const KEEP: &str = "INSERT INTO blob_journal (storage_key, created_at, delete_after, tenant_id) \
     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";
pub(crate) const CLOSE: &str = "DELETE FROM blob_journal WHERE storage_key = $1";
const ALL: &str = "SELECT storage_key FROM blob_journal";
const STALE: &str = "SELECT storage_key FROM blob_journal \
     WHERE (delete_after IS NULL AND created_at < $1) OR delete_after <= $2 ORDER BY created_at LIMIT $3";
const KEPT_BY: &str = "SELECT storage_key FROM blob_journal WHERE tenant_id = $1 ORDER BY storage_key LIMIT $2";

/// Journals `key` before an object is written under it.
pub async fn open(db: &Database, key: &str) -> Result<(), DbError> {
    with_pool!(db, |pool| sqlx::query(OPEN).bind(key).bind(Utc::now()).execute(pool).await.map(|_| ()))?;
    Ok(())
}

/// Drops the entry of `key` once its object is deleted (or was never written).
pub async fn close(db: &Database, key: &str) -> Result<(), DbError> {
    with_pool!(db, |pool| sqlx::query(CLOSE).bind(key).execute(pool).await.map(|_| ()))?;
    Ok(())
}

/// Up to `limit` journaled keys, oldest first, that the sweeper may delete: objects a crash left
/// behind (entries older than `before`) and kept old objects whose time has come (by `now`).
pub async fn stale(
    db: &Database,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<String>, DbError> {
    let limit = i64::from(limit);
    Ok(with_pool!(db, |pool| sqlx::query_scalar(STALE).bind(before).bind(now).bind(limit).fetch_all(pool).await)?)
}

/// Up to `limit` keys of old objects kept for `tenant` (what a shred deletes with its rows).
pub async fn kept_by(db: &Database, tenant: &str, limit: u32) -> Result<Vec<String>, DbError> {
    Ok(with_pool!(db, |pool| sqlx::query_scalar(KEPT_BY).bind(tenant).bind(i64::from(limit)).fetch_all(pool).await)?)
}

/// Every journaled key (what `reconcile` must not delete, whatever its age).
pub async fn keys(db: &Database) -> Result<Vec<String>, DbError> {
    Ok(with_pool!(db, |pool| sqlx::query_scalar(ALL).fetch_all(pool).await)?)
}
