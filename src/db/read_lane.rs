//! A lane of PostgreSQL connections for the hot reads of one statement each — a media row by id
//! for presign, resolve and download — beside the pool (PostgreSQL only; SQLite has no round trip).
//!
//! sqlx's pool tests every connection as it is released: a `Sync` and a wait for PostgreSQL's
//! `ReadyForQuery`, a whole extra round trip (through TLS, in a task of its own) after every query —
//! 16 % of the service's CPU under an uncached presign load, and as many more messages for PostgreSQL
//! (docs/performance.md, session 11). A read that ran to its end has already received that
//! `ReadyForQuery`: its connection is ready for the next statement and the lane takes it back as
//! it is. The case sqlx's test exists for — a query whose future was dropped half-way (the client
//! went, a timeout) or that failed — closes the connection instead ([`Lease`] without
//! [`Lease::done`]), so a lane never hands out a connection in an unknown state.
//!
//! As with the pool, a connection idle for [`PING_WHEN_IDLE_FOR`] or longer is pinged before it is
//! used (a server restart, a failover or a proxy's idle timeout may have cut it) and replaced when
//! the ping fails, one older than [`MAX_LIFETIME`] or idle for [`IDLE_TIMEOUT`] is closed (when the
//! lane is next used: an idle lane keeps its connections), and
//! waiting for a connection ends after the pool's acquire timeout with the pool's error
//! (`PoolTimedOut`). A connection closed while checked out keeps its slot until its `Terminate` is
//! sent (one closed from the idle list has no slot to keep). sqlx does
//! not wait for the server after it, so a backend still running a cut-off statement lives until
//! that statement ends: for that long the server may hold more backends than the lane's size.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::PING_WHEN_IDLE_FOR;

/// A connection older than this is closed rather than reused (sqlx's pool default).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// A connection idle this long is closed (sqlx's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

struct Idle {
    conn: PgConnection,
    opened: Instant,
    since: Instant,
}

/// At most `size` connections, reused without a test after each complete read.
pub struct ReadLane {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    slots: Arc<Semaphore>,
    size: u32,
    acquire_timeout: Duration,
}

/// A connection of the lane, checked out. Give it back with [`Lease::done`] once its statement has
/// run to its end; dropped otherwise, it is closed.
pub struct Lease {
    lane: Arc<ReadLane>,
    conn: Option<(PgConnection, Instant)>,
    slot: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for ReadLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadLane").field("idle", &self.idle()).field("free", &self.slots.available_permits()).finish()
    }
}

impl ReadLane {
    /// A lane of at most `size` connections opened with `options` (lazily, as reads need them).
    pub fn new(options: PgConnectOptions, size: u32, acquire_timeout: Duration) -> Self {
        let size = size.max(1);
        let slots = Arc::new(Semaphore::new(size as usize));
        Self { options, idle: Mutex::new(Vec::new()), slots, size, acquire_timeout }
    }

    /// A connection: the one used last if it is fit, else a new one.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, sqlx::Error> {
        let lease = async {
            let slot = self.slots.clone().acquire_owned().await.map_err(|_| sqlx::Error::PoolClosed)?;
            let conn = self.checkout().await?;
            Ok(Lease { lane: self.clone(), conn: Some(conn), slot: Some(slot) })
        };
        tokio::time::timeout(self.acquire_timeout, lease).await.map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    /// A connection if one is free now (no caller waits for one), else `None` at once.
    pub async fn try_acquire(self: &Arc<Self>) -> Option<Result<Lease, sqlx::Error>> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let conn = tokio::time::timeout(self.acquire_timeout, self.checkout()).await;
        let conn = conn.map_err(|_| sqlx::Error::PoolTimedOut).and_then(|conn| conn);
        Some(conn.map(|conn| Lease { lane: self.clone(), conn: Some(conn), slot: Some(slot) }))
    }

    async fn checkout(&self) -> Result<(PgConnection, Instant), sqlx::Error> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
            let Some(Idle { mut conn, opened, since }) = idle else {
                return Ok((self.options.connect().await?, Instant::now()));
            };
            if opened.elapsed() >= MAX_LIFETIME || since.elapsed() >= IDLE_TIMEOUT {
                close(conn, None);
                continue;
            }
            if since.elapsed() >= PING_WHEN_IDLE_FOR && conn.ping().await.is_err() {
                continue;
            }
            return Ok((conn, opened));
        }
    }

    /// How long a caller waits for a connection (the pool's acquire timeout).
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Closes the idle connections (at shutdown; those checked out close as they come back).
    pub async fn close(&self) {
        self.slots.close();
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for Idle { conn, .. } in idle {
            let _ = conn.close().await;
        }
    }

    /// Connections open and idle.
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// For the `/metrics` gauges: connections checked out (a closing one keeps its slot until
    /// closed, so it counts), connections idle, and the lane's size.
    pub fn stats(&self) -> (u32, usize, u32) {
        let out = self.size.saturating_sub(self.slots.available_permits() as u32);
        (if self.slots.is_closed() { 0 } else { out }, self.idle(), self.size)
    }
}

impl Lease {
    /// The connection, for one statement in autocommit: never a transaction (`done` would hand it
    /// back inside it).
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn.as_mut().expect("a lease holds its connection until it ends").0
    }

    /// Gives the connection back: its statement ran to its end, so it is ready for the next.
    pub fn done(mut self) {
        if let Some((conn, opened)) = self.conn.take() {
            let mut idle = self.lane.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // Under the idle lock: `close` empties the idle list under it after closing the slots,
            // so a connection is either closed here or emptied out there, never left behind.
            if self.lane.slots.is_closed() {
                drop(idle);
                return close(conn, self.slot.take());
            }
            // The least recently used are at the bottom: those idle too long go now, not when reached.
            while idle.first().is_some_and(|oldest| oldest.since.elapsed() >= IDLE_TIMEOUT) {
                close(idle.remove(0).conn, None);
            }
            idle.push(Idle { conn, opened, since: Instant::now() });
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            close(conn, self.slot.take());
        }
    }
}

/// Closes `conn` in the background (a `Terminate` to the server, then the socket), holding `slot`
/// until that is sent, when a runtime is there to do it; otherwise dropping it closes the socket.
/// A backend still running a cut-off statement ends once the statement does.
fn close(conn: PgConnection, slot: Option<OwnedSemaphorePermit>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
            drop(slot);
        });
    }
}
