//! One access-log line and the HTTP metrics for every request.
//!
//! [`observe`] runs inside the request-ID layer, around the router: it counts the request body's
//! bytes as the handler reads them, lets admission (the first layer after routing) name the route
//! and the auth extractor the caller through a [`RequestSlot`], and when the response head is ready
//! logs `request_id`, `tenant`, `subject`,
//! `method`, `route` (the template, never the raw path — IDs and signed-link keys stay out of
//! logs and metric labels), `status`, `bytes_in`, `bytes_out` and `latency_ms` at target
//! `media_api::access`, and records `media_http_requests_total` and the latency histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::{Body, HttpBody};
use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use metrics::SharedString;

use super::error::REQUEST_ID_HEADER;
use crate::auth::Principal;
use crate::telemetry::metrics::names;

/// What the layers inside the router tell the access log and the metrics about a request: the
/// route it matched (admission, the first layer after routing, sets it) and the authenticated
/// caller (the auth extractor). Each is set at most once; a request no route matched has no route.
#[derive(Debug, Default)]
pub struct RequestSlot {
    route: OnceLock<MatchedPath>,
    caller: OnceLock<Arc<Principal>>,
}

impl RequestSlot {
    /// Records the route template the request matched.
    pub fn set_route(&self, route: MatchedPath) {
        let _ = self.route.set(route);
    }

    /// Records the authenticated caller.
    pub fn set_caller(&self, principal: &Arc<Principal>) {
        let _ = self.caller.set(principal.clone());
    }
}

/// The route label of requests no route matched (one label, whatever the path).
const UNMATCHED: &str = "unmatched";

/// The method as a metric label: the standard ones, everything else `other` (a client choosing
/// method names must not create series).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The status as a metric label; the statuses the service answers with need no allocation.
fn status_label(status: u16) -> SharedString {
    let known = match status {
        200 => "200",
        201 => "201",
        204 => "204",
        206 => "206",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        415 => "415",
        416 => "416",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return SharedString::from_owned(other.to_string()),
    };
    SharedString::const_str(known)
}

/// Counts a request in `media_http_requests_in_flight` until dropped — also when the request
/// future is dropped (client gone, shutdown).
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(names::HTTP_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::HTTP_IN_FLIGHT).decrement(1.0);
    }
}

/// The middleware (see the module docs).
pub async fn observe(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(request.method());
    let request_id =
        request.headers().get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let slot = Arc::new(RequestSlot::default());
    let bytes_in = Arc::new(AtomicU64::new(0));
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(slot.clone());
    let counter = bytes_in.clone();
    let body = Body::new(body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    }));
    let in_flight = InFlight::enter();
    let response = next.run(Request::from_parts(parts, body)).await;
    drop(in_flight);

    let latency = start.elapsed();
    // Shared, so the two metric labels below take it without copying.
    let route = match slot.route.get() {
        Some(matched) => SharedString::from(Arc::<str>::from(matched.as_str())),
        None => SharedString::const_str(UNMATCHED),
    };
    let status = response.status().as_u16();
    let bytes_out =
        response.body().size_hint().exact().or_else(|| {
            response.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
        });
    metrics::counter!(names::HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status_label(status))
        .increment(1);
    metrics::histogram!(names::HTTP_DURATION, "method" => method, "route" => route.clone())
        .record(latency.as_secs_f64());
    let route = &*route;
    let caller = slot.caller.get();
    let tenant = caller.map_or("", |principal| principal.tenant.as_str());
    let subject = caller.map_or("", |principal| principal.subject.as_str());
    tracing::info!(
        target: "media_api::access",
        request_id,
        tenant,
        subject,
        method,
        route,
        status,
        bytes_in = bytes_in.load(Ordering::Relaxed),
        bytes_out,
        latency_ms = latency.as_secs_f64() * 1000.0,
        "request"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_label_is_the_code_in_decimal() {
        for code in 100..1000u16 {
            assert_eq!(&*status_label(code), code.to_string(), "{code}");
        }
    }
}
