//! The OpenAPI 3.1 description of the HTTP surface, generated from the code.
//!
//! Every route is registered through `utoipa_axum`'s `routes!`, which takes the method and path
//! from the handler's `#[utoipa::path]` attribute: a route cannot exist without its entry in the
//! spec. This module holds the document's frame ([`ApiDoc`]: info, bearer security, tags), the
//! schemas of bodies built with `json!` in handlers, the shared error responses, and
//! `GET /openapi.json`.

use axum::http::header;
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::OpenApi as OpenApiDoc;
use utoipa::{IntoResponses, Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::state::AppState;

/// Name of the bearer security scheme.
pub const BEARER: &str = "bearer";

/// The document's frame; paths and most schemas come from the routers.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "media-api",
        description = "Media uploads with Bearer tokens, opaque jan_* IDs, presigned URLs and JSON payload \
                       resolution; a drop-in replacement for the jan-server media-api v1."
    ),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody)),
    tags(
        (name = "media", description = "Uploads, downloads, presigned URLs, deletion"),
        (name = "resolve", description = "Replacing jan_* IDs in JSON payloads by presigned URLs"),
        (name = "auth", description = "What the service made of a token; the dev issuer's keys"),
        (name = "blobs", description = "The service's own signed links (filesystem backend, encrypted objects)"),
        (name = "operations", description = "Health, readiness, version, metrics, this document")
    )
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".into());
        components.add_security_scheme(BEARER, SecurityScheme::Http(scheme));
    }
}

/// Every error: a sentence for a person, a stable code for a program, the request ID for support.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    #[schema(example = "media jan_01jq4k9x2v7m3n8p5r6s0t1w2y was not found")]
    pub error: String,
    /// Stable snake_case code (`not_found`, `too_large`, `unsupported_type`, `rate_limited`, …).
    #[schema(example = "not_found")]
    pub code: String,
    /// The request's ID (also in the `X-Request-Id` header).
    pub request_id: Option<String>,
}

/// Refusals every authenticated route can answer.
#[derive(IntoResponses)]
pub enum AuthErrors {
    /// Missing, malformed, expired or unverifiable token (`WWW-Authenticate: Bearer` challenge).
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the permission this route needs (`insufficient_scope`), carries no usable
    /// tenant (`no_tenant`, `invalid_tenant`), or names a tenant its issuer may not assert
    /// (`tenant_not_allowed`).
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Rate limit reached (`rate_limited`); see `Retry-After`.
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// A dependency is down, the service is busy or the request timed out; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Answers any route can give: the per-IP rate limit, and 503 when the request deadline passes.
#[derive(IntoResponses)]
pub enum CommonErrors {
    /// Rate limit reached (`rate_limited`); see `Retry-After`.
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// The request ran past its deadline (`timeout`) or a dependency is down; see `Retry-After`.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What reading a pending direct upload can answer (it is verified first).
#[derive(IntoResponses)]
pub enum PendingErrors {
    /// The staged object fails a check (`empty`, `invalid_upload`, …).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Nothing was uploaded to the URL yet (`not_uploaded`).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The staged object is over `MEDIA_MAX_BYTES` (`too_large`).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The staged object's type is refused (`unsupported_type`, `type_mismatch`).
    #[response(status = 415)]
    UnsupportedType(ErrorBody),
}

/// The media does not exist, or belongs to another tenant (indistinguishable on purpose).
#[derive(IntoResponses)]
#[response(status = 404)]
pub struct NotFound(pub ErrorBody);

/// A malformed request (`invalid_json`, `invalid_request`, …).
#[derive(IntoResponses)]
#[response(status = 400)]
pub struct BadRequest(pub ErrorBody);

/// The tenant is being shredded (`tenant_shredding`): nothing is stored for it until that ends.
#[derive(IntoResponses)]
#[response(status = 409)]
pub struct Shredding(pub ErrorBody);

/// Refusals of the upload routes.
#[derive(IntoResponses)]
pub enum UploadErrors {
    /// Malformed body, empty file, unknown source type, blocked `remote_url`, interrupted upload, a
    /// `user_id` hint (body or `X-Principal-Id`) over 1024 bytes (`user_id_too_long`).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// The body did not arrive within `MEDIA_UPLOAD_TIMEOUT`, no byte of it came for
    /// `MEDIA_UPLOAD_IDLE_TIMEOUT`, or it came slower than `MEDIA_UPLOAD_MIN_RATE` (`upload_timeout`).
    #[response(status = 408)]
    Timeout(ErrorBody),
    /// Larger than `MEDIA_MAX_BYTES` (`too_large`).
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The sniffed type is not allowed (`unsupported_type`) or disagrees with the declared one
    /// (`type_mismatch`).
    #[response(status = 415)]
    UnsupportedType(ErrorBody),
    /// The `remote_url` server failed (`remote_fetch_failed`).
    #[response(status = 502)]
    BadGateway(ErrorBody),
}

/// `GET /openapi.json`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// The spec served at `/openapi.json`, serialized once when the routers are assembled.
#[derive(Clone)]
pub struct Spec(pub Bytes);

impl Spec {
    /// The serialized document.
    pub fn new(doc: &OpenApiDoc) -> Self {
        Self(Bytes::from(serde_json::to_vec(doc).expect("the OpenAPI document serializes")))
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object), CommonErrors))]
async fn openapi_json(Extension(spec): Extension<Spec>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], spec.0)
}

/// The document as served: OpenAPI path templates for axum's catch-all segments (`{*key}` →
/// `{key}`).
pub fn finish(mut doc: OpenApiDoc) -> OpenApiDoc {
    let paths = std::mem::take(&mut doc.paths.paths);
    doc.paths.paths = paths.into_iter().map(|(path, item)| (path.replace("{*", "{"), item)).collect();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
