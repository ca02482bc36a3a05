//! The media routes of the jan v1 contract (DESIGN §3): uploads from every source, download, presign,
//! delete, and direct uploads (`prepare-upload` + `complete`). Resolve lives in [`super::resolve`].
//!
//! Every lookup is by `(tenant of the token, id)`: an ID that does not parse, does not exist or
//! belongs to another tenant gets the same 404. A pending direct upload is verified the first time it
//! is read (jan clients never call `complete`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiQuery, MediaIdPath};
use super::limits::{body_with_deadline, UploadSlot};
use super::openapi::{AuthErrors, BadRequest, ErrorBody, NotFound, PendingErrors, UploadErrors};
use super::range::parse_range;
use crate::app::AppState;
use crate::auth::extract::{Authenticated, CanRead, CanWrite};
use crate::auth::{Permission, Principal};
use crate::db::media::{MediaRecord, MediaStatus};
use crate::ingest::id::{is_valid, new_id};
use crate::ingest::pipeline::{Ingested, Upload};
use crate::ingest::sniff::{canonical, extension, DeclaredBy};
use crate::ingest::sources::{body_stream, clean_filename, decode_data_url, raw_filename};
use crate::ingest::ByteStream;
use crate::storage::{content_disposition, PresignGet, PresignPut, PresignedRequest};
use crate::telemetry::metrics::names;

/// The media routes (resolve is merged from its own module).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(upload_form))
        .routes(routes!(prepare_upload))
        .routes(routes!(download, remove))
        .routes(routes!(presign))
        .routes(routes!(complete))
        .layer(DefaultBodyLimit::disable())
}

/// The answer to an upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    /// The media's ID.
    #[schema(example = "jan_01jq4k9x2v7m3n8p5r6s0t1w2y")]
    id: String,
    /// The sniffed type.
    #[schema(example = "image/png")]
    mime: String,
    /// Size in bytes.
    bytes: u64,
    /// True when the tenant already had these bytes (the first upload's ID is returned).
    deduped: bool,
    /// A presigned GET URL.
    presigned_url: String,
    /// The same URL (jan v2 name).
    url: String,
    /// When the URL stops working.
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct UploadQuery {
    /// Filename of a raw upload (after `Content-Disposition` and `X-Filename`).
    filename: Option<String>,
}

/// The jan v1 JSON upload body.
#[derive(Debug, Deserialize, ToSchema)]
struct JanUpload {
    source: JanSource,
    /// Filename to record (its extension must agree with the content).
    filename: Option<String>,
    /// A client hint only; the token decides who uploads.
    user_id: Option<String>,
}

/// Where the bytes come from.
#[derive(Debug, Deserialize, ToSchema)]
struct JanSource {
    /// `data_url` (also `dataurl`, `datauri`) or `remote_url` (also `remote`, `remoteuri`), any case.
    #[serde(rename = "type")]
    #[schema(example = "data_url")]
    kind: String,
    /// `data:<mime>;base64,<bytes>` for a `data_url` source.
    data_url: Option<String>,
    /// An `http(s)` URL on a public address for a `remote_url` source.
    url: Option<String>,
}

/// A multipart upload form.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UploadForm {
    /// The file (its part's `Content-Type` and filename must agree with the content).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// A client hint only.
    user_id: Option<String>,
    /// Filename to record when the `file` part has none.
    filename: Option<String>,
}

/// Upload: JSON (jan v1 `data_url`/`remote_url` sources), multipart (`file`) or a raw body, by
/// `Content-Type`. The type is sniffed from the bytes and must agree with every declared one.
#[utoipa::path(post, path = "/v1/media", tag = "media", security(("bearer" = [])),
    params(UploadQuery),
    request_body(content(
        (JanUpload = "application/json"),
        (UploadForm = "multipart/form-data"),
        (Vec<u8> = "image/*"),
        (Vec<u8> = "application/octet-stream"),
    )),
    responses((status = 200, description = "Stored, or deduplicated", body = UploadResponse), UploadErrors, AuthErrors))]
async fn upload(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    ApiQuery(query): ApiQuery<UploadQuery>,
    request: Request,
) -> Result<Json<UploadResponse>, ApiError> {
    let content_type = header_text(request.headers(), header::CONTENT_TYPE).unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    let owner = caller.0.owner();
    let slot = if is_json { state.limits.buffered_upload_slot(&owner)? } else { state.limits.upload_slot(&owner)? };
    let request = with_upload_deadline(&state, request);
    let ingested = counted(if is_json {
        upload_json(&state, caller.0.clone(), slot, request).await
    } else if essence == "multipart/form-data" {
        upload_multipart(&state, caller.0.clone(), slot, &content_type, request).await
    } else {
        let headers = request.headers();
        let upload = Upload {
            declared: header_text(headers, header::CONTENT_TYPE).map(|t| (DeclaredBy::Header, t)).into_iter().collect(),
            filename: raw_filename(headers, query.filename.as_deref()),
            user_hint: header_text(headers, "x-principal-id"),
            content_length: content_length(headers),
        };
        state
            .pipeline
            .ingest_detached(caller.0.clone(), upload, body_stream(request.into_body()), slot)
            .await
            .map_err(Into::into)
    })?;
    Ok(Json(upload_response(&state, ingested).await?))
}

/// Upload with the jan v2 multipart form (`file`, `user_id`).
#[utoipa::path(post, path = "/v1/media/upload", tag = "media", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Stored, or deduplicated", body = UploadResponse), UploadErrors, AuthErrors))]
async fn upload_form(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    request: Request,
) -> Result<Json<UploadResponse>, ApiError> {
    let content_type = header_text(request.headers(), header::CONTENT_TYPE).unwrap_or_default();
    let slot = state.limits.upload_slot(&caller.0.owner())?;
    let request = with_upload_deadline(&state, request);
    let ingested = counted(upload_multipart(&state, caller.0.clone(), slot, &content_type, request).await)?;
    Ok(Json(upload_response(&state, ingested).await?))
}

/// Counts an upload's outcome (`media_uploads_total`, `media_upload_bytes_total`, rejections by code).
fn counted(result: Result<Ingested, ApiError>) -> Result<Ingested, ApiError> {
    match &result {
        Ok(ingested) => {
            let kind = if ingested.deduped { "deduped" } else { "stored" };
            metrics::counter!(names::UPLOADS, "result" => kind).increment(1);
            if !ingested.deduped {
                metrics::counter!(names::UPLOAD_BYTES).increment(ingested.record.size);
            }
        }
        Err(err) => metrics::counter!(names::UPLOAD_REJECTIONS, "reason" => err.code()).increment(1),
    }
    result
}

/// The request with a body that fails once `MEDIA_UPLOAD_TIMEOUT` has passed.
fn with_upload_deadline(state: &AppState, request: Request) -> Request {
    let timeout = state.config.ops.upload_timeout;
    request.map(|body| body_with_deadline(body, timeout))
}

async fn upload_json(
    state: &AppState,
    caller: Arc<Principal>,
    slot: UploadSlot,
    request: Request,
) -> Result<Ingested, ApiError> {
    // A data URL is base64 (4 bytes per 3) plus the JSON around it.
    let limit = state.config.max_bytes.saturating_mul(4) / 3 + 64 * 1024;
    let body = read_limited(request.into_body(), limit).await?;
    let jan: JanUpload = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not a valid upload: {e}")))?;
    let filename = jan.filename.as_deref().and_then(clean_filename);
    match jan.source.kind.to_ascii_lowercase().as_str() {
        "data_url" | "dataurl" | "datauri" | "data_uri" => {
            let data_url = jan.source.data_url.ok_or_else(|| {
                ApiError::bad_request("invalid_source", "source.data_url is required for a data_url source")
            })?;
            let (mime, bytes) = decode_data_url(&data_url, state.config.max_bytes)?;
            drop(data_url);
            let upload = Upload {
                declared: mime.map(|m| (DeclaredBy::DataUrl, m)).into_iter().collect(),
                filename,
                user_hint: jan.user_id,
                content_length: Some(bytes.len() as u64),
            };
            let body: ByteStream = futures::stream::once(async move { Ok(bytes) }).boxed();
            Ok(state.pipeline.ingest_detached(caller, upload, body, slot).await?)
        }
        "remote_url" | "remote" | "remoteuri" | "remote_uri" | "url" => {
            let url = jan.source.url.ok_or_else(|| {
                ApiError::bad_request("invalid_source", "source.url is required for a remote_url source")
            })?;
            let fetched = state.remote.fetch(&url).await?;
            let upload = Upload {
                declared: fetched.content_type.map(|t| (DeclaredBy::Remote, t)).into_iter().collect(),
                filename: filename.or(fetched.filename),
                user_hint: jan.user_id,
                content_length: fetched.content_length,
            };
            Ok(state.pipeline.ingest_detached(caller, upload, fetched.body, slot).await?)
        }
        other => Err(ApiError::bad_request("unknown_source_type", format!("unknown source type {other}"))),
    }
}

/// Streams the `file` part of a multipart body through the pipeline; `user_id` (and `filename`)
/// parts before it are taken as hints.
async fn upload_multipart(
    state: &AppState,
    caller: Arc<Principal>,
    slot: UploadSlot,
    content_type: &str,
    request: Request,
) -> Result<Ingested, ApiError> {
    let invalid = |why: String| ApiError::bad_request("invalid_multipart", why);
    let boundary = multer::parse_boundary(content_type).map_err(|e| invalid(format!("not a multipart body: {e}")))?;
    let stream = request.into_body().into_data_stream();
    let mut multipart = multer::Multipart::new(stream, boundary);
    let mut user_hint = None;
    let mut filename = None;
    loop {
        let field =
            multipart.next_field().await.map_err(|e| invalid(format!("the multipart body is malformed: {e}")))?;
        let Some(field) = field else {
            return Err(ApiError::bad_request("missing_file", "the multipart body has no `file` part"));
        };
        match field.name() {
            Some("file") => {
                let upload = Upload {
                    declared: field.content_type().map(|m| (DeclaredBy::Part, m.to_string())).into_iter().collect(),
                    filename: field.file_name().and_then(clean_filename).or(filename),
                    user_hint,
                    content_length: None,
                };
                let body = futures::stream::unfold((field, multipart), |(mut field, multipart)| async move {
                    match field.chunk().await {
                        Ok(Some(chunk)) => Some((Ok(chunk), (field, multipart))),
                        Ok(None) => None,
                        Err(err) => Some((Err(std::io::Error::other(err)), (field, multipart))),
                    }
                })
                .boxed();
                return Ok(state.pipeline.ingest_detached(caller, upload, body, slot).await?);
            }
            Some("user_id") => user_hint = Some(small_text(field).await?),
            Some("filename") => filename = clean_filename(&small_text(field).await?),
            _ => {}
        }
    }
}

/// A short text part (at most 1 KiB).
async fn small_text(mut field: multer::Field<'static>) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| ApiError::bad_request("invalid_multipart", format!("the multipart body is malformed: {e}")))?
    {
        text.extend_from_slice(&chunk);
        if text.len() > 1024 {
            return Err(ApiError::bad_request("invalid_multipart", "a text part is longer than 1 KiB"));
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Reads a whole (small) body, refusing it past `limit`.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge { limit }),
        Err(_) => Err(ApiError::bad_request("upload_interrupted", "the request body could not be read to its end")),
    }
}

fn header_text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

async fn upload_response(state: &AppState, ingested: Ingested) -> Result<UploadResponse, ApiError> {
    let link = presign_get(state, &ingested.record, state.config.presign_ttl).await?;
    Ok(UploadResponse {
        id: ingested.record.id,
        mime: ingested.record.mime,
        bytes: ingested.record.size,
        deduped: ingested.deduped,
        presigned_url: link.url.clone(),
        url: link.url,
        expires_at: link.expires_at,
    })
}

/// The download name of a media: its filename, or `<id>.<ext>`.
fn download_name(record: &MediaRecord) -> String {
    record.filename.clone().unwrap_or_else(|| format!("{}.{}", record.id, extension(&record.mime)))
}

/// A presigned GET of a media, forcing its sniffed type and an inline, RFC 6266-safe disposition.
pub async fn presign_get(
    state: &AppState,
    record: &MediaRecord,
    ttl: std::time::Duration,
) -> Result<PresignedRequest, ApiError> {
    let options = PresignGet {
        ttl: ttl.min(state.config.presign_max_ttl),
        content_type: record.mime.clone(),
        content_disposition: content_disposition("inline", &download_name(record)),
    };
    let link = state.blobs.presign_get(&record.storage_key, &options).await?;
    metrics::counter!(names::PRESIGNS).increment(1);
    Ok(link)
}

/// The caller's media with this id, verified first when it is a pending direct upload.
pub async fn load(state: &AppState, caller: &Arc<Principal>, id: &str) -> Result<MediaRecord, ApiError> {
    if !is_valid(id) {
        return Err(ApiError::NotFound);
    }
    let stored = state.media.get(&caller.tenant, id).await?.ok_or(ApiError::NotFound)?;
    ready(state, caller, stored.record).await
}

/// A record made ready: pending direct uploads are verified (without dedup, so the id stays valid).
pub async fn ready(state: &AppState, caller: &Arc<Principal>, record: MediaRecord) -> Result<MediaRecord, ApiError> {
    match record.status {
        MediaStatus::Ready => Ok(record),
        MediaStatus::Pending => {
            let slot = state.limits.upload_slot(&caller.owner())?;
            Ok(state.pipeline.complete_detached(caller.clone(), record, false, slot).await?.record)
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
struct MediaId {
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
        let link = presign_get(&state, &record, state.config.presign_ttl).await?;
        let metadata = MediaMetadata {
            id: record.id,
            mime: record.mime,
            bytes: record.size,
            filename: record.filename,
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
    let object = state.blobs.get(&record.storage_key, parse_range(&headers)?).await?;
    let mut response = Response::new(Body::from_stream(object.body));
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
) -> Result<Json<PresignResponse>, ApiError> {
    let ttl = query.ttl(&state)?;
    let record = load(&state, &caller.0, &id).await?;
    let link = presign_get(&state, &record, ttl).await?;
    let expires_in = (link.expires_at - Utc::now()).num_seconds().max(0);
    Ok(Json(PresignResponse { id: record.id, url: link.url, expires_in, expires_at: link.expires_at }))
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
    if !is_valid(&id) {
        return Err(ApiError::NotFound);
    }
    // A pending upload completing at the same moment changes the row under the delete: read again.
    for _ in 0..3 {
        let record = state.media.get(&caller.0.tenant, &id).await?.ok_or(ApiError::NotFound)?.record;
        require_owner(&caller.0, &record)?;
        if state.pipeline.remove(&record).await? {
            let details = json!({"bytes": record.size});
            state.pipeline.audit(&caller.0.tenant, &caller.0.subject, "media.deleted", &record.id, details).await;
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    Err(ApiError::Conflict {
        code: "media_changed",
        message: "the media kept changing while it was being deleted; try again".into(),
    })
}

/// Only the uploader of a media, or a caller with `media:admin`, may delete or complete it.
fn require_owner(caller: &Principal, record: &MediaRecord) -> Result<(), ApiError> {
    if record.uploader == caller.owner() || caller.can(Permission::Admin) {
        Ok(())
    } else {
        Err(ApiError::forbidden("not_owner", "only the uploader or an admin may change this media"))
    }
}

/// A direct upload to prepare.
#[derive(Debug, Deserialize, ToSchema)]
struct PrepareUpload {
    /// The type the file will have (jan v1 name).
    #[schema(example = "image/png")]
    mime_type: Option<String>,
    /// Same as `mime_type`.
    content_type: Option<String>,
    /// Exact size; when given, the URL only accepts a body of this length.
    bytes: Option<u64>,
    filename: Option<String>,
    /// A client hint only.
    user_id: Option<String>,
}

/// A presigned PUT for a direct upload.
#[derive(Debug, Serialize, ToSchema)]
struct PreparedUpload {
    /// The pending media's ID (completed by `POST /v1/media/{id}/complete`, or on first use).
    id: String,
    /// Where to PUT the bytes.
    upload_url: String,
    /// Always `PUT`.
    method: String,
    mime_type: String,
    /// Seconds the URL stays valid.
    expires_in: u64,
    expires_at: DateTime<Utc>,
    /// Headers the PUT must carry exactly (the signature binds them).
    headers: BTreeMap<String, String>,
}

/// A pending row and a presigned PUT bound to the type (and length, when given).
#[utoipa::path(post, path = "/v1/media/prepare-upload", tag = "media", security(("bearer" = [])),
    request_body = PrepareUpload,
    responses((status = 200, body = PreparedUpload), BadRequest,
        (status = 413, description = "bytes is over MEDIA_MAX_BYTES", body = ErrorBody),
        (status = 415, description = "The type is not accepted", body = ErrorBody), AuthErrors))]
async fn prepare_upload(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    body: Body,
) -> Result<Json<PreparedUpload>, ApiError> {
    let body = read_limited(body, 64 * 1024).await?;
    let request: PrepareUpload = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid: {e}")))?;
    let declared = request
        .mime_type
        .or(request.content_type)
        .ok_or_else(|| ApiError::bad_request("missing_mime_type", "mime_type (or content_type) is required"))?;
    let mime = canonical(&declared).filter(|m| state.pipeline.allowlist().allows(m)).ok_or_else(|| {
        ApiError::UnsupportedMedia { code: "unsupported_type", message: format!("{declared} is not an accepted type") }
    })?;
    let max = state.config.max_bytes;
    match request.bytes {
        Some(0) => return Err(ApiError::bad_request("empty", "bytes must be more than 0")),
        Some(size) if size > max => return Err(ApiError::TooLarge { limit: max }),
        _ => {}
    }
    let record = MediaRecord {
        id: new_id(),
        tenant_id: caller.0.tenant.clone(),
        status: MediaStatus::Pending,
        mime: mime.clone(),
        size: request.bytes.unwrap_or(0),
        filename: request.filename.as_deref().and_then(clean_filename),
        uploader: caller.0.owner(),
        user_hint: request.user_id,
        storage_key: state.pipeline.new_staging_key(),
        sha256: None,
        metadata: None,
        retention_until: state.pipeline.retention_until(),
    };
    let options =
        PresignPut { ttl: state.config.presign_ttl, content_type: mime.clone(), content_length: request.bytes };
    let link = state.blobs.presign_put(&record.storage_key, &options).await?;
    state.media.insert(&record).await?;
    Ok(Json(PreparedUpload {
        id: record.id,
        upload_url: link.url,
        method: link.method.to_string(),
        mime_type: mime,
        expires_in: state.config.presign_ttl.as_secs(),
        expires_at: link.expires_at,
        headers: link.headers.into_iter().collect(),
    }))
}

/// Verifies a direct upload (size, sniffed type, hash), deduplicates it and marks it ready.
#[utoipa::path(post, path = "/v1/media/{id}/complete", tag = "media", security(("bearer" = [])), params(MediaId),
    responses((status = 200, body = UploadResponse),
        (status = 409, description = "Nothing was uploaded yet (`not_uploaded`)", body = ErrorBody),
        UploadErrors, NotFound, AuthErrors))]
async fn complete(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    MediaIdPath(id): MediaIdPath,
) -> Result<Json<UploadResponse>, ApiError> {
    if !is_valid(&id) {
        return Err(ApiError::NotFound);
    }
    let record = state.media.get(&caller.0.tenant, &id).await?.ok_or(ApiError::NotFound)?.record;
    let ingested = match record.status {
        // Already complete: the answer carries a download URL, so it needs read access.
        MediaStatus::Ready => {
            caller.0.require(Permission::Read)?;
            Ingested { record, deduped: false }
        }
        MediaStatus::Pending => {
            require_owner(&caller.0, &record)?;
            let slot = state.limits.upload_slot(&caller.0.owner())?;
            counted(state.pipeline.complete_detached(caller.0.clone(), record, true, slot).await.map_err(Into::into))?
        }
    };
    Ok(Json(upload_response(&state, ingested).await?))
}
