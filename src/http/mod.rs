//! The HTTP surface: [`router`] merges one router per resource and wraps them in the layers every
//! response goes through (request IDs — a sane inbound `X-Request-Id` is kept, anything else is
//! replaced by a random one —, security headers, tracing, error bodies).

pub mod auth;
pub mod blobs;
pub mod error;
pub mod health;
pub mod media;
pub mod range;
pub mod resolve;

use axum::http::{header, HeaderName, HeaderValue, Request};
use axum::Router;
use rand::RngCore;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::app::AppState;
use error::REQUEST_ID_HEADER;

/// Generates request IDs: 16 random bytes, hex.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        HeaderValue::from_str(&hex::encode(bytes)).ok().map(RequestId::new)
    }
}

/// Longest inbound request ID kept.
const MAX_REQUEST_ID: usize = 128;

/// Whether a client-sent request ID may be used as ours (echoed, logged): 1–128 characters of
/// letters, digits and `-_.:`.
fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=MAX_REQUEST_ID).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an inbound `X-Request-Id` that is not sane, so a fresh one is generated instead.
async fn drop_insane_request_id(mut request: Request<axum::body::Body>) -> Request<axum::body::Body> {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let values = request.headers().get_all(&request_id);
    let mut iter = values.iter();
    let keep = matches!((iter.next(), iter.next()), (Some(value), None) if is_sane_request_id(value));
    if !keep {
        request.headers_mut().remove(&request_id);
    }
    request
}

/// Headers every response carries unless a handler set its own.
fn security_headers() -> [(HeaderName, HeaderValue); 4] {
    [
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
        ),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let mut router = Router::new()
        .merge(health::router())
        .merge(blobs::router())
        .merge(auth::router())
        .merge(media::router())
        .merge(resolve::router())
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn(error::attach_request_id));
    for (name, value) in security_headers() {
        router = router.layer(SetResponseHeaderLayer::if_not_present(name, value));
    }
    router
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::map_request(drop_insane_request_id))
                .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(state)
}
