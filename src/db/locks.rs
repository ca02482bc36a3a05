//! Work that must run once at a time across every process on the database: the sweeper and
//! `reconcile` (one pass at a time in a fleet), and rotation and shredding of one tenant (which
//! exclude each other). A [`JobLock`] is held until it is released ([`JobLock::release`]: at
//! once) or dropped.
//!
//! On Postgres it is a session advisory lock on a connection of its own, taken out of the pool:
//! dropping the lock closes that connection, and a process that dies (`kill -9`) loses its
//! connection and so its locks — nothing is left to clean up. On SQLite (the embedded default,
//! one process by design) the locks are held in the process's memory.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::Connection;

use super::{Database, DbError};

/// Names held in this process, with their database file (the SQLite case).
static HELD: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// The lock of the retention sweeper.
pub const SWEEP: &str = "sweep";
/// The lock of `reconcile`.
pub const RECONCILE: &str = "reconcile";

/// The lock that rotation and shredding of `tenant` both take.
pub fn tenant(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The key of the transaction-scoped advisory lock (Postgres) that serializes the writers of one
/// dedup group: the rows of `tenant` whose content MAC is `mac` (see `db::media::group`).
pub(crate) fn content_group(tenant: &str, mac: &[u8; 32]) -> i64 {
    key(&format!("content:{tenant}:{}", hex::encode(mac)))
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct JobLock {
    name: String,
    holder: Holder,
}

#[derive(Debug)]
enum Holder {
    /// Postgres: the session holding the advisory lock (closed on drop, which releases it).
    Session(Option<sqlx::PgConnection>),
    /// SQLite: the name in [`HELD`].
    Memory,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Holder::Memory = self.holder {
            HELD.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.name);
        }
    }
}

impl JobLock {
    /// Releases the lock: once this returns, another process can take it. (Dropping the lock
    /// releases it too, but a moment later on Postgres: once the server has seen its session
    /// close, which closing it does not wait for.)
    pub async fn release(mut self) {
        if let Holder::Session(session) = &mut self.holder {
            if let Some(mut session) = session.take() {
                let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key(&self.name));
                if let Err(err) = unlock.execute(&mut session).await {
                    tracing::warn!(lock = %self.name, error = %err, "could not release a lock at once; its session's end releases it");
                }
                let _ = session.close().await;
            }
        }
    }
}

/// Takes the lock `name` if no process holds it; `None` when one does.
pub async fn try_lock(db: &Database, name: &str) -> Result<Option<JobLock>, DbError> {
    match db {
        Database::Postgres(pool) => {
            let mut session = pool.acquire().await?.detach();
            let taken: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key(name)).fetch_one(&mut session).await?;
            if !taken {
                let _ = session.close().await;
                return Ok(None);
            }
            Ok(Some(JobLock { name: name.to_owned(), holder: Holder::Session(Some(session)) }))
        }
        Database::Sqlite(pool) => {
            // Per database file: two databases in one process (tests) do not share locks.
            let name = format!("{}\0{name}", pool.connect_options().get_filename().display());
            let fresh = HELD.lock().unwrap_or_else(PoisonError::into_inner).insert(name.clone());
            // Built only when taken: a `JobLock` releases its name when dropped.
            Ok(if fresh { Some(JobLock { name, holder: Holder::Memory }) } else { None })
        }
    }
}

/// How long [`lock_tenant`] waits for a holder to finish (or for the session of a process that just
/// died to end) before it refuses.
pub const TENANT_WAIT: Duration = Duration::from_secs(5);

/// The lock of `tenant` for a rotation or a shred, waiting at most [`TENANT_WAIT`] for it, or
/// [`DbError::Locked`] saying who has it.
pub async fn lock_tenant(db: &Database, tenant_id: &str) -> Result<JobLock, DbError> {
    let started = Instant::now();
    loop {
        if let Some(lock) = try_lock(db, &tenant(tenant_id)).await? {
            return Ok(lock);
        }
        if started.elapsed() >= TENANT_WAIT {
            return Err(DbError::Locked(format!(
                "tenant {tenant_id:?} is being rotated or shredded by another process; run this again when that ends"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The advisory lock key of a name: the first 8 bytes of its SHA-256, with a prefix so the keys
/// cannot meet another application's on the same database by accident.
fn key(name: &str) -> i64 {
    let digest = Sha256::digest(format!("media-api:{name}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_by_name_and_are_stable() {
        assert_eq!(key("sweep"), key("sweep"));
        assert_ne!(key("sweep"), key("reconcile"));
        assert_ne!(key(&tenant("acme")), key(&tenant("acme2")));
        assert_ne!(content_group("acme", &[1; 32]), content_group("acme2", &[1; 32]));
        assert_ne!(content_group("acme", &[1; 32]), content_group("acme", &[2; 32]));
    }
}
