//! The media routes of the jan v1 contract (DESIGN §3) that read a stored media: download, presign
//! and delete. Uploads are in [`super::upload`], direct uploads in [`super::direct`], resolve in
//! [`super::resolve`]. Each handler parses the request, calls the use case
//! ([`crate::media::MediaService`]) and renders the answer.
//!
//! Every lookup is by `(tenant of the token, id)`: an ID that does not parse, does not exist or
//! belongs to another tenant gets the same 404. A pending direct upload is verified the first time it
//! is read (jan clients never call `complete`), in an upload slot taken here.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::db::media::{MediaRecord, MediaStatus, StoredMedia};
use crate::http::error::{ApiError, ApiQuery, MediaIdPath};
use crate::http::extract::{Authenticated, CanRead, CanWrite};
use crate::http::openapi::{AuthErrors, ErrorBody, NotFound, PendingErrors};
use crate::http::range::parse_range;
use crate::http::request::header_text;
use crate::http::response::{push_json_str, push_json_time};
use crate::http::state::AppState;
use crate::media::read::{download_name, Found};
use crate::storage::content_disposition;

/// The routes of a stored media.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(download, remove)).routes(routes!(presign))
}

/// A ready media: the row as the row cache shares it, or one just verified.
enum Loaded {
    Shared(Arc<StoredMedia>),
    /// A pending direct upload just verified (rare: boxed).
    Verified(Box<MediaRecord>),
}

impl std::ops::Deref for Loaded {
    type Target = MediaRecord;

    fn deref(&self) -> &MediaRecord {
        match self {
            Self::Shared(stored) => &stored.record,
            Self::Verified(record) => record,
        }
    }
}

/// The caller's media with this id, verified first when it is a pending direct upload.
async fn load(state: &AppState, caller: &Arc<Principal>, id: &str) -> Result<Loaded, ApiError> {
    let stored = state.service.find_shared(caller, id).await?;
    if stored.record.status == MediaStatus::Ready {
        return Ok(Loaded::Shared(stored));
    }
    let pending = Found::Pending(Arc::unwrap_or_clone(stored).record);
    Ok(Loaded::Verified(Box::new(ready(state, caller, pending).await?)))
}

/// A media made ready: a pending direct upload is verified (sharing the storage of identical bytes,
/// but never giving way to the caller's earlier id, so the id stays valid) in an upload slot.
pub async fn ready(state: &AppState, caller: &Arc<Principal>, found: Found) -> Result<MediaRecord, ApiError> {
    match found {
        Found::Ready(record) => Ok(record),
        Found::Pending(record) => {
            let slot = state.limits.upload_slot(&caller.owner()).await?;
            Ok(state.service.verify_pending(caller.clone(), record, false, slot).await?.record)
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TtlQuery {
    /// Validity of the URL (`60s`, `5m`; default `MEDIA_S3_PRESIGN_TTL`, capped by `MEDIA_PRESIGN_MAX_TTL`).
    ttl: Option<String>,
}

/// The media ID path parameter.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct MediaId {
    /// A `jan_*` ID; anything else is simply not found.
    #[param(example = "jan_01jq4k9x2v7m3n8p5r6s0t1w2y")]
    id: String,
}

/// Metadata of a media with a presigned URL (`GET /v1/media/{id}` without proxying).
#[derive(Debug, Serialize, ToSchema)]
pub struct MediaMetadata {
    id: String,
    mime: String,
    bytes: u64,
    filename: Option<String>,
    /// A presigned GET URL.
    url: String,
    expires_at: DateTime<Utc>,
}

/// A presigned URL for one media.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresignResponse {
    id: String,
    /// A presigned GET URL forcing the media's type and an inline disposition.
    url: String,
    /// Seconds until it expires.
    expires_in: i64,
    expires_at: DateTime<Utc>,
}

impl TtlQuery {
    fn ttl(&self, state: &AppState) -> Result<std::time::Duration, ApiError> {
        match &self.ttl {
            None => Ok(state.config.presign_ttl),
            Some(text) => crate::config::parse_duration(text)
                .filter(|ttl| !ttl.is_zero())
                .map(|ttl| ttl.min(state.config.presign_max_ttl))
                .ok_or_else(|| ApiError::bad_request("invalid_ttl", "ttl must be a duration such as 60s or 5m")),
        }
    }
}

/// The bytes (`MEDIA_PROXY_DOWNLOAD=true`, the default; Range, ETag, nosniff) or, with proxying off
/// or `Accept: application/json`, metadata with a presigned URL.
#[utoipa::path(get, path = "/v1/media/{id}", tag = "media", security(("bearer" = [])), params(MediaId),
    responses(
        (status = 200, description = "The bytes with their sniffed type, or metadata", content(
            (MediaMetadata = "application/json"),
            (Vec<u8> = "*/*"),
        )),
        (status = 206, description = "The requested byte range", content_type = "*/*", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 416, description = "Unsatisfiable range", body = ErrorBody),
        NotFound, PendingErrors, AuthErrors))]
async fn download(
    State(state): State<AppState>,
    caller: Authenticated<CanRead>,
    MediaIdPath(id): MediaIdPath,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let record = load(&state, &caller.0, &id).await?;
    let wants_json = header_text(&headers, header::ACCEPT).is_some_and(|a| a.contains("application/json"));
    if !state.config.proxy_download || wants_json {
        let link = state.service.presign(&record, state.config.presign_ttl).await?;
        let metadata = MediaMetadata {
            id: record.id.clone(),
            mime: record.mime.clone(),
            bytes: record.size,
            filename: record.filename.clone(),
            url: link.url,
            expires_at: link.expires_at,
        };
        return Ok(Json(metadata).into_response());
    }
    let etag = record.sha256.map(|sha| format!("\"{}\"", hex::encode(sha)));
    if let (Some(etag), Some(sent)) = (&etag, header_text(&headers, header::IF_NONE_MATCH)) {
        if sent.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*") {
            return Ok(StatusCode::NOT_MODIFIED.into_response());
        }
    }
    let object = state.service.open(&record, parse_range(&headers)?).await?;
    let mut response = Response::new(crate::http::response::streamed(object.body));
    let out = response.headers_mut();
    let value = |text: &str| HeaderValue::from_str(text).map_err(|_| ApiError::NotFound);
    out.insert(header::CONTENT_TYPE, value(&record.mime)?);
    out.insert(header::CONTENT_LENGTH, HeaderValue::from(object.content_length));
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    out.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=0"));
    out.insert(header::CONTENT_DISPOSITION, value(&content_disposition("inline", &download_name(&record)))?);
    if let Some(etag) = etag {
        out.insert(header::ETAG, value(&etag)?);
    }
    if let Some((first, last)) = object.range {
        out.insert(header::CONTENT_RANGE, value(&format!("bytes {first}-{last}/{}", object.total_size))?);
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// A fresh presigned GET URL.
#[utoipa::path(get, path = "/v1/media/{id}/presign", tag = "media", security(("bearer" = [])),
    params(MediaId, TtlQuery),
    responses((status = 200, body = PresignResponse), NotFound, PendingErrors, AuthErrors))]
async fn presign(
    State(state): State<AppState>,
    caller: Authenticated<CanRead>,
    MediaIdPath(id): MediaIdPath,
    ApiQuery(query): ApiQuery<TtlQuery>,
) -> Result<PresignResponse, ApiError> {
    let ttl = query.ttl(&state)?;
    let record = load(&state, &caller.0, &id).await?;
    let link = state.service.presign(&record, ttl).await?;
    let expires_in = (link.expires_at - Utc::now()).num_seconds().max(0);
    // The path's id is the row's: a lookup matches ids exactly, and only canonical ones parse.
    debug_assert_eq!(id, record.id);
    Ok(PresignResponse { id, url: link.url, expires_in, expires_at: link.expires_at })
}

impl IntoResponse for PresignResponse {
    /// The same JSON as its `Serialize` (a test compares them), written straight into one buffer:
    /// serde_json's byte-by-byte escaping of the URL was a sixth of a cached presign's own work.
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(self.url.len() + self.id.len() + 128);
        body.extend_from_slice(b"{\"id\":");
        push_json_str(&mut body, &self.id);
        body.extend_from_slice(b",\"url\":");
        push_json_str(&mut body, &self.url);
        body.extend_from_slice(b",\"expires_in\":");
        body.extend_from_slice(itoa::Buffer::new().format(self.expires_in).as_bytes());
        body.extend_from_slice(b",\"expires_at\":");
        push_json_time(&mut body, &self.expires_at);
        body.push(b'}');
        ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
    }
}

/// Deletes the bytes and the row: the uploader, or a caller with `media:admin`.
#[utoipa::path(delete, path = "/v1/media/{id}", tag = "media", security(("bearer" = [])), params(MediaId),
    responses(
        (status = 204, description = "Deleted"),
        (status = 409, description = "`media_changed`: the media kept changing (a pending upload completing) while it was being deleted; try again", body = ErrorBody),
        NotFound, AuthErrors))]
async fn remove(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    MediaIdPath(id): MediaIdPath,
) -> Result<StatusCode, ApiError> {
    state.service.delete(&caller.0, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_presign_answer_is_its_serde_json() {
        let cases = [
            ("jan_01", "https://s3/b/k?X-Amz-Signature=ab%2F", "2026-11-27T19:00:01Z"),
            ("odd\"id", "http://x/\\y\u{1}\u{7f}", "2026-11-27T19:00:01.123456789Z"),
            ("ü", "https://x/\u{2028}€😀\t", "1970-01-01T00:00:00Z"),
        ];
        for (id, url, at) in cases {
            let expires_at: DateTime<Utc> = at.parse().unwrap();
            let answer = PresignResponse { id: id.into(), url: url.into(), expires_in: 299, expires_at };
            let expected = serde_json::to_vec(&answer).unwrap();
            let response = answer.into_response();
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(String::from_utf8_lossy(&body), String::from_utf8_lossy(&expected));
        }
    }
}
