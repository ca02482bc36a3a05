//! `GET`/`PUT /v1/blobs/{key}`: the service's own signed links — the filesystem backend's presigned
//! URLs, and the links of encrypted objects (served decrypted) on any backend.
//!
//! Mounted only when the service signs links (the filesystem backend, object encryption on, or a
//! link signing key configured). A request is served only if its link
//! verifies (HMAC, constant-time) and has not expired. Downloads carry the forced `Content-Type` and
//! `Content-Disposition` the link was signed with; uploads must declare the signed content type and,
//! when bound, exactly the signed length, and are limited to `MEDIA_MAX_BYTES` while streaming.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::admission::{body_with_deadline, client_network, BodyTimeouts};
use crate::http::error::ApiError;
use crate::http::openapi::{CommonErrors, ErrorBody};
use crate::http::range::parse_range;
use crate::http::state::AppState;
use crate::media::links::LinkUpload;
use crate::storage::links::LinkQuery;

/// The signed-link routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download, upload))
}

/// The object key.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct LinkKey {
    /// The object key (may contain `/`).
    key: String,
}

/// The link's signed query.
#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LinkSignature {
    /// Expiry (Unix seconds).
    #[serde(rename = "X-Media-Expires")]
    expires: i64,
    /// The signature.
    #[serde(rename = "X-Media-Signature")]
    signature: String,
}

fn verify(
    state: &AppState,
    method: &str,
    key: &str,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<LinkQuery, ApiError> {
    if !state.service.serves_links() {
        return Err(ApiError::NoRoute);
    }
    let Ok(Query(query)) = query else {
        return Err(ApiError::forbidden("invalid_signature", "this link is missing its expiry, type or signature"));
    };
    state.service.verify_link(method, key, &query)?;
    Ok(query)
}

fn header_value(name: &str, value: &str) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(value)
        .map_err(|_| ApiError::bad_request("invalid_link", format!("the link's {name} is not a valid header value")))
}

/// Downloads an object through a link signed by the service (filesystem backend, or an encrypted
/// object served decrypted).
#[utoipa::path(get, path = "/v1/blobs/{*key}", tag = "blobs", params(LinkKey, LinkSignature),
    responses((status = 200, description = "The bytes, with the type the link was signed for", content_type = "*/*", body = Vec<u8>),
        (status = 206, description = "A byte range", content_type = "*/*", body = Vec<u8>),
        (status = 400, description = "The link's type or disposition is not a valid header (`invalid_link`)", body = ErrorBody),
        (status = 403, description = "Expired or invalid link", body = ErrorBody),
        (status = 404, description = "No such object, or this service signs no links", body = ErrorBody),
        (status = 416, description = "Unsatisfiable range", body = ErrorBody),
        (status = 500, description = "An encrypted object failed its integrity check (`data_integrity`)", body = ErrorBody),
        CommonErrors))]
async fn download(
    State(state): State<AppState>,
    Path(key): Path<String>,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let link = verify(&state, "GET", &key, query)?;
    let range = parse_range(&headers)?;
    let object = state.service.open_linked(&key, &link, range).await?;
    let mut response = Response::new(crate::http::response::streamed(object.body));
    let out = response.headers_mut();
    out.insert(header::CONTENT_TYPE, header_value("content type", &link.content_type)?);
    if let Some(disposition) = &link.content_disposition {
        out.insert(header::CONTENT_DISPOSITION, header_value("content disposition", disposition)?);
    }
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(object.content_length));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    // A signed link is meant to be embedded by other origins (the web app's <img>).
    out.insert(
        axum::http::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    if let Some((first, last)) = object.range {
        let value = format!("bytes {first}-{last}/{}", object.total_size);
        out.insert(header::CONTENT_RANGE, header_value("range", &value)?);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// Uploads the bytes of a prepared direct upload through a link signed by the service.
#[utoipa::path(put, path = "/v1/blobs/{*key}", tag = "blobs", params(LinkKey, LinkSignature),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Stored"),
        (status = 400, description = "The body ended early (`length_mismatch`, `upload_interrupted`)", body = ErrorBody),
        (status = 403, description = "Expired or invalid link, or headers other than the signed ones", body = ErrorBody),
        (status = 404, description = "Not the filesystem backend", body = ErrorBody),
        (status = 413, description = "Over the limit", body = ErrorBody), CommonErrors))]
async fn upload(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(key): Path<String>,
    query: Result<Query<LinkQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let link = verify(&state, "PUT", &key, query)?;
    let _slot = state.limits.upload_slot(&format!("ip:{}", client_network(peer.ip()))).await?;
    let body = body_with_deadline(body, BodyTimeouts::of(&state.config));
    let declared = LinkUpload {
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default(),
        content_length: headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()),
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other).boxed();
    state.service.accept_linked(&key, &link, declared, stream).await?;
    Ok(StatusCode::OK.into_response())
}
