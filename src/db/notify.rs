//! Cross-process cache invalidation: every process keeps only caches (decrypted ready rows, tenant
//! keys and their current-version pointers), and a writer that changes what they hold says so on a
//! Postgres `NOTIFY` channel; every serving process listens and forgets what changed.
//!
//! - A deleted row: [`Change::Row`] (the row cache drops it).
//! - A tenant's keys: a new, retired or destroyed version ([`Change::Tenant`]): the tenant's cached
//!   keys, current-version pointers and rows are dropped.
//!
//! A process whose listener is not connected cannot know what changed, so its [`CacheGate`] is
//! closed and it caches nothing until the listener is back (and everything cached before is dropped
//! on reconnect); `media_cache_invalidation_listening` says which. SQLite is one process: it
//! invalidates in memory, and its gate stays open.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::media::MediaRepo;
use super::tenant_keys::TenantKeys;
use super::{Database, DbError};
use crate::telemetry::metrics::names;

/// The channel changes are published on.
pub const CHANNEL: &str = "media_api_changes";

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A row was deleted (or changed).
    Row {
        /// Its tenant.
        tenant: String,
        /// Its id.
        id: String,
    },
    /// A tenant's keys changed (new, retired or destroyed versions).
    Tenant(String),
}

impl Change {
    /// The text sent on the channel (tenant ids and media ids never hold a tab).
    pub fn payload(&self) -> String {
        match self {
            Self::Row { tenant, id } => format!("row\t{tenant}\t{id}"),
            Self::Tenant(tenant) => format!("tenant\t{tenant}"),
        }
    }

    /// The change a payload names, if it is one.
    pub fn parse(payload: &str) -> Option<Self> {
        let mut parts = payload.split('\t');
        match (parts.next()?, parts.next()?, parts.next(), parts.next()) {
            ("row", tenant, Some(id), None) => Some(Self::Row { tenant: tenant.to_owned(), id: id.to_owned() }),
            ("tenant", tenant, None, None) => Some(Self::Tenant(tenant.to_owned())),
            _ => None,
        }
    }
}

/// Whether caches may be used: open while changes can be heard (always, on SQLite).
#[derive(Debug, Clone)]
pub struct CacheGate(Arc<AtomicBool>);

impl CacheGate {
    /// An open gate.
    pub fn open() -> Self {
        Self(Arc::new(AtomicBool::new(true)))
    }

    /// A closed gate (a listener not connected yet).
    pub fn closed() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    /// Whether caches may be read and filled.
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, open: bool) {
        self.0.store(open, Ordering::Release);
        metrics::gauge!(names::CACHE_LISTENING).set(if open { 1.0 } else { 0.0 });
    }
}

/// Tells the other processes about `change` (Postgres; nothing to tell on SQLite). A failure is
/// logged: the change itself has happened, and other processes' caches expire on their own.
pub async fn publish(db: &Database, change: &Change) {
    let Database::Postgres(pool) = db else { return };
    let sent = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(change.payload()).execute(pool).await;
    if let Err(err) = sent {
        tracing::warn!(error = %err, ?change, "cannot publish a cache invalidation");
    }
}

/// Listens for changes and applies them to `media` and `keys` until the task is aborted, keeping
/// `gate` open only while connected (Postgres; `None` on SQLite).
pub fn spawn_listener(
    db: &Database,
    gate: CacheGate,
    media: MediaRepo,
    keys: Arc<TenantKeys>,
) -> Option<tokio::task::JoinHandle<()>> {
    let Database::Postgres(pool) = db else { return None };
    let pool = pool.clone();
    Some(tokio::spawn(async move {
        loop {
            if let Err(err) = listen(&pool, &gate, &media, &keys).await {
                tracing::warn!(error = %err, "cache invalidation listener down: caching off until it is back");
            }
            gate.set(false);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }))
}

/// One connection's worth of listening; returns when the connection is lost.
async fn listen(pool: &sqlx::PgPool, gate: &CacheGate, media: &MediaRepo, keys: &TenantKeys) -> Result<(), DbError> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection must close the gate at once, not be mended quietly inside `try_recv`.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Whatever changed while nobody was listening is unknown: start from empty caches.
    media.forget_all();
    keys.forget_all();
    gate.set(true);
    while let Some(notification) = listener.try_recv().await? {
        match Change::parse(notification.payload()) {
            Some(Change::Row { id, .. }) => media.forget(&id),
            Some(Change::Tenant(tenant)) => {
                keys.forget_tenant(&tenant);
                media.forget_tenant(&tenant);
            }
            None => tracing::warn!(payload = notification.payload(), "unknown cache invalidation"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_through_their_payload() {
        for change in [Change::Row { tenant: "acme".into(), id: "jan_1".into() }, Change::Tenant("a:b@c".into())] {
            assert_eq!(Change::parse(&change.payload()), Some(change));
        }
        assert_eq!(Change::parse("row\tacme"), None);
        assert_eq!(Change::parse("nothing"), None);
    }
}
