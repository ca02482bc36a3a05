//! `POST /v1/media/resolve`: turns media IDs inside any JSON into fresh presigned URLs (the
//! scanning and substitution are [`crate::media::resolve`]'s).
//!
//! `{"payload": <any JSON>}` comes back with the same structure, where every `data:<mime>;jan_<id>`
//! placeholder inside a string (any mime) and every string that is exactly an ID is replaced by a
//! presigned URL; everything else is untouched, so a payload without placeholders comes back equal.
//! `{"ids": [...]}` answers `{"media": [{id, presigned_url, expires_at}]}`. All IDs of a call are
//! looked up in one query, scoped to the caller's tenant; one unknown or foreign ID fails the whole
//! call with a 404 naming it. Body size (`MEDIA_RESOLVE_MAX_BYTES`), nesting depth (64) and the
//! number of distinct IDs (`MEDIA_RESOLVE_MAX_IDS`) are bounded (400 beyond them).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::media::ready;
use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, CanRead};
use crate::http::openapi::{AuthErrors, NotFound, PendingErrors};
use crate::http::request::read_limited;
use crate::http::state::AppState;
use crate::media::resolve::{listed_ids, payload_ids, substitute};
use crate::telemetry::metrics::names;

/// The resolve route.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(resolve)).layer(DefaultBodyLimit::disable())
}

/// What to resolve: a whole payload, or a list of IDs.
#[derive(ToSchema)]
#[allow(dead_code)]
enum ResolveRequest {
    /// `{"payload": <any JSON>}`: every `data:<mime>;jan_<id>` placeholder and every string that
    /// is exactly a `jan_<id>` is replaced by a presigned URL.
    Payload {
        #[schema(value_type = Object)]
        payload: Value,
    },
    /// `{"ids": ["jan_…", …]}`.
    Ids { ids: Vec<String> },
}

/// One resolved ID.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ResolvedMedia {
    id: String,
    presigned_url: String,
    /// The same URL (jan v2 name).
    url: String,
    expires_at: DateTime<Utc>,
}

/// The answer: the payload with URLs in place, or one entry per requested ID.
#[derive(ToSchema)]
#[allow(dead_code)]
enum ResolveResponse {
    /// For a `payload` request: the same JSON, placeholders replaced.
    Payload {
        #[schema(value_type = Object)]
        payload: Value,
    },
    /// For an `ids` request.
    Media { media: Vec<ResolvedMedia> },
}

/// Presigned URLs for `ids` in the caller's tenant (one query), or 404 naming the first missing one.
async fn presign_all(
    state: &AppState,
    caller: &Arc<Principal>,
    ids: &BTreeSet<String>,
) -> Result<HashMap<String, (String, DateTime<Utc>)>, ApiError> {
    metrics::histogram!(names::RESOLVE_PLACEHOLDERS).record(ids.len() as f64);
    let found = state.service.find_many(caller, ids).await?;
    let mut urls = HashMap::with_capacity(found.len());
    for found in found {
        let record = ready(state, caller, found).await?;
        let link = state.service.presign(&record, state.config.presign_ttl).await?;
        urls.insert(record.id, (link.url, link.expires_at));
    }
    Ok(urls)
}

/// Replaces every `jan_*` placeholder of a JSON payload (or a list of IDs) by presigned URLs, with
/// one database query for the whole call; an unknown or foreign ID fails the call with 404 naming it.
#[utoipa::path(post, path = "/v1/media/resolve", tag = "resolve", security(("bearer" = [])),
    request_body = ResolveRequest,
    responses((status = 200, body = ResolveResponse), NotFound, PendingErrors, AuthErrors))]
async fn resolve(
    State(state): State<AppState>,
    caller: Authenticated<CanRead>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let limit = state.config.resolve_max_bytes;
    let body = read_limited(body, limit).await.map_err(|err| match err {
        ApiError::TooLarge { .. } => {
            ApiError::bad_request("payload_too_large", format!("the request body is larger than {limit} bytes"))
        }
        other => other,
    })?;
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}")))?;
    let max_ids = state.config.resolve_max_ids;
    if let Some(ids) = request.get("ids") {
        let list: Vec<String> = serde_json::from_value(ids.clone())
            .map_err(|_| ApiError::bad_request("invalid_request", "ids must be an array of strings"))?;
        let unique = listed_ids(&list, max_ids)?;
        let urls = presign_all(&state, &caller.0, &unique).await?;
        let media: Vec<Value> = list
            .iter()
            .map(|id| {
                let (url, expires_at) = &urls[id];
                json!({ "id": id, "presigned_url": url, "url": url, "expires_at": expires_at })
            })
            .collect();
        return Ok(Json(json!({ "media": media })));
    }
    let Some(mut payload) = request.get("payload").cloned() else {
        return Err(ApiError::bad_request("invalid_request", "the body must be {\"payload\": …} or {\"ids\": […]}"));
    };
    let ids = payload_ids(&payload, max_ids)?;
    if ids.is_empty() {
        metrics::histogram!(names::RESOLVE_PLACEHOLDERS).record(0.0);
        return Ok(Json(json!({ "payload": payload })));
    }
    let urls = presign_all(&state, &caller.0, &ids).await?;
    let urls: HashMap<String, String> = urls.into_iter().map(|(id, (url, _))| (id, url)).collect();
    substitute(&mut payload, &urls);
    Ok(Json(json!({ "payload": payload })))
}
