//! Direct uploads: `POST /v1/media/prepare-upload` answers a pending ID and a presigned PUT bound to
//! the type (and length, when given); `POST /v1/media/{id}/complete` verifies what was PUT (size,
//! sniffed type, hash), deduplicates it and marks it ready.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::media::MediaId;
use super::upload::{counted, upload_response, UploadResponse};
use crate::auth::Permission;
use crate::http::error::{ApiError, MediaIdPath};
use crate::http::extract::{Authenticated, CanWrite};
use crate::http::openapi::{AuthErrors, BadRequest, ErrorBody, NotFound, Shredding, UploadErrors};
use crate::http::request::read_limited;
use crate::http::state::AppState;
use crate::media::direct::{require_owner, PrepareRequest, Prepared};
use crate::media::ingest::pipeline::Ingested;
use crate::media::read::Found;

/// The direct-upload routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(prepare_upload)).routes(routes!(complete)).layer(DefaultBodyLimit::disable())
}

/// A direct upload to prepare.
#[derive(Debug, Deserialize, ToSchema)]
struct PrepareUpload {
    /// The type the file will have (jan v1 name).
    #[schema(example = "image/png")]
    mime_type: Option<String>,
    /// Same as `mime_type`.
    content_type: Option<String>,
    /// Exact size: the URL only accepts a body of this length. Required on S3 (400
    /// `bytes_required` without it); optional on the filesystem backend.
    bytes: Option<u64>,
    filename: Option<String>,
    /// A client hint only. At most 1024 bytes (400 `user_id_too_long`).
    #[schema(max_length = 1024)]
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
        (status = 415, description = "The type is not accepted", body = ErrorBody), Shredding, AuthErrors))]
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
    let request = PrepareRequest {
        declared_type: declared,
        bytes: request.bytes,
        filename: request.filename,
        user_hint: request.user_id,
    };
    let Prepared { record, link, ttl } = state.service.prepare(&caller.0, request).await?;
    Ok(Json(PreparedUpload {
        id: record.id,
        upload_url: link.url,
        method: link.method.to_string(),
        mime_type: record.mime,
        expires_in: ttl.as_secs(),
        expires_at: link.expires_at,
        headers: link.headers.into_iter().collect(),
    }))
}

/// Verifies a direct upload (size, sniffed type, hash), deduplicates it and marks it ready.
#[utoipa::path(post, path = "/v1/media/{id}/complete", tag = "media", security(("bearer" = [])), params(MediaId),
    responses((status = 200, body = UploadResponse),
        (status = 409, description = "Nothing was uploaded yet (`not_uploaded`), or the tenant is being shredded (`tenant_shredding`)", body = ErrorBody),
        UploadErrors, NotFound, AuthErrors))]
async fn complete(
    State(state): State<AppState>,
    caller: Authenticated<CanWrite>,
    MediaIdPath(id): MediaIdPath,
) -> Result<Json<UploadResponse>, ApiError> {
    let ingested = match state.service.find(&caller.0, &id).await? {
        // Already complete: the answer carries a download URL, so it needs read access.
        Found::Ready(record) => {
            caller.0.require(Permission::Read)?;
            Ingested { record, deduped: false }
        }
        Found::Pending(record) => {
            require_owner(&caller.0, &record)?;
            let slot = state.limits.upload_slot(&caller.0.owner()).await?;
            counted(state.service.verify_pending(caller.0.clone(), record, true, slot).await.map_err(Into::into))?
        }
    };
    Ok(Json(upload_response(&state, ingested).await?))
}
