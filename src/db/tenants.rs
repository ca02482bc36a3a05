//! Tenant state (`tenants`): `active` → `shredding` → `shredded`, and what a row write checks in its
//! own transaction: the tenant is not being shredded, and the DEK version it sealed under is the
//! tenant's current active one. So no process — a replica whose key cache is stale, a CLI — can
//! write a row under a retired or destroyed key, or a row a running shred would miss: it gets
//! [`WriteCheck::StaleKey`] (retry with fresh keys) or [`DbError::TenantShredding`].

use chrono::Utc;

use super::{Database, DbError};
use crate::with_pool;

/// Makes sure the tenant has a state row (run first in every write's transaction).
pub(crate) const ENSURE: &str = "INSERT INTO tenants (tenant_id) VALUES ($1) ON CONFLICT DO NOTHING";
/// Starts a shredded tenant afresh (run by every write before its check; matches nothing unless
/// the tenant is `shredded`).
pub(crate) const REACTIVATE: &str =
    "UPDATE tenants SET state = 'active', updated_at = $2 WHERE tenant_id = $1 AND state = 'shredded'";
const SET_STATE: &str = "INSERT INTO tenants (tenant_id, state, updated_at) VALUES ($1, $2, $3) \
     ON CONFLICT (tenant_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at";
/// The tenant's current DEK version, read after the state row is held.
pub(crate) const CURRENT_DEK: &str = "SELECT MAX(version) FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = 'dek' AND state = 'active'";

/// Whether the DEK version an object was sealed under is still active (run in the transaction of
/// the row that comes to reference the object, after the state check): an upload sealed before a
/// shred that destroyed the key must not leave a row after it, pointing at bytes nothing can open;
/// nor one sealed before its version was retired (retiring waits for the writes in flight and counts
/// their objects, `TenantKeys::retire_unused`), so a retired version never gains an object.
pub(crate) const OBJECT_KEY_LIVE: &str = "SELECT COUNT(*) FROM tenant_keys \
     WHERE tenant_id = $1 AND purpose = 'dek' AND version = $2 AND state = 'active' AND wrapped_key IS NOT NULL";

/// The state of `tenant`, read in a write's transaction; on Postgres the row is held `FOR SHARE`, so
/// a shred's move to `shredding` waits for the write to end. The current DEK version is read by a
/// statement of its own after this one: under READ COMMITTED that statement sees every key change
/// committed before the hold was granted (one statement would read the keys as of its start).
pub(crate) fn guard_sql(db: &Database) -> &'static str {
    match db {
        Database::Postgres(_) => "SELECT state FROM tenants WHERE tenant_id = $1 FOR SHARE",
        Database::Sqlite(_) => "SELECT state FROM tenants WHERE tenant_id = $1",
    }
}

/// What a write's check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteCheck {
    /// Write.
    Allowed,
    /// The tenant is being shredded.
    Shredding,
    /// The version sealed under is not the tenant's current active one (a stale key cache).
    StaleKey,
}

impl WriteCheck {
    /// The verdict for a write sealed under `version`, given the tenant's state and current DEK
    /// version. Only an `active` tenant is written: a `shredded` one (its restart raced a shred
    /// ending) is retried, and the retry starts it afresh.
    pub fn of(state: Option<&str>, current: Option<i32>, version: u32) -> Self {
        match state {
            Some("shredding") => Self::Shredding,
            Some("active") if current == Some(version as i32) => Self::Allowed,
            // Another version is current, the tenant just finished a shred, or (writes create the
            // state row first) nothing is known.
            _ => Self::StaleKey,
        }
    }
}

/// Moves `tenant` to `state` (`shredding`, `shredded`), waiting on Postgres for writes in flight.
pub async fn set_state(db: &Database, tenant: &str, state: &str) -> Result<(), DbError> {
    with_pool!(db, |pool| sqlx::query(SET_STATE)
        .bind(tenant)
        .bind(state)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// The state of `tenant`, if it has one.
pub async fn state(db: &Database, tenant: &str) -> Result<Option<String>, DbError> {
    Ok(with_pool!(db, |pool| sqlx::query_scalar("SELECT state FROM tenants WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_optional(pool)
        .await)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_current_version_of_a_tenant_not_being_shredded_may_seal() {
        assert_eq!(WriteCheck::of(Some("active"), Some(2), 2), WriteCheck::Allowed);
        assert_eq!(WriteCheck::of(Some("active"), Some(2), 1), WriteCheck::StaleKey);
        assert_eq!(WriteCheck::of(Some("active"), None, 1), WriteCheck::StaleKey);
        assert_eq!(WriteCheck::of(Some("shredding"), Some(2), 2), WriteCheck::Shredding);
        assert_eq!(WriteCheck::of(Some("shredded"), Some(2), 2), WriteCheck::StaleKey, "a shred ended: retry afresh");
        assert_eq!(WriteCheck::of(None, Some(1), 1), WriteCheck::StaleKey);
    }
}
