//! Uploads: `POST /v1/media` (JSON jan v1 `data_url`/`remote_url` sources, multipart, or a raw
//! body, by `Content-Type`) and `POST /v1/media/upload` (the jan v2 multipart form). The handler
//! takes an upload slot and puts `MEDIA_UPLOAD_TIMEOUT` on the body before the use case runs.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::http::admission::{body_with_deadline, BodyTimeouts, UploadSlot};
use crate::http::error::{ApiError, ApiQuery};
use crate::http::extract::{Authenticated, CanWrite};
use crate::http::form;
use crate::http::form::multipart::Multipart;
use crate::http::openapi::{AuthErrors, Shredding, UploadErrors};
use crate::http::request::{content_length, header_text, read_limited};
use crate::http::state::AppState;
use crate::media::ingest::pipeline::{Expected, Ingested, Upload};
use crate::media::ingest::sniff::DeclaredBy;
use crate::media::ingest::sources::{body_stream, clean_filename, raw_filename};
use crate::telemetry::metrics::names;

/// The upload routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(upload)).routes(routes!(upload_form)).layer(DefaultBodyLimit::disable())
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
    /// True when the caller had already uploaded these bytes: the ID is that earlier upload's
    /// (a retry is idempotent). Another caller's identical bytes share storage invisibly: a new ID
    /// and `false`.
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
    /// A client hint only; the token decides who uploads. At most 1024 bytes (400 `user_id_too_long`).
    #[schema(max_length = 1024)]
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
    /// A client hint only. At most 1024 bytes (400 `invalid_multipart`).
    #[schema(max_length = 1024)]
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
    responses((status = 200, description = "Stored, or the caller's earlier upload of the same bytes (`deduped`)", body = UploadResponse), UploadErrors, Shredding, AuthErrors))]
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
    let slot = if is_json {
        state.limits.buffered_upload_slot(&owner).await?
    } else {
        state.limits.upload_slot(&owner).await?
    };
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
            expected: None,
        };
        state.service.upload(caller.0.clone(), upload, body_stream(request.into_body()), slot).await.map_err(Into::into)
    })?;
    Ok(Json(upload_response(&state, ingested).await?))
}

/// Upload with the jan v2 multipart form (`file`, `user_id`).
#[utoipa::path(post, path = "/v1/media/upload", tag = "media", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "Stored, or the caller's earlier upload of the same bytes (`deduped`)", body = UploadResponse), UploadErrors, Shredding, AuthErrors))]
async fn upload_form(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    request: Request,
) -> Result<Json<UploadResponse>, ApiError> {
    let content_type = header_text(request.headers(), header::CONTENT_TYPE).unwrap_or_default();
    let slot = state.limits.upload_slot(&caller.0.owner()).await?;
    let request = with_upload_deadline(&state, request);
    let ingested = counted(upload_multipart(&state, caller.0.clone(), slot, &content_type, request).await)?;
    Ok(Json(upload_response(&state, ingested).await?))
}

/// Counts an upload's outcome (`media_uploads_total`, `media_upload_bytes_total`, rejections by code).
pub fn counted(result: Result<Ingested, ApiError>) -> Result<Ingested, ApiError> {
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
    let limits = BodyTimeouts::of(&state.config);
    request.map(|body| body_with_deadline(body, limits))
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
    let service = &state.service;
    match jan.source.kind.to_ascii_lowercase().as_str() {
        "data_url" | "dataurl" | "datauri" | "data_uri" => {
            let data_url = jan.source.data_url.ok_or_else(|| {
                ApiError::bad_request("invalid_source", "source.data_url is required for a data_url source")
            })?;
            Ok(service.upload_data_url(caller, data_url, filename, jan.user_id, slot).await?)
        }
        "remote_url" | "remote" | "remoteuri" | "remote_uri" | "url" => {
            let url = jan.source.url.ok_or_else(|| {
                ApiError::bad_request("invalid_source", "source.url is required for a remote_url source")
            })?;
            Ok(service.upload_remote(caller, &url, filename, jan.user_id, slot).await?)
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
    let boundary = form::boundary(content_type)?;
    let max_bytes = state.config.max_bytes;
    let form_length = content_length(request.headers());
    if form_length.is_some_and(|length| length > form::whole_body_max(max_bytes)) {
        return Err(ApiError::TooLarge { limit: max_bytes });
    }
    let reached = form::FileReached::default();
    let stream = form::guard(request.into_body().into_data_stream(), reached.clone());
    let mut multipart = Multipart::new(stream.boxed(), &boundary, form::whole_body_max(max_bytes));
    let mut user_hint = None;
    let mut filename = None;
    for _ in 0..=form::MAX_PARTS_BEFORE_FILE {
        let part = multipart.next_part().await.map_err(|e| form::refusal(e, max_bytes))?;
        let Some(part) = part else {
            return Err(ApiError::bad_request("missing_file", "the multipart body has no `file` part"));
        };
        match part.name.as_deref() {
            Some("file") => {
                reached.set();
                let length =
                    form_length.and_then(|form| form::file_length_guess(form, multipart.consumed(), &boundary));
                let (body, after) = multipart.into_body_and_after();
                let io = |slice: Result<Bytes, _>| slice.map_err(std::io::Error::other);
                let upload = Upload {
                    declared: part.content_type.map(|m| (DeclaredBy::Part, m)).into_iter().collect(),
                    filename: part.filename.as_deref().and_then(clean_filename).or(filename),
                    user_hint,
                    content_length: None,
                    // Past the limit the body is refused as it streams, as without a guess.
                    expected: length
                        .filter(|&length| length <= max_bytes)
                        .map(|length| Expected { length, after: after.map(io).boxed() }),
                };
                return Ok(state.service.upload(caller, upload, body.map(io).boxed(), slot).await?);
            }
            Some("user_id") => user_hint = Some(small_text(&mut multipart, max_bytes).await?),
            Some("filename") => filename = clean_filename(&small_text(&mut multipart, max_bytes).await?),
            _ => {}
        }
    }
    Err(ApiError::bad_request(
        "too_many_parts",
        format!("the multipart body has more than {} parts before its `file` part", form::MAX_PARTS_BEFORE_FILE),
    ))
}

/// A short text part (at most [`form::TEXT_PART_MAX`] bytes).
async fn small_text(multipart: &mut Multipart, max_bytes: u64) -> Result<String, ApiError> {
    let text = multipart.text(form::TEXT_PART_MAX as usize).await.map_err(|e| form::refusal(e, max_bytes))?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

pub async fn upload_response(state: &AppState, ingested: Ingested) -> Result<UploadResponse, ApiError> {
    let link = state.service.presign(&ingested.record, state.config.presign_ttl).await?;
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
