//! Admission control: per-principal and per-IP token buckets (429 `rate_limited` with
//! `Retry-After`), a per-IP bucket of its own for `/readyz` (its answers are cheap, shared and at
//! most 1 s old, but it stays unauthenticated), the per-caller upload cap (429
//! `too_many_uploads`), the upload concurrency cap (503 `busy`), request deadlines (503 `timeout`),
//! upload body deadlines ([`body`]: 408 `upload_timeout` for a body not whole within
//! `MEDIA_UPLOAD_TIMEOUT`, with a gap longer than `MEDIA_UPLOAD_IDLE_TIMEOUT`, or slower than
//! `MEDIA_UPLOAD_MIN_RATE`).
//!
//! The per-caller cap counts slots, not requests: a JSON upload counts the slots it holds (at most
//! the whole cap), so one caller never holds more than `MEDIA_MAX_UPLOADS_PER_CALLER` slots of the
//! process, and a caller that stalls or trickles is cut off (idle timeout, minimum rate); the
//! other slots stay free for everyone else.
//!
//! The buckets are keyed by `issuer\0subject` (authenticated callers, in the auth extractor) or by
//! the TCP peer's network (unauthenticated routes, and callers whose token was refused, so a flood
//! of bad tokens is throttled too). `/healthz` and `/metrics` are never limited; `/readyz` only by
//! its own bucket (`MEDIA_RATE_LIMIT_READYZ_*`, always this process's: it guards this process).
//!
//! Where the buckets and the per-caller counts live: in this process ([`local`]), or, with
//! `MEDIA_REDIS_URL`, in Redis, shared by every replica ([`shared`]); while Redis does not answer,
//! each check falls back to the process's own and `media_limits_fallback_total` counts it.
//!
//! The concurrency cap always belongs to the process (it bounds its memory): a streamed upload
//! takes one slot (it holds at most `MEDIA_S3_UPLOAD_CONCURRENCY` part buffers), a JSON data-URL
//! upload — held in memory whole — takes as many slots as its worst case is worth, so resident
//! memory stays near `MEDIA_MAX_CONCURRENT_UPLOADS × MEDIA_S3_UPLOAD_CONCURRENCY × part size` (plus
//! the store's idle part buffers) whatever the mix.

mod body;
mod budget;
mod local;
mod shared;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::MatchedPath;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::body::{body_with_deadline, BodyTimeouts};
pub use self::budget::{Charge, MemoryBudget};
use self::local::{CallerCount, LocalLimits};
use self::shared::{Lease, SharedLimits};
use super::error::ApiError;
use super::observe::RequestSlot;
use crate::auth::Principal;
use crate::config::{Config, RateLimit, StorageConfig};
pub use crate::domain::network::client_network;
use crate::http::state::AppState;
use crate::telemetry::metrics::names;

/// The limiters and the upload cap; shared by every request.
pub struct Limits {
    local: Arc<LocalLimits>,
    shared: Option<Arc<SharedLimits>>,
    principal_rate: RateLimit,
    ip_rate: RateLimit,
    uploads: Arc<Semaphore>,
    max_uploads: u32,
    json_upload_weight: u32,
    max_per_caller: u32,
    /// What resolve calls may hold at once (`MEDIA_RESOLVE_BUDGET`).
    pub resolve_budget: MemoryBudget,
}

/// Where the limits live, for readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitsState {
    /// In this process only (no `MEDIA_REDIS_URL`).
    Local,
    /// In Redis, shared by every replica.
    Shared,
    /// `MEDIA_REDIS_URL` is set but Redis does not answer: this process's own limits meanwhile.
    Degraded,
}

impl Limits {
    /// Limits from the configuration (`MEDIA_RATE_LIMIT_*`, `MEDIA_MAX_CONCURRENT_UPLOADS`,
    /// `MEDIA_MAX_UPLOADS_PER_CALLER`, `MEDIA_REDIS_URL`). A Redis that is down does not stop the
    /// start: the process uses its own limits until Redis answers. A Redis URL the client refuses
    /// is reported as an error.
    pub async fn new(config: &Config) -> Result<Arc<Self>, redis::RedisError> {
        let max_uploads = config.ops.max_concurrent_uploads;
        let part_size = match &config.storage {
            StorageConfig::S3(s3) => s3.part_size,
            StorageConfig::Filesystem(_) => crate::config::S3_MIN_PART_SIZE,
        };
        // A data URL body is 4/3 of the file, the parsed string another 4/3, the decoded copy 1:
        // about 4 × the file at the peak.
        let json_bytes = config.max_bytes.saturating_mul(4);
        let weight = json_bytes.div_ceil(2 * part_size).clamp(1, u64::from(max_uploads));
        let shared = match &config.ops.redis {
            Some(redis) => Some(SharedLimits::connect(redis, config.ops.upload_timeout).await?),
            None => None,
        };
        Ok(Arc::new(Self {
            local: LocalLimits::new(config.ops.principal_rate, config.ops.ip_rate, config.ops.readyz_rate),
            shared,
            principal_rate: config.ops.principal_rate,
            ip_rate: config.ops.ip_rate,
            uploads: Arc::new(Semaphore::new(max_uploads as usize)),
            max_uploads,
            json_upload_weight: weight as u32,
            max_per_caller: config.ops.max_uploads_per_caller,
            resolve_budget: MemoryBudget::new(config.resolve_budget),
        }))
    }

    /// Where the limits live right now.
    pub fn state(&self) -> LimitsState {
        match &self.shared {
            None => LimitsState::Local,
            Some(shared) if shared.is_up() => LimitsState::Shared,
            Some(_) => LimitsState::Degraded,
        }
    }

    /// Takes a token from the caller's bucket (by IP for anonymous callers).
    pub async fn check_principal(&self, principal: &Principal, peer: Option<IpAddr>) -> Result<(), ApiError> {
        if principal.anonymous {
            return self.check_ip(peer).await;
        }
        if !self.principal_rate.enabled() {
            return Ok(());
        }
        let key = format!("{}\0{}", principal.issuer.as_deref().unwrap_or_default(), principal.subject);
        let shared = self.rate_in_redis("principal", &key, self.principal_rate).await;
        let result = shared.unwrap_or_else(|| self.local.check_principal(&key));
        limited(result, "principal")
    }

    /// Takes a token from the client IP's bucket (IPv6 clients by their /64).
    pub async fn check_ip(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = peer.filter(|_| self.ip_rate.enabled()) else { return Ok(()) };
        let network = client_network(ip);
        let shared = self.rate_in_redis("ip", &network.to_string(), self.ip_rate).await;
        let result = shared.unwrap_or_else(|| self.local.check_ip(network));
        limited(result, "ip")
    }

    /// Takes a token from the client network's `/readyz` bucket (this process's own).
    pub fn check_readyz(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = peer else { return Ok(()) };
        limited(self.local.check_readyz(client_network(ip)), "readyz")
    }

    /// The shared bucket's answer, or `None` when the process must answer (no Redis, or Redis
    /// does not answer: counted as a fallback).
    async fn rate_in_redis(&self, kind: &str, key: &str, rate: RateLimit) -> Option<Result<(), Duration>> {
        let shared = self.shared.as_ref()?;
        if shared.is_up() {
            if let Ok(answer) = shared.check_rate(kind, key, rate).await {
                return Some(answer);
            }
        }
        metrics::counter!(names::LIMITS_FALLBACK, "check" => "rate").increment(1);
        None
    }

    /// A slot for a streamed upload by `caller` (a principal's owner key, or `ip:<network>` for a
    /// signed link): 429 `too_many_uploads` past `MEDIA_MAX_UPLOADS_PER_CALLER` (across replicas
    /// with Redis), 503 `busy` when every slot of this process is taken.
    pub async fn upload_slot(&self, caller: &str) -> Result<UploadSlot, ApiError> {
        self.slots(caller, 1).await
    }

    /// Slots for an upload held in memory whole (a JSON data URL).
    pub async fn buffered_upload_slot(&self, caller: &str) -> Result<UploadSlot, ApiError> {
        self.slots(caller, self.json_upload_weight).await
    }

    /// Slots free now (tests, metrics).
    pub fn free_upload_slots(&self) -> usize {
        self.uploads.available_permits()
    }

    async fn slots(&self, caller: &str, weight: u32) -> Result<UploadSlot, ApiError> {
        // What the caller's uploads hold counts against its cap; an upload heavier than the whole
        // cap counts as the whole cap (it runs alone), so it is never refused for good.
        let Some(caller) = self.start_upload(caller, weight.min(self.max_per_caller)).await else {
            metrics::counter!(names::UPLOAD_REJECTIONS, "reason" => "too_many_uploads").increment(1);
            return Err(ApiError::TooManyUploads { limit: self.max_per_caller });
        };
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

    /// Counts one more upload of `caller` weighing `weight` (in Redis when it answers), or `None`
    /// past the cap.
    async fn start_upload(&self, caller: &str, weight: u32) -> Option<CallerHold> {
        if let Some(shared) = &self.shared {
            if shared.is_up() {
                if let Ok(lease) = shared.start_upload(caller, weight, self.max_per_caller).await {
                    return lease.map(CallerHold::Shared);
                }
            }
            metrics::counter!(names::LIMITS_FALLBACK, "check" => "uploads").increment(1);
        }
        self.local.start_upload(caller, weight, self.max_per_caller).map(CallerHold::Local)
    }
}

/// A caller's running upload, counted in this process or leased in Redis; released when dropped.
enum CallerHold {
    Local(#[allow(dead_code)] CallerCount),
    Shared(#[allow(dead_code)] Lease),
}

/// Held while an upload runs; frees its slots (and the caller's count) when dropped.
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
    _caller: CallerHold,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        metrics::gauge!(names::UPLOADS_IN_FLIGHT).decrement(1.0);
    }
}

/// `result` as the 429 answer (`Retry-After` in whole seconds, at least 1), counted by `scope`.
fn limited(result: Result<(), Duration>, scope: &'static str) -> Result<(), ApiError> {
    result.map_err(|wait| {
        metrics::counter!(names::RATE_LIMITED, "scope" => scope).increment(1);
        ApiError::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 }
    })
}

/// The TCP peer's address, when the server recorded it.
pub fn peer_ip(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Middleware for unauthenticated routes: the client IP's bucket.
pub async fn limit_by_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.limits.check_ip(peer_ip(request.extensions())).await {
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

/// Routes that move a whole upload: no request deadline (their bodies carry `MEDIA_UPLOAD_TIMEOUT`
/// instead; completion streams the staged object back, bounded by the blob store's timeouts).
const UPLOAD_ROUTES: [(&str, &str); 4] = [
    ("POST", "/v1/media"),
    ("POST", "/v1/media/upload"),
    ("POST", "/v1/media/{id}/complete"),
    ("PUT", "/v1/blobs/{*key}"),
];

/// Routes without a caller to limit by principal, limited by client IP instead (unmatched paths
/// included, so scanners are throttled). Health probes and `/metrics` are not (`/readyz` has its
/// own bucket).
fn is_ip_limited(route: Option<&str>) -> bool {
    !matches!(route, Some("/healthz" | "/readyz" | "/metrics")) && route.is_none_or(is_public_route)
}

/// Routes served without a token.
fn is_public_route(route: &str) -> bool {
    matches!(route, "/v1/blobs/{*key}" | "/v1/dev/jwks.json" | "/v1/version" | "/openapi.json")
}

/// Admission for every route: the per-IP bucket where there is no principal, and the request
/// deadline except on upload routes. The first layer after routing, it also tells the access log
/// which route matched ([`RequestSlot`]).
pub async fn admission(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>();
    if let (Some(slot), Some(route)) = (request.extensions().get::<Arc<RequestSlot>>(), route) {
        slot.set_route(route.clone());
    }
    let route = route.map(MatchedPath::as_str);
    // Methods no route serves never reach an extractor: they spend the IP's bucket.
    let unserved_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE | Method::OPTIONS
    );
    if route == Some("/readyz") {
        if let Err(err) = state.limits.check_readyz(peer_ip(request.extensions())) {
            return err.into_response();
        }
    } else if unserved_method || is_ip_limited(route) {
        if let Err(err) = state.limits.check_ip(peer_ip(request.extensions())).await {
            return err.into_response();
        }
    }
    let method = request.method().as_str();
    let is_upload = route.is_some_and(|r| UPLOAD_ROUTES.iter().any(|(m, p)| *m == method && *p == r));
    // The borrows of the request end here; it moves on below.
    if is_upload {
        return next.run(request).await;
    }
    deadline(State(state), request, next).await
}
