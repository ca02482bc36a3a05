//! Checking the audit log: [`AuditLog::verify`] walks every chain and reports its first broken link,
//! optionally against a [`Checkpoint`] taken earlier (the heads of every chain, kept elsewhere), which
//! is what finds a cut tail: without one, a chain cut after its last event still links up.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::legacy::legacy_hash;
use super::{AuditLog, Link, GENESIS, KEYED, SYSTEM_CHAIN};
use crate::crypto::envelope::{DataKey, KeyPurpose};
use crate::db::DbError;
use crate::with_pool;

/// Events read per query while walking a chain (memory stays bounded whatever its length).
const PAGE: i64 = 1000;
/// `format` of the checkpoint document.
pub const CHECKPOINT_FORMAT: &str = "media-api-audit-checkpoint/1";

const CHAINS: &str = "SELECT DISTINCT tenant_id FROM audit_events ORDER BY tenant_id";
const PAGE_OF_CHAIN: &str = "SELECT chain_seq, occurred_at, kind, actor, subject, details, prev_hash, hash, format \
     FROM audit_events WHERE tenant_id = $1 AND chain_seq > $2 ORDER BY chain_seq LIMIT $3";
/// A whole chain (a reseal reads it at once).
pub(super) const WHOLE_CHAIN: &str = "SELECT chain_seq, occurred_at, kind, actor, subject, details, prev_hash, hash, \
     format FROM audit_events WHERE tenant_id = $1 ORDER BY chain_seq";
const MAC_AT: &str = "SELECT hash FROM audit_events WHERE tenant_id = $1 AND chain_seq = $2";

/// A stored event: chain_seq, occurred_at, kind, actor, subject, details, prev_hash, hash, format.
pub(super) type StoredEvent =
    (i64, DateTime<Utc>, String, Option<String>, Option<String>, String, Vec<u8>, Vec<u8>, i16);

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
    /// Events still in the unkeyed format of before (checked with plain SHA-256 until resealed).
    pub legacy_events: u64,
    /// Chains compared with a checkpoint (`None`: no checkpoint given).
    pub checkpoint_chains: Option<usize>,
    /// The first broken link of each broken chain.
    pub broken: Vec<BrokenLink>,
}

/// The head of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Tenant chain (`""`: the system chain).
    pub tenant: String,
    /// Position of its last event.
    pub chain_seq: i64,
    /// That event's MAC, in hex.
    pub hash: String,
}

/// The heads of every chain at one moment: printed by `audit checkpoint`, kept out of the database's
/// reach, given back to `audit verify --checkpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// [`CHECKPOINT_FORMAT`].
    pub format: String,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
    /// One head per chain.
    pub chains: Vec<ChainHead>,
}

/// Why one stored event does not hold after `prev` (at position `expected_seq`), if it does not.
/// `key` is the audit key (`None` when the database has none). An event in the unkeyed format of
/// before is accepted only with `accept_legacy` (the reseal, which checks them before carrying them
/// forward): after it, one is a downgrade by someone who could recompute a plain hash.
pub(super) fn check_event(
    tenant: &str,
    event: &StoredEvent,
    expected_seq: i64,
    prev: &[u8],
    key: Option<&DataKey>,
    accept_legacy: bool,
) -> Option<&'static str> {
    let (seq, at, kind, actor, subject, details, prev_hash, hash, format) = event;
    if *seq != expected_seq {
        return Some("an event is missing before this one");
    }
    if prev_hash != prev {
        return Some("prev_hash does not match the previous event");
    }
    let link = Link { tenant, seq: *seq, at, kind, actor: actor.as_deref(), subject: subject.as_deref(), details };
    match *format {
        KEYED => match key {
            None => Some("the audit key is missing from the database: the event cannot be checked"),
            Some(key) if link.mac(key, prev)[..] != hash[..] => {
                Some("the event's content does not match its MAC (edited, or written without the audit key)")
            }
            Some(_) => None,
        },
        _ if !accept_legacy => Some(
            "an event in the unkeyed format of before the audit key: `media-api migrate` reseals those, \
             so one found after it was written or altered without the key",
        ),
        _ if legacy_hash(prev, &link) != *hash => Some("the event's content does not match its hash"),
        _ => None,
    }
}

impl AuditLog {
    /// Reads `tenant`'s events after position `after`, at most [`PAGE`].
    pub(super) async fn page(&self, tenant: &str, after: i64) -> Result<Vec<StoredEvent>, DbError> {
        Ok(with_pool!(self.db(), |pool| sqlx::query_as(PAGE_OF_CHAIN)
            .bind(tenant)
            .bind(after)
            .bind(PAGE)
            .fetch_all(pool)
            .await)?)
    }

    /// Walks every chain and reports the first broken link of each; with `checkpoint`, also every
    /// intact chain whose checkpointed head is gone (a cut tail) or differs.
    pub async fn verify(&self, checkpoint: Option<&Checkpoint>) -> Result<VerifyReport, DbError> {
        let (mut report, heads) = self.walk().await?;
        if let Some(checkpoint) = checkpoint {
            report.checkpoint_chains = Some(checkpoint.chains.len());
            for head in &checkpoint.chains {
                if report.broken.iter().any(|broken| broken.tenant == head.tenant) {
                    continue;
                }
                if let Some(broken) = self.against_checkpoint(head, &heads).await? {
                    report.broken.push(broken);
                }
            }
        }
        Ok(report)
    }

    /// The heads of every chain, from a walk that found every link intact; `Err` with the report
    /// when one is not (a checkpoint must not bless an edit).
    pub async fn checkpoint(&self) -> Result<Result<Checkpoint, VerifyReport>, DbError> {
        let (report, heads) = self.walk().await?;
        if !report.broken.is_empty() {
            return Ok(Err(report));
        }
        let chains = heads
            .into_iter()
            .map(|(tenant, chain_seq, hash)| ChainHead { tenant, chain_seq, hash: hex::encode(hash) })
            .collect();
        Ok(Ok(Checkpoint { format: CHECKPOINT_FORMAT.into(), taken_at: Utc::now(), chains }))
    }

    /// Walks every chain: the report, and each chain's (tenant, last position walked, its MAC).
    async fn walk(&self) -> Result<(VerifyReport, Vec<(String, i64, Vec<u8>)>), DbError> {
        let key = self.keys.existing(SYSTEM_CHAIN, KeyPurpose::Index).await?;
        let tenants: Vec<String> = with_pool!(self.db(), |pool| sqlx::query_scalar(CHAINS).fetch_all(pool).await)?;
        let mut report = VerifyReport {
            chains: tenants.len(),
            events: 0,
            legacy_events: 0,
            checkpoint_chains: None,
            broken: Vec::new(),
        };
        let mut heads = Vec::new();
        for tenant in &tenants {
            let (mut prev, mut last) = (GENESIS.to_vec(), 0i64);
            'chain: loop {
                let page = self.page(tenant, last).await?;
                if page.is_empty() {
                    break;
                }
                for event in &page {
                    report.events += 1;
                    if event.8 != KEYED {
                        report.legacy_events += 1;
                    }
                    if let Some(reason) = check_event(tenant, event, last + 1, &prev, key.as_deref(), false) {
                        report.broken.push(BrokenLink {
                            tenant: tenant.clone(),
                            chain_seq: event.0,
                            reason: reason.into(),
                        });
                        break 'chain;
                    }
                    (prev, last) = (event.7.clone(), event.0);
                }
            }
            heads.push((tenant.clone(), last, prev));
        }
        Ok((report, heads))
    }

    /// Whether `head` (from a checkpoint) is still in its chain, which was walked up to `walked`.
    async fn against_checkpoint(
        &self,
        head: &ChainHead,
        walked: &[(String, i64, Vec<u8>)],
    ) -> Result<Option<BrokenLink>, DbError> {
        let broken =
            |chain_seq: i64, reason: String| Some(BrokenLink { tenant: head.tenant.clone(), chain_seq, reason });
        let Some((_, end, _)) = walked.iter().find(|(tenant, _, _)| *tenant == head.tenant) else {
            return Ok(broken(
                head.chain_seq,
                format!("the chain is gone: the checkpoint saw {} events in it", head.chain_seq),
            ));
        };
        if *end < head.chain_seq {
            return Ok(broken(
                *end,
                format!(
                    "the chain ends at event {end} but the checkpoint saw event {}: its tail was cut",
                    head.chain_seq
                ),
            ));
        }
        let stored: Option<Vec<u8>> = with_pool!(self.db(), |pool| sqlx::query_scalar(MAC_AT)
            .bind(&head.tenant)
            .bind(head.chain_seq)
            .fetch_optional(pool)
            .await)?;
        let matches = stored.is_some_and(|mac| hex::encode(mac) == head.hash);
        Ok(if matches { None } else { broken(head.chain_seq, "the event differs from the checkpoint".into()) })
    }
}
