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

    /// Counts one more running upload of `caller`, or `None` when `limit` are running already.
    pub(super) fn start_upload(&self, caller: &str, limit: u32) -> Option<CallerCount> {
        let mut running = self.per_caller.lock().unwrap_or_else(PoisonError::into_inner);
        let count = running.entry(caller.to_owned()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(CallerCount { running: self.per_caller.clone(), caller: caller.to_owned() })
    }
}

/// One running upload of a caller in this process; counted down when dropped.
pub(super) struct CallerCount {
    running: Arc<Mutex<HashMap<String, u32>>>,
    caller: String,
}

impl Drop for CallerCount {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
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
