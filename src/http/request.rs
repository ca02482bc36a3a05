//! Small request-reading helpers the routes share: a whole (small) body read within a limit, and
//! header values as text.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::error::ApiError;

/// Reads a whole (small) body, refusing it past `limit`.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge { limit }),
        Err(_) => Err(ApiError::bad_request("upload_interrupted", "the request body could not be read to its end")),
    }
}

pub fn header_text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}
