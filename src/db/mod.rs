//! Metadata database: connection pools for Postgres (production) and SQLite (embedded default), and
//! the embedded migrations of each.
//!
//! [`Database`] is an enum over the two sqlx pools rather than sqlx's `Any` driver, so each backend
//! keeps its native types (`BYTEA`/`BLOB`, `TIMESTAMPTZ`) and its own migration set under
//! `migrations/postgres` and `migrations/sqlite`. The repository built on it (rows in, plaintext
//! structs out) lives beside this module.

use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::ConnectOptions;

use crate::config::DatabaseConfig;
use read_lane::ReadLane;

pub mod audit;
pub mod journal;
pub mod locks;
pub mod media;
pub mod notify;
pub mod read_lane;
pub mod tenant_keys;
pub mod tenants;
pub mod ttl_cache;

/// Runs the same expression on whichever pool a [`Database`] holds, for statements whose SQL and
/// binds are identical on both backends: `with_pool!(db, |pool| sqlx::query("…").execute(pool).await)`.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            $crate::db::Database::Postgres($pool) => $body,
            $crate::db::Database::Sqlite($pool) => $body,
        }
    };
}

/// The fewest `MEDIA_DATABASE_MAX_CONNECTIONS` with which a server splits off a read lane.
const LANE_FROM: u32 = 4;

/// A pooled connection idle this long is pinged before it is handed out (see [`Database::connect`]).
const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Errors of the database layer.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL could not be understood.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value failed to decrypt or a wrapped key did not belong where it was found.
    #[error("data integrity: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    /// A row refers to a key version that does not exist (or was destroyed).
    #[error("tenant key version {version} is missing or destroyed")]
    MissingKey {
        /// The version.
        version: u32,
    },
    /// The tenant is being shredded: no row may be written until that ends.
    #[error("this tenant's data is being destroyed; nothing can be stored for it until that ends")]
    TenantShredding,
    /// The tenant's keys kept changing while a row was being written (a rotation rolling versions).
    #[error("the tenant's keys changed while the row was written; try again")]
    KeyChanged,
    /// Another process is doing work that must run once at a time (see [`locks`]).
    #[error("{0}")]
    Locked(String),
    /// The audit key's row is gone while the log holds events keyed with it.
    #[error(
        "the audit key is missing from the database while the audit log holds events keyed with it: restore \
         its tenant_keys row (tenant '', purpose index) from a backup; a new key would leave the history unverifiable"
    )]
    AuditKeyMissing,
    /// Preparing the SQLite file's directory failed.
    #[error("cannot create the database directory {path}: {source}")]
    Directory {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

impl DbError {
    /// The stable code a client sees for this failure (no detail: database errors are never shown).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Crypto(_) | Self::MissingKey { .. } | Self::AuditKeyMissing => "data_integrity",
            Self::TenantShredding => "tenant_shredding",
            Self::KeyChanged => "key_changed",
            _ if self.is_unavailable() => "database_unavailable",
            _ => "internal",
        }
    }

    /// Whether the database itself is out of reach (down, restarting, out of connections) rather
    /// than the statement being wrong: callers answer "try again later" (503), not a server error.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Sqlx(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)) => true,
            Self::Sqlx(sqlx::Error::Tls(_) | sqlx::Error::WorkerCrashed) => true,
            // SQLSTATE class 08 (connection exception), 57P01-57P03 (shutdown, crash, starting up),
            // 53300 (too many connections); SQLite: busy or locked past the busy timeout.
            Self::Sqlx(sqlx::Error::Database(err)) => err.code().is_some_and(|code| {
                code.starts_with("08") || ["57P01", "57P02", "57P03", "53300", "5", "6"].contains(&code.as_ref())
            }),
            _ => false,
        }
    }
}

/// A pool on one of the supported databases.
#[derive(Debug, Clone)]
pub enum Database {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite (WAL mode).
    Sqlite(SqlitePool),
}

/// What `migrate` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied before this run.
    pub already_applied: usize,
    /// Migrations this run applied.
    pub newly_applied: usize,
    /// Their versions.
    pub applied_now: Vec<i64>,
}

impl Database {
    /// Connects a pool for the configured URL. SQLite files (and their directory) are created when
    /// missing. Connections are opened lazily, so a database that is down at start makes `/readyz`
    /// fail rather than the process.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, DbError> {
        let url = config.url.expose_secret();
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(|e| DbError::InvalidUrl(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5))
                .disable_statement_logging();
            if let Some(parent) = options.get_filename().parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|source| DbError::Directory { path: parent.display().to_string(), source })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(config.acquire_timeout)
                .connect_with(options)
                .await?;
            return Ok(Self::Sqlite(pool));
        }
        Ok(Self::postgres(pg_options(config)?, config.max_connections, config))
    }

    /// Connects as [`Self::connect`], for a server: on PostgreSQL, when
    /// `MEDIA_DATABASE_MAX_CONNECTIONS` is at least [`LANE_FROM`], a third of the connections form
    /// a [`ReadLane`] for the hot reads of a row by id and the pool keeps the rest (the total
    /// stays; the pool keeps at least three: one is the cache-invalidation listener's for good).
    pub async fn connect_server(config: &DatabaseConfig) -> Result<(Self, Option<ReadLane>), DbError> {
        if config.url.expose_secret().starts_with("sqlite:") || config.max_connections < LANE_FROM {
            return Ok((Self::connect(config).await?, None));
        }
        let options = pg_options(config)?;
        let lane_size = config.max_connections / 3;
        let lane = ReadLane::new(options.clone(), lane_size, config.acquire_timeout);
        Ok((Self::postgres(options, config.max_connections - lane_size, config), Some(lane)))
    }

    fn postgres(options: PgConnectOptions, size: u32, config: &DatabaseConfig) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(config.acquire_timeout)
            // sqlx pings every connection it hands out by default: a whole extra round trip per
            // request under load (docs/performance.md, presign). Only a connection that sat idle
            // long enough to have been cut (server restart, failover, a proxy's idle timeout) is
            // pinged first; a dead one is dropped and another taken.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for < PING_WHEN_IDLE_FOR {
                        return Ok(true);
                    }
                    Ok(sqlx::Connection::ping(conn).await.is_ok())
                })
            })
            .connect_lazy_with(options);
        Self::Postgres(pool)
    }

    /// `postgres` or `sqlite`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations; safe to run any number of times and from several processes.
    pub async fn migrate(&self) -> Result<MigrationReport, DbError> {
        let (migrator, before) = match self {
            Self::Postgres(pool) => (&POSTGRES_MIGRATIONS, applied_pg(pool).await?),
            Self::Sqlite(pool) => (&SQLITE_MIGRATIONS, applied_sqlite(pool).await?),
        };
        match self {
            Self::Postgres(pool) => migrator.run(pool).await?,
            Self::Sqlite(pool) => migrator.run(pool).await?,
        }
        let after = match self {
            Self::Postgres(pool) => applied_pg(pool).await?,
            Self::Sqlite(pool) => applied_sqlite(pool).await?,
        };
        let applied_now: Vec<i64> = after.into_iter().filter(|v| !before.contains(v)).collect();
        Ok(MigrationReport { already_applied: before.len(), newly_applied: applied_now.len(), applied_now })
    }

    /// Readiness: one round trip.
    pub async fn ping(&self) -> Result<(), DbError> {
        with_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))?;
        Ok(())
    }

    /// Pool use: (open connections, idle connections, largest size).
    pub fn pool_stats(&self) -> (u32, usize, u32) {
        with_pool!(self, |pool| (pool.size(), pool.num_idle(), pool.options().get_max_connections()))
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }
}

const APPLIED_QUERY: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

/// The connection options of a PostgreSQL URL, with `MEDIA_CA_FILE` as the default trust.
fn pg_options(config: &DatabaseConfig) -> Result<PgConnectOptions, DbError> {
    let url = config.url.expose_secret();
    let mut options = PgConnectOptions::from_str(url)
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?
        .application_name("media-api")
        .disable_statement_logging();
    if let Some(ca) = &config.ca {
        // `sslrootcert=` in the URL wins; MEDIA_CA_FILE is the service-wide default.
        if !url.contains("sslrootcert=") {
            options = options.ssl_root_cert_from_pem(ca.pem.to_vec());
        }
    }
    Ok(options)
}

async fn applied_pg(pool: &PgPool) -> Result<Vec<i64>, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL").fetch_one(pool).await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(APPLIED_QUERY).fetch_all(pool).await?)
}

async fn applied_sqlite(pool: &SqlitePool) -> Result<Vec<i64>, DbError> {
    let exists: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'")
            .fetch_one(pool)
            .await?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_scalar(APPLIED_QUERY).fetch_all(pool).await?)
}
