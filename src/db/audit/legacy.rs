//! Events from before the keyed format (`format` 1): a plain SHA-256 chain with callers, media IDs
//! and client addresses in the clear. [`AuditLog::after_migration`] carries them forward once: in the
//! very run of `media-api migrate` (or of a server migrating on start) that applied the migration
//! adding the format ([`KEYED_MIGRATION`]), so an upgraded database holds no subject in the clear
//! either. Never again: anyone can compute a plain SHA-256 link, so a reseal at any later start would
//! re-sign whatever someone with database access rewrote in the old format. A keyed
//! `audit.resealed` event in the system chain records each reseal; `audit reseal-legacy` (for a first
//! migrate run cut short before it resealed) refuses once one exists.
//!
//! Per chain with legacy events: walk it, checking every link as it stands (a chain that does not
//! hold is left as it is and reported: resealing would launder the edit); pseudonymize the legacy
//! events' actors and subjects (under the tenant's index key; a shredded tenant's become
//! `…:unlinkable`); rechain every event of the chain with the audit key. It runs in one transaction
//! with the append-only trigger lifted for that transaction only. On Postgres the `ALTER TABLE …
//! DISABLE TRIGGER` that lifts it (`SHARE ROW EXCLUSIVE`) waits for appends in flight and holds new
//! ones back until the commit (appenders take `ROW EXCLUSIVE` before they read a chain's head), so
//! no append links to a rewritten head.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::verify::{check_event, StoredEvent};
use super::{AuditLog, Link, GENESIS, KEYED, SYSTEM_CHAIN};
use crate::crypto::audit_mac::{self, PseudonymKind};
use crate::crypto::envelope::{DataKey, KeyPurpose};
use crate::db::{Database, DbError, MigrationReport};
use crate::with_pool;

/// The migration that added `audit_events.format`.
pub const KEYED_MIGRATION: i64 = 20261126000003;
/// The kind of the event recording a reseal.
const RESEALED: &str = "audit.resealed";
const RESEALED_BEFORE: &str = "SELECT COUNT(*) FROM audit_events WHERE kind = 'audit.resealed' AND format = 2";
const LEGACY_CHAINS: &str = "SELECT DISTINCT tenant_id FROM audit_events WHERE format = 1 ORDER BY tenant_id";
const RESEAL: &str = "UPDATE audit_events SET actor = $3, subject = $4, prev_hash = $5, hash = $6, format = $7 \
     WHERE tenant_id = $1 AND chain_seq = $2";
const LIFT_PG: &str = "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update";
const RESTORE_PG: &str = "ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update";
const LIFT_SQLITE: &str = "DROP TRIGGER audit_events_no_update";
/// The trigger of the SQLite migration `20261122000001_initial.sql`, put back as it was.
const RESTORE_SQLITE: &str = "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events \
     BEGIN SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused'); END";

/// What a reseal did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SealReport {
    /// Chains rechained with the audit key.
    pub chains: usize,
    /// Legacy events pseudonymized and resealed.
    pub events: u64,
    /// Chains left as they were because a link did not hold (`audit verify` names the link).
    pub broken_chains: Vec<String>,
}

/// The unkeyed hash of a legacy link: `SHA-256(prev ‖ tenant ‖ seq ‖ time ‖ kind ‖ actor ‖ subject
/// ‖ details)`, every field length-prefixed, a missing one as `"\0"`.
pub(super) fn legacy_hash(prev: &[u8], link: &Link<'_>) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    let at = link.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let seq = link.seq.to_string();
    let parts = [
        link.tenant,
        seq.as_str(),
        at.as_str(),
        link.kind,
        link.actor.unwrap_or("\u{0}"),
        link.subject.unwrap_or("\u{0}"),
        link.details,
    ];
    for part in parts {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_vec()
}

/// The pseudonymous actor and subject of a legacy event of `tenant`'s chain.
fn pseudonymize(tenant: &str, event: &StoredEvent, key: Option<&DataKey>) -> (Option<String>, Option<String>) {
    let name = |kind: PseudonymKind, value: &str| match key {
        Some(key) => audit_mac::pseudonym(key, kind, value),
        None => audit_mac::unlinkable(kind),
    };
    let actor = match event.3.as_deref() {
        None => None,
        Some(fixed @ ("system" | "admin")) => Some(fixed.to_owned()),
        Some(caller) => Some(name(PseudonymKind::Caller, caller)),
    };
    let subject = match event.4.as_deref() {
        None => None,
        // The system chain's only subjects were the addresses of refused requests.
        Some(address) if tenant == SYSTEM_CHAIN => Some(name(PseudonymKind::Address, address)),
        Some(id) if event.2.starts_with("media.") => Some(name(PseudonymKind::Media, id)),
        Some(other) => Some(other.to_owned()),
    };
    (actor, subject)
}

impl AuditLog {
    /// Reseals the legacy events if `migration` is the run that added the keyed format.
    pub async fn after_migration(&self, migration: &MigrationReport) -> Result<SealReport, DbError> {
        if migration.applied_now.contains(&KEYED_MIGRATION) {
            self.seal_legacy().await
        } else {
            Ok(SealReport::default())
        }
    }

    /// Reseals by hand (a first migrate run cut short): refused once a reseal was recorded.
    pub async fn reseal_by_hand(&self) -> Result<Option<SealReport>, DbError> {
        let before: i64 = with_pool!(self.db(), |pool| sqlx::query_scalar(RESEALED_BEFORE).fetch_one(pool).await)?;
        if before > 0 {
            return Ok(None);
        }
        self.seal_legacy().await.map(Some)
    }

    /// Reseals every chain that still holds legacy events; a no-op (one indexed query) otherwise.
    async fn seal_legacy(&self) -> Result<SealReport, DbError> {
        let mut report = SealReport::default();
        let pending: Vec<String> =
            with_pool!(self.db(), |pool| sqlx::query_scalar(LEGACY_CHAINS).fetch_all(pool).await)?;
        if pending.is_empty() {
            return Ok(report);
        }
        let chain_key = self.chain_key().await?;
        // Keys are read before the transaction (which holds the table, and on SQLite the file).
        let mut names_keys = Vec::with_capacity(pending.len());
        for tenant in &pending {
            names_keys.push(match tenant.as_str() {
                SYSTEM_CHAIN => Some(chain_key.clone()),
                _ => self.keys.existing(tenant, KeyPurpose::Index).await?,
            });
        }
        let postgres = matches!(self.db(), Database::Postgres(_));
        let turn = if postgres { None } else { Some(super::SQLITE_APPENDS.lock().await) };
        with_pool!(self.db(), |pool| {
            let mut tx = pool.begin().await?;
            sqlx::query(if postgres { LIFT_PG } else { LIFT_SQLITE }).execute(&mut *tx).await?;
            for (tenant, names_key) in pending.iter().zip(&names_keys) {
                let events: Vec<StoredEvent> =
                    sqlx::query_as(super::verify::WHOLE_CHAIN).bind(tenant).fetch_all(&mut *tx).await?;
                let (mut old_prev, mut seq) = (GENESIS.to_vec(), 0i64);
                if events.iter().any(|event| {
                    seq += 1;
                    let problem = check_event(tenant, event, seq, &old_prev, Some(&chain_key), true);
                    old_prev = event.7.clone();
                    problem.is_some()
                }) {
                    tracing::warn!(tenant, "audit chain does not hold: left unsealed (see `media-api audit verify`)");
                    report.broken_chains.push(tenant.clone());
                    continue;
                }
                let mut prev = GENESIS.to_vec();
                for event in &events {
                    let (actor, subject) = if event.8 == KEYED {
                        (event.3.clone(), event.4.clone())
                    } else {
                        report.events += 1;
                        pseudonymize(tenant, event, names_key.as_deref())
                    };
                    let link = Link {
                        tenant,
                        seq: event.0,
                        at: &event.1,
                        kind: &event.2,
                        actor: actor.as_deref(),
                        subject: subject.as_deref(),
                        details: &event.5,
                    };
                    let mac = link.mac(&chain_key, &prev);
                    sqlx::query(RESEAL)
                        .bind(tenant)
                        .bind(event.0)
                        .bind(link.actor)
                        .bind(link.subject)
                        .bind(&prev)
                        .bind(&mac[..])
                        .bind(KEYED)
                        .execute(&mut *tx)
                        .await?;
                    prev = mac.to_vec();
                }
                report.chains += 1;
            }
            sqlx::query(if postgres { RESTORE_PG } else { RESTORE_SQLITE }).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        drop(turn);
        if report.chains > 0 || !report.broken_chains.is_empty() {
            let details = serde_json::json!({ "chains": report.chains, "events": report.events,
                "broken_chains": report.broken_chains });
            self.admin(SYSTEM_CHAIN, RESEALED, details).await?;
            tracing::info!(
                chains = report.chains,
                events = report.events,
                broken = report.broken_chains.len(),
                "resealed the audit events of before the keyed format"
            );
        }
        Ok(report)
    }
}
