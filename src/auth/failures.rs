//! What happens to a refused request in the auth layer: a counter per reason, and an
//! `auth.refused` audit event — at most 10 per source network (an IPv4 address or an IPv6 /64) and 600
//! in all per minute, so a flood of bad tokens cannot fill the
//! audit table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;

use super::AuthError;
use crate::db::audit::{Actor, AuditEvent, AuditLog, Subject, SYSTEM_CHAIN};

/// Audit events allowed per source IP, and in all, per window.
const AUDIT_PER_SOURCE: u32 = 10;
const AUDIT_PER_WINDOW: u32 = 600;
const AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// Refusal counters and the rate-limited audit trail of refusals.
pub(super) struct FailureLog {
    counts: [AtomicU64; AuthError::REASONS.len()],
    limiter: Mutex<AuditLimiter>,
    audit: Option<AuditLog>,
}

struct AuditLimiter {
    window_start: Instant,
    total: u32,
    per_source: HashMap<Option<IpAddr>, u32>,
}

impl AuditLimiter {
    fn allow(&mut self, source: Option<IpAddr>) -> bool {
        if self.window_start.elapsed() >= AUDIT_WINDOW {
            self.window_start = Instant::now();
            self.total = 0;
            self.per_source.clear();
        }
        if self.total >= AUDIT_PER_WINDOW {
            return false;
        }
        let count = self.per_source.entry(source.map(crate::domain::network::client_network)).or_insert(0);
        if *count >= AUDIT_PER_SOURCE {
            return false;
        }
        *count += 1;
        self.total += 1;
        true
    }
}

impl FailureLog {
    pub(super) fn new(audit: Option<AuditLog>) -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            limiter: Mutex::new(AuditLimiter { window_start: Instant::now(), total: 0, per_source: HashMap::new() }),
            audit,
        }
    }

    pub(super) fn record(&self, err: &AuthError, source: Option<IpAddr>) {
        let reason = err.reason();
        if let Some(index) = AuthError::REASONS.iter().position(|r| *r == reason) {
            self.counts[index].fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(reason, status = err.status(), source = ?source, "request refused by the auth layer");
        let Some(audit) = self.audit.clone() else { return };
        if !self.limiter.lock().unwrap_or_else(PoisonError::into_inner).allow(source) {
            return;
        }
        let details = json!({ "reason": reason, "status": err.status() });
        let source = source.map(|ip| ip.to_string());
        tokio::spawn(async move {
            let subject = source.as_deref().map_or(Subject::Nothing, Subject::Address);
            let event =
                AuditEvent { tenant: SYSTEM_CHAIN, kind: "auth.refused", actor: Actor::Nobody, subject, details };
            audit.record(&event).await;
        });
    }

    pub(super) fn counts(&self) -> Vec<(&'static str, u64)> {
        AuthError::REASONS.iter().zip(&self.counts).map(|(r, c)| (*r, c.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_events_are_limited_per_source_and_in_all() {
        let mut limiter = AuditLimiter { window_start: Instant::now(), total: 0, per_source: HashMap::new() };
        let one = Some(IpAddr::from([10, 0, 0, 1]));
        let allowed = (0..50).filter(|_| limiter.allow(one)).count();
        assert_eq!(allowed, AUDIT_PER_SOURCE as usize);
        let many = (0..2000u32).filter(|i| limiter.allow(Some(IpAddr::from(i.to_be_bytes())))).count();
        assert_eq!(many + allowed, AUDIT_PER_WINDOW as usize);
    }

    #[test]
    fn one_ipv6_slash_64_counts_as_one_source() {
        let mut limiter = AuditLimiter { window_start: Instant::now(), total: 0, per_source: HashMap::new() };
        let host = |i: u16| Some(IpAddr::from([0x2001, 0xdb8, 7, 9, i, i, i, i]));
        let allowed = (0..50u16).filter(|i| limiter.allow(host(*i))).count();
        assert_eq!(allowed, AUDIT_PER_SOURCE as usize, "50 addresses of one /64");
        assert!(
            limiter.allow(Some(IpAddr::from([0x2001, 0xdb8, 7, 10, 0, 0, 0, 1]))),
            "the next /64 is another source"
        );
    }
}
