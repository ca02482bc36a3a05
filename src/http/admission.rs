//! Admission control: per-principal and per-IP token buckets (429 `rate_limited` with
//! `Retry-After`), the upload concurrency cap (503 `busy`), request deadlines (503 `timeout`).
//!
//! The buckets are `governor` GCRA limiters keyed by `issuer\0subject` (authenticated callers, in
//! the auth extractor) or by the TCP peer's IP (unauthenticated routes, and callers whose token
//! was refused, so a flood of bad tokens is throttled too). Health probes and `/metrics` are never
//! limited. Idle keys are pruned every minute so the maps stay small.
//!
//! The upload cap is a semaphore: a streamed upload takes one slot (it holds at most
//! `MEDIA_S3_UPLOAD_CONCURRENCY` part buffers), a JSON data-URL upload — held in memory whole —
//! takes as many slots as its worst case is worth, so resident memory stays near
//! `MEDIA_MAX_CONCURRENT_UPLOADS × 2 × part size` whatever the mix.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::auth::Principal;
use crate::config::{Config, RateLimit, StorageConfig};
use crate::http::state::AppState;
use crate::telemetry::metrics::names;

/// How often idle limiter keys are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The limiters and the upload cap; shared by every request.
pub struct Limits {
    principals: Option<DefaultKeyedRateLimiter<String>>,
    ips: Option<DefaultKeyedRateLimiter<IpAddr>>,
    uploads: Arc<Semaphore>,
    max_uploads: u32,
    json_upload_weight: u32,
    per_caller: Arc<Mutex<HashMap<String, u32>>>,
    max_per_caller: u32,
}

impl Limits {
    /// Limits from the configuration (`MEDIA_RATE_LIMIT_*`, `MEDIA_MAX_CONCURRENT_UPLOADS`).
    pub fn new(config: &Config) -> Arc<Self> {
        let max_uploads = config.ops.max_concurrent_uploads;
        let part_size = match &config.storage {
            StorageConfig::S3(s3) => s3.part_size,
            StorageConfig::Filesystem(_) => crate::config::S3_MIN_PART_SIZE,
        };
        // A data URL body is 4/3 of the file, the parsed string another 4/3, the decoded copy 1:
        // about 4 × the file at the peak.
        let json_bytes = config.max_bytes.saturating_mul(4);
        let weight = json_bytes.div_ceil(2 * part_size).clamp(1, u64::from(max_uploads));
        let limits = Arc::new(Self {
            principals: limiter(config.ops.principal_rate),
            ips: limiter(config.ops.ip_rate),
            uploads: Arc::new(Semaphore::new(max_uploads as usize)),
            max_uploads,
            json_upload_weight: weight as u32,
            per_caller: Arc::new(Mutex::new(HashMap::new())),
            max_per_caller: config.ops.max_uploads_per_caller,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(prune(Arc::downgrade(&limits)));
        }
        limits
    }

    /// Takes a token from the caller's bucket (by IP for anonymous callers).
    pub fn check_principal(&self, principal: &Principal, peer: Option<IpAddr>) -> Result<(), ApiError> {
        if principal.anonymous {
            return self.check_ip(peer);
        }
        let Some(limiter) = &self.principals else { return Ok(()) };
        let key = format!("{}\0{}", principal.issuer.as_deref().unwrap_or_default(), principal.subject);
        check(limiter, &key, "principal")
    }

    /// Takes a token from the client IP's bucket (IPv6 clients by their /64).
    pub fn check_ip(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.ips, peer) {
            (Some(limiter), Some(ip)) => check(limiter, &client_network(ip), "ip"),
            _ => Ok(()),
        }
    }

    /// A slot for a streamed upload by `caller` (a principal's owner key, or `ip:<network>` for a
    /// signed link): 429 `too_many_uploads` past `MEDIA_MAX_UPLOADS_PER_CALLER`, 503 `busy` when
    /// every slot is taken.
    pub fn upload_slot(&self, caller: &str) -> Result<UploadSlot, ApiError> {
        self.slots(caller, 1)
    }

    /// Slots for an upload held in memory whole (a JSON data URL).
    pub fn buffered_upload_slot(&self, caller: &str) -> Result<UploadSlot, ApiError> {
        self.slots(caller, self.json_upload_weight)
    }

    /// Slots free now (tests, metrics).
    pub fn free_upload_slots(&self) -> usize {
        self.uploads.available_permits()
    }

    fn slots(&self, caller: &str, weight: u32) -> Result<UploadSlot, ApiError> {
        {
            let mut running = self.per_caller.lock().unwrap_or_else(PoisonError::into_inner);
            let count = running.entry(caller.to_owned()).or_default();
            if *count >= self.max_per_caller {
                metrics::counter!(names::UPLOAD_REJECTIONS, "reason" => "too_many_uploads").increment(1);
                return Err(ApiError::TooManyUploads { limit: self.max_per_caller });
            }
            *count += 1;
        }
        let caller = CallerCount { running: self.per_caller.clone(), caller: caller.to_owned() };
        match self.uploads.clone().try_acquire_many_owned(weight.min(self.max_uploads)) {
            Ok(permit) => {
                metrics::gauge!(names::UPLOADS_IN_FLIGHT).increment(1.0);
                Ok(UploadSlot { _permit: permit, _caller: caller })
            }
            Err(_) => {
                metrics::counter!(names::UPLOAD_REJECTIONS, "reason" => "busy").increment(1);
                Err(ApiError::Busy)
            }
        }
    }
}

/// One running upload of a caller; counted down when dropped.
struct CallerCount {
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

/// Held while an upload runs; frees its slots (and the caller's count) when dropped.
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    _caller: CallerCount,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        metrics::gauge!(names::UPLOADS_IN_FLIGHT).decrement(1.0);
    }
}

/// The rate-limit key of a client address: IPv4 as is, IPv6 by its /64 (one subscriber's
/// network; a single host can use any address in it), IPv4-mapped IPv6 as the IPv4 address.
pub fn client_network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

fn limiter<K: Clone + std::hash::Hash + Eq>(rate: RateLimit) -> Option<DefaultKeyedRateLimiter<K>> {
    let rps = NonZeroU32::new(rate.rps)?;
    let burst = NonZeroU32::new(rate.burst)?;
    Some(DefaultKeyedRateLimiter::keyed(Quota::per_second(rps).allow_burst(burst)))
}

fn check<K: Clone + std::hash::Hash + Eq>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    scope: &'static str,
) -> Result<(), ApiError> {
    limiter.check_key(key).map_err(|not_until| {
        metrics::counter!(names::RATE_LIMITED, "scope" => scope).increment(1);
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        ApiError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
    })
}

async fn prune(limits: Weak<Limits>) {
    loop {
        tokio::time::sleep(PRUNE_EVERY).await;
        let Some(limits) = limits.upgrade() else { return };
        if let Some(limiter) = &limits.principals {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &limits.ips {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The TCP peer's address, when the server recorded it.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Middleware for unauthenticated routes: the client IP's bucket.
pub async fn limit_by_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.limits.check_ip(peer_ip(request.extensions())) {
        Ok(()) => next.run(request).await,
        Err(err) => err.into_response(),
    }
}

/// Middleware bounding how long a (non-upload) request may take to its response head.
pub async fn deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.ops.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout { seconds: limit.as_secs() }.into_response(),
    }
}

/// `body`, failing with a timeout error once `timeout` has passed since the call: an upload that
/// trickles in is stopped (and cleaned up by the pipeline like any interrupted upload).
pub fn body_with_deadline(body: Body, timeout: Duration) -> Body {
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = futures::stream::unfold(Some(body.into_data_stream()), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(item)) => Some((item.map_err(std::io::Error::other), Some(stream))),
            Ok(None) => None,
            Err(_) => {
                let why = format!("the upload took longer than MEDIA_UPLOAD_TIMEOUT ({} s)", timeout.as_secs());
                Some((Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)), None))
            }
        }
    });
    Body::from_stream(stream)
}

/// Routes that move a whole upload: no request deadline (their bodies carry `MEDIA_UPLOAD_TIMEOUT`
/// instead; completion streams the staged object back, bounded by the blob store's timeouts).
const UPLOAD_ROUTES: [(&str, &str); 4] = [
    ("POST", "/v1/media"),
    ("POST", "/v1/media/upload"),
    ("POST", "/v1/media/{id}/complete"),
    ("PUT", "/v1/blobs/{*key}"),
];

/// Routes without a caller to limit by principal, limited by client IP instead (unmatched paths
/// included, so scanners are throttled). Health probes and `/metrics` are never limited.
fn is_ip_limited(route: Option<&str>) -> bool {
    !matches!(route, Some("/healthz" | "/readyz" | "/metrics")) && route.is_none_or(is_public_route)
}

/// Routes served without a token.
fn is_public_route(route: &str) -> bool {
    matches!(route, "/v1/blobs/{*key}" | "/v1/dev/jwks.json" | "/v1/version" | "/openapi.json")
}

/// Admission for every route: the per-IP bucket where there is no principal, and the request
/// deadline except on upload routes.
pub async fn admission(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    // Methods no route serves never reach an extractor: they spend the IP's bucket.
    let unserved_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::OPTIONS
    );
    if unserved_method || is_ip_limited(route.as_deref()) {
        if let Err(err) = state.limits.check_ip(peer_ip(request.extensions())) {
            return err.into_response();
        }
    }
    let method = request.method().as_str();
    let is_upload = route.as_deref().is_some_and(|r| UPLOAD_ROUTES.iter().any(|(m, p)| *m == method && *p == r));
    if is_upload {
        return next.run(request).await;
    }
    deadline(State(state), request, next).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_share_their_slash_64_and_mapped_addresses_count_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_network(a), client_network(b));
        assert_ne!(client_network(a), client_network(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_network(mapped), "192.0.2.7".parse::<IpAddr>().expect("ip"));
    }
}
