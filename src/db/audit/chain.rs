//! One link of a chain: its MAC, and appending it at the end of its chain under the chain's lock.
//! Below [`super::AuditLog`] (which pseudonymizes) and below the tenant keys, which record the keys
//! they create here with the audit key in hand.

use std::sync::LazyLock;

use chrono::{SubsecRound, Utc};

use crate::crypto::audit_mac;
use crate::crypto::envelope::DataKey;
use crate::db::{Database, DbError};

/// `prev_hash` of the first event of a chain.
pub(crate) const GENESIS: [u8; 32] = [0u8; 32];
/// `format` of keyed, pseudonymous events.
pub(crate) const KEYED: i16 = 2;
/// Advisory-lock class of audit chains (the two-key form: class, `hashtext(tenant)`), apart from
/// the one-key locks of `db::locks`.
const LOCK_CLASS: i32 = 0x6175_6469;
/// Serializes this process's appends on SQLite (one process by design).
pub(crate) static SQLITE_APPENDS: LazyLock<tokio::sync::Mutex<()>> = LazyLock::new(|| tokio::sync::Mutex::new(()));
/// This process's appenders of one chain queue here (chains hashed into slots) before they take a
/// pooled connection, so a burst on one chain waits in memory, not holding the pool.
static TURNS: LazyLock<[tokio::sync::Mutex<()>; 16]> =
    LazyLock::new(|| std::array::from_fn(|_| tokio::sync::Mutex::new(())));
/// Attempts when another process took the next position first (SQLite: a command-line process
/// beside the server, which the in-process mutex does not see).
const ATTEMPTS: usize = 5;

/// An event as it is stored: names already pseudonymized, details serialized.
pub(crate) struct Record<'a> {
    pub tenant: &'a str,
    pub kind: &'a str,
    pub actor: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub details: &'a str,
}

/// The fields of a stored event that its MAC covers, as stored.
pub(crate) struct Link<'a> {
    pub tenant: &'a str,
    pub seq: i64,
    pub at: &'a chrono::DateTime<Utc>,
    pub kind: &'a str,
    pub actor: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub details: &'a str,
}

impl Link<'_> {
    /// The keyed MAC of this link after `prev`.
    pub(crate) fn mac(&self, key: &DataKey, prev: &[u8]) -> [u8; 32] {
        let seq = self.seq.to_string();
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let format = KEYED.to_string();
        let fields = [
            Some(self.tenant),
            Some(seq.as_str()),
            Some(at.as_str()),
            Some(self.kind),
            self.actor,
            self.subject,
            Some(self.details),
            Some(format.as_str()),
        ];
        audit_mac::chain_mac(key, prev, &fields)
    }
}

const LAST: &str = "SELECT chain_seq, hash FROM audit_events WHERE tenant_id = $1 ORDER BY chain_seq DESC LIMIT 1";
const LOCK_CHAIN: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
/// Taken before the head is read: the lock a reseal's `ALTER TABLE` waits for, so no append reads a
/// head that a reseal is about to rewrite.
const LOCK_TABLE: &str = "LOCK TABLE audit_events IN ROW EXCLUSIVE MODE";
const INSERT: &str = "INSERT INTO audit_events (tenant_id, chain_seq, occurred_at, kind, actor, subject, details, \
     prev_hash, hash, format) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// Reads the head of `record`'s chain on `$conn` and inserts the next link after it.
macro_rules! insert_next {
    ($conn:expr, $key:expr, $record:expr) => {{
        let head: Option<(i64, Vec<u8>)> =
            sqlx::query_as(LAST).bind($record.tenant).fetch_optional(&mut *$conn).await?;
        let (seq, prev) = match head {
            Some((seq, mac)) => (seq + 1, mac),
            None => (1, GENESIS.to_vec()),
        };
        let at = Utc::now().trunc_subsecs(6);
        let link = Link {
            tenant: $record.tenant,
            seq,
            at: &at,
            kind: $record.kind,
            actor: $record.actor,
            subject: $record.subject,
            details: $record.details,
        };
        let mac = link.mac($key, &prev);
        sqlx::query(INSERT)
            .bind($record.tenant)
            .bind(seq)
            .bind(at)
            .bind($record.kind)
            .bind($record.actor)
            .bind($record.subject)
            .bind($record.details)
            .bind(&prev)
            .bind(&mac[..])
            .bind(KEYED)
            .execute(&mut *$conn)
            .await?;
    }};
}

/// Appends `record` at the end of its chain, chained with `key` (the audit key). Postgres: in a
/// transaction holding the chain's advisory lock. SQLite: under this process's append mutex, in
/// autocommit (a deferred transaction that reads, then writes, fails at once when another
/// connection wrote in between).
pub(crate) async fn append(db: &Database, key: &DataKey, record: &Record<'_>) -> Result<(), DbError> {
    let slot = record.tenant.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % 16;
    let _turn = TURNS[slot].lock().await;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result: Result<(), sqlx::Error> = match db {
            Database::Postgres(pool) => {
                async {
                    let mut tx = pool.begin().await?;
                    sqlx::query(LOCK_CHAIN).bind(LOCK_CLASS).bind(record.tenant).execute(&mut *tx).await?;
                    sqlx::query(LOCK_TABLE).execute(&mut *tx).await?;
                    insert_next!(tx, key, record);
                    tx.commit().await
                }
                .await
            }
            Database::Sqlite(pool) => {
                async {
                    let _file = SQLITE_APPENDS.lock().await;
                    let mut conn = pool.acquire().await?;
                    insert_next!(conn, key, record);
                    Ok(())
                }
                .await
            }
        };
        match result {
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() && attempt < ATTEMPTS => continue,
            other => return Ok(other?),
        }
    }
}
