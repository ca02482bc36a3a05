//! The append-only audit log: one hash chain per tenant (`""` is the system chain).
//!
//! Each event stores `prev_hash` (the previous event's hash in its tenant's chain, 32 zero bytes for
//! the first) and `hash = SHA-256(prev_hash ‖ tenant ‖ chain_seq ‖ time ‖ kind ‖ actor ‖ subject ‖
//! details)`, every field length-prefixed. Triggers refuse UPDATE and DELETE (and TRUNCATE on
//! Postgres); [`verify`] walks every chain and reports the first link that does not hold, so an edit
//! made by someone who could bypass the triggers is still found.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Database, DbError};
use crate::with_pool;

/// Tenant id of the system chain (events not about one tenant).
pub const SYSTEM_CHAIN: &str = "";
const GENESIS: [u8; 32] = [0u8; 32];
const APPEND_ATTEMPTS: usize = 8;

/// An event to append.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Tenant chain the event belongs to.
    pub tenant: &'a str,
    /// What happened, e.g. `key.created`, `tenant.shredded`.
    pub kind: &'a str,
    /// Who did it (subject or `system`/`admin`).
    pub actor: Option<&'a str>,
    /// What it was done to (an id, a key version).
    pub subject: Option<&'a str>,
    /// Extra facts (never secrets).
    pub details: serde_json::Value,
}

/// The first link of a chain that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenLink {
    /// Tenant chain.
    pub tenant: String,
    /// Position in the chain.
    pub chain_seq: i64,
    /// What is wrong.
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Chains walked.
    pub chains: usize,
    /// Events checked.
    pub events: u64,
    /// The first broken link of each broken chain.
    pub broken: Vec<BrokenLink>,
}

type StoredEvent = (i64, DateTime<Utc>, String, Option<String>, Option<String>, String, Vec<u8>, Vec<u8>);

fn event_hash(
    prev: &[u8],
    tenant: &str,
    seq: i64,
    at: &DateTime<Utc>,
    event: (&str, Option<&str>, Option<&str>, &str),
) -> Vec<u8> {
    let (kind, actor, subject, details) = event;
    let mut hasher = Sha256::new();
    hasher.update(prev);
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let seq = seq.to_string();
    for part in [tenant, seq.as_str(), at.as_str(), kind, actor.unwrap_or("\u{0}"), subject.unwrap_or("\u{0}"), details]
    {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_vec()
}

const LAST: &str = "SELECT chain_seq, hash FROM audit_events WHERE tenant_id = $1 ORDER BY chain_seq DESC LIMIT 1";
const INSERT: &str = "INSERT INTO audit_events (tenant_id, chain_seq, occurred_at, kind, actor, subject, details, \
     prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const CHAINS: &str = "SELECT DISTINCT tenant_id FROM audit_events ORDER BY tenant_id";
const CHAIN: &str = "SELECT chain_seq, occurred_at, kind, actor, subject, details, prev_hash, hash FROM audit_events \
     WHERE tenant_id = $1 ORDER BY chain_seq";

/// Appends an event to its tenant's chain. Concurrent appends to one chain race on the unique
/// `(tenant_id, chain_seq)`; the loser reads the new head and tries again.
pub async fn append(db: &Database, event: &AuditEvent<'_>) -> Result<(), DbError> {
    let details = event.details.to_string();
    for _ in 0..APPEND_ATTEMPTS {
        let head: Option<(i64, Vec<u8>)> =
            with_pool!(db, |pool| sqlx::query_as(LAST).bind(event.tenant).fetch_optional(pool).await)?;
        let (seq, prev) = match head {
            Some((seq, hash)) => (seq + 1, hash),
            None => (1, GENESIS.to_vec()),
        };
        let at = Utc::now().trunc_subsecs(6);
        let hash = event_hash(&prev, event.tenant, seq, &at, (event.kind, event.actor, event.subject, &details));
        let result = with_pool!(db, |pool| sqlx::query(INSERT)
            .bind(event.tenant)
            .bind(seq)
            .bind(at)
            .bind(event.kind)
            .bind(event.actor)
            .bind(event.subject)
            .bind(&details)
            .bind(&prev)
            .bind(&hash)
            .execute(pool)
            .await
            .map(|_| ()));
        match result {
            Ok(()) => return Ok(()),
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(DbError::AuditContention)
}

/// Appends a media event to the tenant's audit chain; a failure is logged, not returned (the media
/// operation it records has already happened).
pub async fn record_media_event(
    db: &Database,
    tenant: &str,
    actor: &str,
    kind: &str,
    id: &str,
    details: serde_json::Value,
) {
    let event = AuditEvent { tenant, kind, actor: Some(actor), subject: Some(id), details };
    if let Err(err) = append(db, &event).await {
        tracing::warn!(error = %err, kind, "cannot append a media event to the audit log");
    }
}

/// Number of events of one kind (all chains).
pub async fn count_kind(db: &Database, kind: &str) -> Result<i64, DbError> {
    const COUNT: &str = "SELECT COUNT(*) FROM audit_events WHERE kind = $1";
    Ok(with_pool!(db, |pool| sqlx::query_scalar(COUNT).bind(kind).fetch_one(pool).await)?)
}

/// Walks every chain and reports the first broken link of each.
pub async fn verify(db: &Database) -> Result<VerifyReport, DbError> {
    let tenants: Vec<String> = with_pool!(db, |pool| sqlx::query_scalar(CHAINS).fetch_all(pool).await)?;
    let mut report = VerifyReport { chains: tenants.len(), events: 0, broken: Vec::new() };
    for tenant in tenants {
        let events: Vec<StoredEvent> =
            with_pool!(db, |pool| sqlx::query_as(CHAIN).bind(&tenant).fetch_all(pool).await)?;
        let mut prev = GENESIS.to_vec();
        for (index, (seq, at, kind, actor, subject, details, prev_hash, hash)) in events.into_iter().enumerate() {
            report.events += 1;
            let broken = |reason: &str| BrokenLink { tenant: tenant.clone(), chain_seq: seq, reason: reason.into() };
            let expected =
                event_hash(&prev, &tenant, seq, &at, (&kind, actor.as_deref(), subject.as_deref(), &details));
            let problem = if seq != index as i64 + 1 {
                Some("an event is missing before this one")
            } else if prev_hash != prev {
                Some("prev_hash does not match the previous event")
            } else if hash != expected {
                Some("the event's content does not match its hash")
            } else {
                None
            };
            if let Some(reason) = problem {
                report.broken.push(broken(reason));
                break;
            }
            prev = hash;
        }
    }
    Ok(report)
}
