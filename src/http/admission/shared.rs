//! Limits shared by every replica through Redis (`MEDIA_REDIS_URL`): the rate-limit buckets and
//! the per-caller count of running uploads live in Redis, so they hold across the fleet rather
//! than per process.
//!
//! - **One round trip per check.** A rate check is one Lua script (`EVALSHA`) running GCRA — the
//!   algorithm of the local `governor` buckets, with the same answers — on the key
//!   `media-api:rl:<kind>:<hash>`, timed by Redis's own clock (replicas' clocks do not matter) and
//!   expiring when the bucket is full again. An upload takes a lease in a sorted set
//!   `media-api:uploads:<hash>` (score: its expiry) with one script: drop expired leases, count,
//!   add if the weights stay within the cap. Keys hash what the caller controls (issuer, subject), so no client
//!   string makes a Redis key longer than about 60 bytes.
//! - **Crash-safe leases.** A finished upload removes its lease (`ZREM`); a replica that dies
//!   leaves leases that expire on their own `MEDIA_UPLOAD_TIMEOUT` + [`LEASE_MARGIN`] after they
//!   were taken, the longest an upload may run.
//! - **Bounded.** Each call waits at most `MEDIA_REDIS_TIMEOUT` (100 ms by default). A call that
//!   fails or times out marks Redis down; then every check uses the replica's own limits
//!   ([`super::local`]) without asking Redis, `/readyz` reports `limits: degraded` (still ready)
//!   and `media_limits_fallback_total` counts the checks. A probe runs the rate script once a
//!   second and marks Redis up again when it answers; each change is logged once.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Script};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use crate::config::{RateLimit, RedisConfig};
use crate::telemetry::metrics::names;

/// How often Redis is probed (whether up or down).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long the first connection may take at start before the replica starts on its own limits.
const FIRST_CONNECT: Duration = Duration::from_secs(2);
/// How long a lease outlives the upload deadline (`MEDIA_UPLOAD_TIMEOUT`): the time an upload may
/// still spend after its body (storing the last part, the database row).
pub(super) const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// GCRA on one key. `ARGV[1]`: microseconds per token (`1e6 / rps`), `ARGV[2]`: the burst.
/// Returns 0 when a token was taken, else the microseconds until the next one. The key holds the
/// theoretical arrival time in microseconds (Redis `TIME`) and expires when the bucket is full.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat + interval - interval * burst
if allow_at > now then return allow_at - now end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000))
return 0
";

/// Takes an upload lease. `ARGV[1]`: the lease id (`<random>:<weight>`), `ARGV[2]`: the cap,
/// `ARGV[3]`: the lease's lifetime in milliseconds, `ARGV[4]`: its weight. The caller's running
/// weight is the sum of its leases' weights (a lease id without one, from an older release,
/// weighs 1). Returns 1 when taken, 0 when the lease would pass the cap.
const ACQUIRE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = 0
for _, lease in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  held = held + (tonumber(string.match(lease, ':(%d+)$')) or 1)
end
if held + tonumber(ARGV[4]) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], string.format('%.0f', now + ttl), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
";

/// The Redis connection, the two scripts and whether Redis answers.
pub(super) struct SharedLimits {
    connection: ConnectionManager,
    timeout: Duration,
    lease_ttl: Duration,
    up: AtomicBool,
    url_for_logs: String,
    probe_key: String,
    gcra: Script,
    acquire: Script,
}

impl SharedLimits {
    /// Connects (waiting at most a couple of seconds; a Redis that is down leaves the replica on
    /// its own limits until the probe reaches it) and starts the probe. Fails only on a URL the
    /// client refuses.
    pub(super) async fn connect(config: &RedisConfig, upload_timeout: Duration) -> RedisResult<Arc<Self>> {
        if config.url.expose_secret().starts_with("rediss:") {
            // redis-rs builds its TLS client from the process default provider; the service's own
            // TLS code names its provider, so this only picks one for Redis (ring, as elsewhere).
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = redis::Client::open(config.url.expose_secret())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None);
        let shared = Arc::new(Self {
            connection: ConnectionManager::new_lazy_with_config(client, manager_config)?,
            timeout: config.timeout,
            lease_ttl: upload_timeout + LEASE_MARGIN,
            up: AtomicBool::new(true),
            url_for_logs: config.url_for_logs(),
            probe_key: rate_key("probe", &rand::random::<u64>().to_string()),
            gcra: Script::new(GCRA),
            acquire: Script::new(ACQUIRE),
        });
        match shared.run_probe(FIRST_CONNECT).await {
            Ok(()) => {
                metrics::gauge!(names::LIMITS_SHARED).set(1.0);
                tracing::info!(redis = %shared.url_for_logs, "limits are shared by every replica through Redis");
            }
            Err(err) => shared.mark_down(&err),
        }
        tokio::spawn(probe(Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// Whether Redis answered the last call (checks go to Redis only then).
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Takes a token from the shared bucket `kind`/`key`: `Ok(Err(wait))` when it is empty.
    pub(super) async fn check_rate(&self, kind: &str, key: &str, rate: RateLimit) -> RedisResult<Result<(), Duration>> {
        let interval = 1_000_000u64.div_ceil(u64::from(rate.rps.max(1)));
        let mut connection = self.connection.clone();
        let mut invocation = self.gcra.key(rate_key(kind, key));
        invocation.arg(interval).arg(rate.burst);
        let call = invocation.invoke_async::<u64>(&mut connection);
        let wait = self.bounded(call).await?;
        Ok(if wait == 0 { Ok(()) } else { Err(Duration::from_micros(wait)) })
    }

    /// A lease of `weight` for one more upload of `caller`, or `None` when the weights of its
    /// uploads running across the replicas would pass `limit`.
    pub(super) async fn start_upload(&self, caller: &str, weight: u32, limit: u32) -> RedisResult<Option<Lease>> {
        let key = format!("media-api:uploads:{}", digest(caller));
        let id = format!("{:032x}:{weight}", rand::random::<u128>());
        let ttl_ms = u64::try_from(self.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut connection = self.connection.clone();
        let mut invocation = self.acquire.key(&key);
        invocation.arg(&id).arg(limit).arg(ttl_ms).arg(weight);
        let call = invocation.invoke_async::<u8>(&mut connection);
        if self.bounded(call).await? != 1 {
            return Ok(None);
        }
        Ok(Some(Lease { connection: self.connection.clone(), key, id, timeout: self.timeout }))
    }

    /// `call` within the timeout; a failure marks Redis down.
    async fn bounded<T>(&self, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        let result = tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err(timed_out(self.timeout)));
        if let Err(err) = &result {
            self.mark_down(err);
        }
        result
    }

    /// One rate check on this replica's own probe key: the same script and round trip as traffic,
    /// so Redis is marked up only when checks would pass.
    async fn run_probe(&self, within: Duration) -> RedisResult<()> {
        let mut connection = self.connection.clone();
        let mut invocation = self.gcra.key(&self.probe_key);
        invocation.arg(1).arg(1);
        let call = invocation.invoke_async::<u64>(&mut connection);
        tokio::time::timeout(within, call).await.unwrap_or_else(|_| Err(timed_out(within))).map(drop)
    }

    fn mark_down(&self, err: &RedisError) {
        if self.up.swap(false, Ordering::AcqRel) {
            metrics::gauge!(names::LIMITS_SHARED).set(0.0);
            tracing::warn!(redis = %self.url_for_logs, error = %err,
                "Redis does not answer: this replica falls back to its own rate limits and upload caps");
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            metrics::gauge!(names::LIMITS_SHARED).set(1.0);
            tracing::info!(redis = %self.url_for_logs, "Redis answers again: limits are shared by every replica");
        }
    }
}

/// Probes Redis every [`PROBE_EVERY`] while the limits live.
async fn probe(shared: Weak<SharedLimits>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(shared) = shared.upgrade() else { return };
        match shared.run_probe(shared.timeout).await {
            Ok(()) => shared.mark_up(),
            Err(err) => shared.mark_down(&err),
        }
    }
}

/// One running upload's place in the shared count; removed when dropped (or expired with a
/// replica that died).
pub(super) struct Lease {
    connection: ConnectionManager,
    key: String,
    id: String,
    timeout: Duration,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut connection = self.connection.clone();
        let (key, id, timeout) = (std::mem::take(&mut self.key), std::mem::take(&mut self.id), self.timeout);
        runtime.spawn(async move {
            let mut command = redis::cmd("ZREM");
            command.arg(&key).arg(&id);
            let release = command.query_async::<u8>(&mut connection);
            if !matches!(tokio::time::timeout(timeout, release).await, Ok(Ok(_))) {
                tracing::debug!("an upload lease was not released in Redis; it expires on its own");
            }
        });
    }
}

/// `media-api:rl:<kind>:<hash of key>`.
fn rate_key(kind: &str, key: &str) -> String {
    format!("media-api:rl:{kind}:{}", digest(key))
}

/// 128 bits of SHA-256, hex: a fixed-size name for a caller-controlled string.
fn digest(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

fn timed_out(after: Duration) -> RedisError {
    let why = format!("Redis did not answer within {} ms", after.as_millis());
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_fixed_size_whatever_the_caller_sends() {
        let long = "x".repeat(100_000);
        assert_eq!(rate_key("principal", &long).len(), rate_key("principal", "a").len());
        assert_ne!(rate_key("principal", "a"), rate_key("principal", "b"));
        assert_ne!(rate_key("principal", "a"), rate_key("ip", "a"));
        assert!(rate_key("ip", "192.0.2.1").starts_with("media-api:rl:ip:"));
    }
}
