//! The HTTP surface: [`router`] merges one router per resource and wraps it in the layers every
//! response goes through, outermost first: CORS (only for `CORS_ALLOWED_ORIGINS`), request IDs (a
//! sane inbound `X-Request-Id` is kept, anything else is replaced by a random one), the access log
//! and HTTP metrics ([`observe`]), security headers (plus HSTS when serving TLS), error bodies with
//! the request ID, panics answered as 500s; then the routes, each behind admission (per-IP rate
//! limit on unauthenticated routes, the deadline of non-upload routes — [`admission`]). [`server`]
//! accepts connections (plain or TLS), caps them per client ([`connections`]) and drains them on
//! shutdown.

pub mod admission;
pub mod connections;
pub mod error;
pub mod extract;
pub mod form;
pub mod observe;
pub mod openapi;
pub mod range;
pub mod request;
pub mod response;
pub mod routes;
pub mod send_timeout;
pub mod server;
pub mod state;
pub mod tls;

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use rand::RngCore;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use error::REQUEST_ID_HEADER;
use state::AppState;

/// Generates request IDs: 16 random bytes, hex.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let (mut bytes, mut text) = ([0u8; 16], [0u8; 32]);
        rand::thread_rng().fill_bytes(&mut bytes);
        hex::encode_to_slice(bytes, &mut text).ok()?;
        HeaderValue::from_bytes(&text).ok().map(RequestId::new)
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
fn drop_insane_request_id(mut request: Request<axum::body::Body>) -> Request<axum::body::Body> {
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
fn security_headers() -> [(HeaderName, HeaderValue); 5] {
    [
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
        ),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin")),
    ]
}

/// `Strict-Transport-Security` sent when the service itself serves HTTPS (two years, subdomains).
const HSTS: &str = "max-age=63072000; includeSubDomains";

/// CORS for the configured origins; `None` when there are none (no CORS headers at all).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let request_headers = ["x-request-id", "x-filename", "x-principal-id"].map(HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers(
                [header::AUTHORIZATION, header::CONTENT_TYPE, header::CONTENT_DISPOSITION, header::RANGE]
                    .into_iter()
                    .chain(request_headers)
                    .collect::<Vec<_>>(),
            )
            .expose_headers([
                HeaderName::from_static(REQUEST_ID_HEADER),
                header::RETRY_AFTER,
                header::CONTENT_DISPOSITION,
                header::CONTENT_RANGE,
                header::ETAG,
            ])
            .max_age(Duration::from_secs(600)),
    )
}

/// The whole application (`/metrics` included unless `MEDIA_METRICS_ADDR` moves it): the routes,
/// admission as the one layer applied to each route (it needs the matched route), and every other
/// layer applied once around the router. Layers added with `Router::layer` wrap each route in a box
/// of their own, and the router clones a route's whole chain of boxes for every request; around
/// the router they are plain values (see docs/performance.md, session 14).
pub fn router(state: AppState) -> impl server::HttpService {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let (routes, spec) = api_router(state.config.ops.metrics_addr.is_none()).split_for_parts();
    let spec = openapi::Spec::new(&openapi::finish(spec));
    let routes = routes
        .fallback(error::no_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), admission::admission))
        .with_state(state.clone());
    let hsts =
        state.config.ops.tls.is_some().then(|| {
            SetResponseHeaderLayer::overriding(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS))
        });
    let [h1, h2, h3, h4, h5] =
        security_headers().map(|(name, value)| SetResponseHeaderLayer::if_not_present(name, value));
    ServiceBuilder::new()
        .option_layer(cors(&state.config.ops.cors_allowed_origins))
        .map_request(drop_insane_request_id)
        .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(from_fn(observe::observe))
        .option_layer(hsts)
        .layer(h1)
        .layer(h2)
        .layer(h3)
        .layer(h4)
        .layer(h5)
        .layer(from_fn(error::attach_request_id))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panicked))
        .layer(axum::Extension(spec))
        .service(routes)
}

/// Every route with its OpenAPI entry (`/metrics` when it is served on the main listener).
pub fn api_router(with_metrics: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::health::router())
        .merge(routes::blobs::router())
        .merge(routes::auth::router())
        .merge(routes::upload::router())
        .merge(routes::direct::router())
        .merge(routes::media::router())
        .merge(routes::resolve::router())
        .merge(openapi::router());
    if with_metrics {
        router.merge(routes::metrics::router())
    } else {
        router
    }
}

/// The OpenAPI document of the whole surface (what `/openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    openapi::finish(api_router(true).into_openapi())
}

/// The router of the internal metrics listener (`MEDIA_METRICS_ADDR`).
pub fn metrics_router(state: AppState) -> Router {
    let (router, _) = routes::metrics::router().split_for_parts();
    router.fallback(error::no_route).with_state(state)
}
