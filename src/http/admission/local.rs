//! The replica's own limits: `governor` GCRA buckets per principal and per client network (one for
//! requests, one for `/readyz`), and the count of uploads each caller runs in this process.
//!
//! They are the limits when `MEDIA_REDIS_URL` is not set, and the fallback of each check when it is
//! set but Redis does not answer ([`super::shared`]). Idle bucket keys are pruned every minute so the
//! maps stay small.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimit;

/// How often idle limiter keys are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The per-process buckets and upload counts.
pub(super) struct LocalLimits {
    principals: Option<DefaultKeyedRateLimiter<String>>,
    ips: Option<DefaultKeyedRateLimiter<IpAddr>>,
    readyz: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_caller: Arc<Mutex<HashMap<String, u32>>>,
}

impl LocalLimits {
    /// Buckets for the three rates (a rate of 0 turns its bucket off); prunes idle keys in the
    /// background when a runtime is there.
    pub(super) fn new(principal_rate: RateLimit, ip_rate: RateLimit, readyz_rate: RateLimit) -> Arc<Self> {
        let limits = Arc::new(Self {
            principals: limiter(principal_rate),
            ips: limiter(ip_rate),
            readyz: limiter(readyz_rate),
            per_caller: Arc::new(Mutex::new(HashMap::new())),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(prune(Arc::downgrade(&limits)));
        }
        limits
    }

    /// Takes a token from a principal's bucket; `Err` carries the wait until the next token.
    pub(super) fn check_principal(&self, key: &str) -> Result<(), Duration> {
        match &self.principals {
            Some(limiter) => check(limiter, &key.to_owned()),
            None => Ok(()),
        }
    }

    /// Takes a token from a client network's bucket; `Err` carries the wait until the next token.
    pub(super) fn check_ip(&self, network: IpAddr) -> Result<(), Duration> {
        match &self.ips {
            Some(limiter) => check(limiter, &network),
            None => Ok(()),
        }
    }

    /// Takes a token from a client network's `/readyz` bucket; `Err` carries the wait.
    pub(super) fn check_readyz(&self, network: IpAddr) -> Result<(), Duration> {
        match &self.readyz {
            Some(limiter) => check(limiter, &network),
            None => Ok(()),
        }
    }

    /// Counts one more running upload of `caller` weighing `weight`, or `None` when the weights of
    /// its running uploads would pass `limit`.
    pub(super) fn start_upload(&self, caller: &str, weight: u32, limit: u32) -> Option<CallerCount> {
        let mut running = self.per_caller.lock().unwrap_or_else(PoisonError::into_inner);
        let count = running.entry(caller.to_owned()).or_default();
        if count.saturating_add(weight) > limit {
            if *count == 0 {
                running.remove(caller);
            }
            return None;
        }
        *count += weight;
        Some(CallerCount { running: self.per_caller.clone(), caller: caller.to_owned(), weight })
    }
}

/// One running upload of a caller in this process; counted down when dropped.
pub(super) struct CallerCount {
    running: Arc<Mutex<HashMap<String, u32>>>,
    caller: String,
    weight: u32,
}

impl Drop for CallerCount {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.caller) {
            *count = count.saturating_sub(self.weight);
            if *count == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

fn limiter<K: Clone + std::hash::Hash + Eq>(rate: RateLimit) -> Option<DefaultKeyedRateLimiter<K>> {
    let rps = NonZeroU32::new(rate.rps)?;
    let burst = NonZeroU32::new(rate.burst)?;
    Some(DefaultKeyedRateLimiter::keyed(Quota::per_second(rps).allow_burst(burst)))
}

fn check<K: Clone + std::hash::Hash + Eq>(limiter: &DefaultKeyedRateLimiter<K>, key: &K) -> Result<(), Duration> {
    limiter.check_key(key).map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
}

async fn prune(limits: Weak<LocalLimits>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Some(limits) = limits.upgrade() else { return };
        if let Some(limiter) = &limits.principals {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        for limiter in [&limits.ips, &limits.readyz].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_callers_running_uploads_count_by_weight_and_free_it_when_dropped() {
        let off = RateLimit { rps: 0, burst: 0 };
        let limits = LocalLimits::new(off, off, off);
        let heavy = limits.start_upload("alice", 5, 8).expect("5 of 8");
        assert!(limits.start_upload("alice", 5, 8).is_none(), "5 + 5 passes the cap of 8");
        let light = [limits.start_upload("alice", 1, 8), limits.start_upload("alice", 1, 8)];
        assert!(light.iter().all(Option::is_some), "5 + 1 + 1 fits");
        let bob = limits.start_upload("bob", 8, 8);
        assert!(bob.is_some(), "callers are counted apart");
        drop(heavy);
        let again = limits.start_upload("alice", 5, 8);
        assert!(again.is_some(), "the heavy upload's weight came back");
        assert!(limits.start_upload("alice", 2, 8).is_none(), "1 + 1 + 5 + 2 passes the cap again");
    }
}
