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
//!
//! Memory: the body is read against the process's resolve budget (`MEDIA_RESOLVE_BUDGET`, 503
//! `busy` past it), charged twice — the body and its rewritten copy, the only two buffers a call
//! holds (the payload is scanned and rewritten as text, see [`crate::media::resolve`]) — and the
//! charge is held until the answer has been handed to the connection.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::media::ready;
use crate::auth::Principal;
use crate::http::admission::Charge;
use crate::http::error::ApiError;
use crate::http::extract::{Authenticated, CanRead};
use crate::http::openapi::{AuthErrors, NotFound, PendingErrors};
use crate::http::request::{content_length, read_charged};
use crate::http::state::AppState;
use crate::media::resolve::{listed_ids, payload_ids, rewrite, MAX_DEPTH};
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

/// A resolve request's two forms, each left as raw JSON text inside the body (never parsed to a tree).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ids: Option<&'a RawValue>,
}

/// A member that is there, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// Replaces every `jan_*` placeholder of a JSON payload (or a list of IDs) by presigned URLs, with
/// one database query for the whole call; an unknown or foreign ID fails the call with 404 naming it.
#[utoipa::path(post, path = "/v1/media/resolve", tag = "resolve", security(("bearer" = [])),
    request_body = ResolveRequest,
    responses((status = 200, body = ResolveResponse), NotFound, PendingErrors, AuthErrors))]
async fn resolve(
    State(state): State<AppState>,
    caller: Authenticated<CanRead>,
    request: Request,
) -> Result<Response, ApiError> {
    let limit = state.config.resolve_max_bytes;
    let mut charge = state.limits.resolve_budget.charge();
    let length = content_length(request.headers());
    // Charged twice: the body, and the rewritten copy that is sent back.
    let body = read_charged(request.into_body(), limit, length, &mut charge, 2).await.map_err(|err| match err {
        ApiError::TooLarge { .. } => {
            ApiError::bad_request("payload_too_large", format!("the request body is larger than {limit} bytes"))
        }
        other => other,
    })?;
    let invalid_json = |e: &dyn std::fmt::Display| {
        ApiError::bad_request("invalid_json", format!("the request body is not valid JSON: {e}"))
    };
    let text = std::str::from_utf8(&body).map_err(|e| invalid_json(&e))?;
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| match e.to_string() {
        deep if deep.starts_with("recursion limit exceeded") => ApiError::from(crate::media::MediaError::invalid(
            "payload_too_deep",
            format!("the payload is nested deeper than {MAX_DEPTH} levels"),
        )),
        _ => invalid_json(&e),
    })?;
    let max_ids = state.config.resolve_max_ids;
    if let Some(ids) = envelope.ids {
        let (list, unique) = listed_ids(ids.get(), max_ids)?;
        let urls = presign_all(&state, &caller.0, &unique).await?;
        let media: Vec<Value> = list
            .iter()
            .map(|id| {
                let (url, expires_at) = &urls[id];
                json!({ "id": id, "presigned_url": url, "url": url, "expires_at": expires_at })
            })
            .collect();
        return Ok(Json(json!({ "media": media })).into_response());
    }
    let Some(payload) = envelope.payload else {
        return Err(ApiError::bad_request("invalid_request", "the body must be {\"payload\": …} or {\"ids\": […]}"));
    };
    let ids = payload_ids(payload.get(), max_ids)?;
    let rewritten = if ids.is_empty() {
        metrics::histogram!(names::RESOLVE_PLACEHOLDERS).record(0.0);
        payload.get().to_owned()
    } else {
        let urls = presign_all(&state, &caller.0, &ids).await?;
        let urls: HashMap<String, String> = urls.into_iter().map(|(id, (url, _))| (id, url)).collect();
        rewrite(payload.get(), &urls)
    };
    drop(body);
    Ok(charged_json(format!("{{\"payload\":{rewritten}}}"), charge))
}

/// A JSON response sent in slices of the one buffer, holding `charge` until the last slice has
/// been taken by the connection (a slow reader keeps its answer charged against the budget).
fn charged_json(json: String, charge: Charge) -> Response {
    const SLICE: usize = 64 * 1024;
    let json = Bytes::from(json);
    let length = HeaderValue::from(json.len());
    let slices = (0..json.len()).step_by(SLICE).map(move |at| json.slice(at..(at + SLICE).min(json.len())));
    let stream = futures::stream::iter(slices).map(move |slice| {
        let _held = &charge;
        Ok::<_, std::convert::Infallible>(slice)
    });
    let headers =
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::CONTENT_LENGTH, length)];
    (headers, Body::from_stream(stream)).into_response()
}
