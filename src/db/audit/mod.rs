//! The append-only audit log: one chain per tenant (`""` is the system chain), keyed, pseudonymous.
//!
//! - **Keyed chain.** Each event stores `prev_hash` (the previous event's MAC in its chain, 32 zero
//!   bytes for the first) and `hash = HMAC(audit key, prev ‖ tenant ‖ chain_seq ‖ time ‖ kind ‖
//!   actor ‖ subject ‖ details ‖ format)` ([`crate::crypto::audit_mac`]). The audit key is the
//!   system's index key: 32 random bytes wrapped under the primary KEK in `tenant_keys` (tenant
//!   `""`), rewrapped by `rotate-keys` like every tenant key. Database access alone cannot recompute
//!   a link, so an edit or a forged event is found by [`AuditLog::verify`]; a cut tail is found
//!   against a checkpoint kept elsewhere ([`AuditLog::checkpoint`]).
//! - **Pseudonyms.** Callers and media IDs are stored as `caller:…`/`media:…` pseudonyms under the
//!   tenant's index key, client addresses as `address:…` under the system key: a dump names no one,
//!   and a shredded tenant's events (its keys destroyed) link to no one. `system`/`admin` stay as
//!   they are.
//! - **No lost append.** Appends to one chain are serialized (Postgres: a transaction-scoped
//!   advisory lock per chain; SQLite, one process: a mutex), so concurrent writers each get the next
//!   position instead of racing for it.
//!
//! Triggers refuse UPDATE and DELETE (and TRUNCATE on Postgres). Events from before the keyed format
//! are resealed once by [`AuditLog::seal_legacy`] (see `legacy.rs`).

pub(crate) mod chain;
mod legacy;
mod verify;

use std::sync::Arc;

use chain::Record;
pub(crate) use chain::{Link, GENESIS, KEYED, SQLITE_APPENDS};
pub use legacy::{SealReport, KEYED_MIGRATION};
pub use verify::{BrokenLink, ChainHead, Checkpoint, VerifyReport, CHECKPOINT_FORMAT};

use super::tenant_keys::TenantKeys;
use super::{Database, DbError};
use crate::crypto::audit_mac::{self, PseudonymKind};
use crate::crypto::envelope::{DataKey, KeyPurpose};
use crate::with_pool;

/// Tenant id of the system chain (events not about one tenant); its index key is the audit key.
pub const SYSTEM_CHAIN: &str = "";

/// Who did it.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// Nobody known (a refused request).
    Nobody,
    /// The service itself (expiry, cleanup).
    System,
    /// An operator's admin command.
    Admin,
    /// An authenticated caller (its subject; stored as a pseudonym).
    Caller(&'a str),
}

/// What it was done to.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// Nothing in particular (the tenant as a whole).
    Nothing,
    /// A media ID (stored as a pseudonym).
    Media(&'a str),
    /// A client address (stored as a pseudonym).
    Address(&'a str),
}

/// An event to append.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    /// Tenant chain the event belongs to.
    pub tenant: &'a str,
    /// What happened, e.g. `key.created`, `tenant.shredded`.
    pub kind: &'a str,
    /// Who did it.
    pub actor: Actor<'a>,
    /// What it was done to.
    pub subject: Subject<'a>,
    /// Extra facts: never secrets or names, and nothing a plaintext column repeats (a media row's size
    /// or type beside the event's time would tie a `media:` pseudonym back to its ID).
    pub details: serde_json::Value,
}

/// The audit log over the tenant keys that key and pseudonymize it.
#[derive(Debug, Clone)]
pub struct AuditLog {
    keys: Arc<TenantKeys>,
}

impl AuditLog {
    /// The log in `keys`' database.
    pub fn new(keys: Arc<TenantKeys>) -> Self {
        Self { keys }
    }

    /// The database of the log.
    pub fn db(&self) -> &Database {
        self.keys.db()
    }

    /// The audit key (created on first use only; see [`TenantKeys::audit_key`]).
    async fn chain_key(&self) -> Result<Arc<DataKey>, DbError> {
        self.keys.audit_key().await
    }

    /// The key pseudonyms of `tenant`'s chain are made under: the tenant's index key, or the audit
    /// key for the system chain; `None` once the tenant's keys are destroyed.
    async fn pseudonym_key(&self, tenant: &str) -> Result<Option<Arc<DataKey>>, DbError> {
        if tenant == SYSTEM_CHAIN {
            return self.chain_key().await.map(Some);
        }
        self.keys.existing(tenant, KeyPurpose::Index).await
    }

    /// The pseudonym `value` is stored under in `tenant`'s chain (`None`: the tenant has no keys),
    /// so an operator holding the keys can look a known caller or media ID up.
    pub async fn pseudonym(&self, tenant: &str, kind: PseudonymKind, value: &str) -> Result<Option<String>, DbError> {
        let key = self.pseudonym_key(tenant).await?;
        Ok(key.map(|key| audit_mac::pseudonym(&key, kind, value)))
    }

    /// The actor and subject columns of `event`, pseudonymized.
    async fn stored_names(&self, event: &AuditEvent<'_>) -> Result<(Option<String>, Option<String>), DbError> {
        let needs_key = matches!(event.actor, Actor::Caller(_)) || !matches!(event.subject, Subject::Nothing);
        let key = if needs_key { self.pseudonym_key(event.tenant).await? } else { None };
        let name = |kind: PseudonymKind, value: &str| match &key {
            Some(key) => audit_mac::pseudonym(key, kind, value),
            None => audit_mac::unlinkable(kind),
        };
        let actor = match event.actor {
            Actor::Nobody => None,
            Actor::System => Some("system".to_owned()),
            Actor::Admin => Some("admin".to_owned()),
            Actor::Caller(subject) => Some(name(PseudonymKind::Caller, subject)),
        };
        let subject = match event.subject {
            Subject::Nothing => None,
            Subject::Media(id) => Some(name(PseudonymKind::Media, id)),
            Subject::Address(address) => Some(name(PseudonymKind::Address, address)),
        };
        Ok((actor, subject))
    }

    /// Appends an event at the end of its tenant's chain.
    pub async fn append(&self, event: &AuditEvent<'_>) -> Result<(), DbError> {
        let key = self.chain_key().await?;
        let (actor, subject) = self.stored_names(event).await?;
        let record = Record {
            tenant: event.tenant,
            kind: event.kind,
            actor: actor.as_deref(),
            subject: subject.as_deref(),
            details: &event.details.to_string(),
        };
        chain::append(self.db(), &key, &record).await
    }

    /// Appends an operator's event about a tenant as a whole (rotation, shred).
    pub async fn admin(&self, tenant: &str, kind: &str, details: serde_json::Value) -> Result<(), DbError> {
        self.append(&AuditEvent { tenant, kind, actor: Actor::Admin, subject: Subject::Nothing, details }).await
    }

    /// Appends an event; a failure is logged, not returned (for events recording an operation that
    /// has already happened, such as an upload).
    pub async fn record(&self, event: &AuditEvent<'_>) {
        if let Err(err) = self.append(event).await {
            metrics::counter!(crate::telemetry::metrics::names::AUDIT_APPEND_FAILURES).increment(1);
            tracing::warn!(error = %err, kind = event.kind, "cannot append an event to the audit log");
        }
    }
}

/// Number of events of one kind (all chains).
pub async fn count_kind(db: &Database, kind: &str) -> Result<i64, DbError> {
    const COUNT: &str = "SELECT COUNT(*) FROM audit_events WHERE kind = $1";
    Ok(with_pool!(db, |pool| sqlx::query_scalar(COUNT).bind(kind).fetch_one(pool).await)?)
}
