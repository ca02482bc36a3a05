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

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::Principal;
use crate::config::{Config, RateLimit, StorageConfig};
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

    /// Takes a token from the client IP's bucket.
    pub fn check_ip(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.ips, peer) {
            (Some(limiter), Some(ip)) => check(limiter, &ip, "ip"),
            _ => Ok(()),
        }
    }

    /// A slot for a streamed upload, or 503 `busy`.
    pub fn upload_slot(&self) -> Result<UploadSlot, ApiError> {
        self.slots(1)
    }

    /// Slots for an upload held in memory whole (a JSON data URL), or 503 `busy`.
    pub fn buffered_upload_slot(&self) -> Result<UploadSlot, ApiError> {
        self.slots(self.json_upload_weight)
    }

    /// Slots free now (tests, metrics).
    pub fn free_upload_slots(&self) -> usize {
        self.uploads.available_permits()
    }

    fn slots(&self, weight: u32) -> Result<UploadSlot, ApiError> {
        match self.uploads.clone().try_acquire_many_owned(weight.min(self.max_uploads)) {
            Ok(permit) => {
                metrics::gauge!(names::UPLOADS_IN_FLIGHT).increment(1.0);
                Ok(UploadSlot { _permit: permit })
            }
            Err(_) => {
                metrics::counter!(names::UPLOAD_REJECTIONS, "reason" => "busy").increment(1);
                Err(ApiError::Busy)
            }
        }
    }
}

/// Held while an upload runs; frees its slots when dropped.
pub struct UploadSlot {
    _permit: OwnedSemaphorePermit,
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        metrics::gauge!(names::UPLOADS_IN_FLIGHT).decrement(1.0);
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
