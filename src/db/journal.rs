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

use chrono::{DateTime, Utc};

use super::{Database, DbError};
use crate::with_pool;

pub(crate) const OPEN: &str =
    "INSERT INTO blob_journal (storage_key, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";
pub(crate) const CLOSE: &str = "DELETE FROM blob_journal WHERE storage_key = $1";
const ALL: &str = "SELECT storage_key FROM blob_journal";
const STALE: &str = "SELECT storage_key FROM blob_journal WHERE created_at < $1 ORDER BY created_at LIMIT $2";

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

/// Up to `limit` journaled keys older than `before`, oldest first: objects a crash left behind.
pub async fn stale(db: &Database, before: DateTime<Utc>, limit: u32) -> Result<Vec<String>, DbError> {
    Ok(with_pool!(db, |pool| sqlx::query_scalar(STALE).bind(before).bind(i64::from(limit)).fetch_all(pool).await)?)
}

/// Every journaled key (what `reconcile` must not delete, whatever its age).
pub async fn keys(db: &Database) -> Result<Vec<String>, DbError> {
    Ok(with_pool!(db, |pool| sqlx::query_scalar(ALL).fetch_all(pool).await)?)
}
