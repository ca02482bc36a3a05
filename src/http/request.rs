//! Small request-reading helpers the routes share: a whole (small) body read within a limit, and
//! header values as text.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::BodyExt;

use super::admission::Charge;
use super::error::{innermost_text, ApiError};
use crate::media::error::is_timeout;

/// Reads a whole (small) body, refusing it past `limit`.
pub async fn read_limited(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::TooLarge { limit }),
        Err(err) if is_timeout(err.as_ref()) => Err(ApiError::UploadTimeout { message: innermost_text(err.as_ref()) }),
        Err(_) => Err(ApiError::bad_request("upload_interrupted", "the request body could not be read to its end")),
    }
}

/// Reads a whole body of at most `limit` bytes, charging `times` each byte against `charge` as it
/// arrives (not as `Content-Length` announces it: a slow sender holds only what it sent); 413 past
/// the limit (at once when `length` says so), 503 `busy` when the budget runs out. The chunks are
/// kept as they came and joined once at the end, so the body never holds more than twice its size
/// (never the doubling of a growing buffer), which a charge of `times` ≥ 2 covers.
pub async fn read_charged(
    mut body: Body,
    limit: u64,
    length: Option<u64>,
    charge: &mut Charge,
    times: u64,
) -> Result<Bytes, ApiError> {
    if length.is_some_and(|length| length > limit) {
        return Err(ApiError::TooLarge { limit });
    }
    let (mut chunks, mut total) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| match is_timeout(&err) {
            true => ApiError::UploadTimeout { message: innermost_text(&err) },
            false => ApiError::bad_request("upload_interrupted", "the request body could not be read to its end"),
        })?;
        let Ok(chunk) = frame.into_data() else { continue };
        total += chunk.len() as u64;
        if total > limit {
            return Err(ApiError::TooLarge { limit });
        }
        charge.grow(chunk.len() as u64 * times)?;
        chunks.push(chunk);
    }
    if chunks.len() == 1 {
        return Ok(chunks.swap_remove(0));
    }
    let mut joined = bytes::BytesMut::with_capacity(usize::try_from(total).unwrap_or(0));
    chunks.drain(..).for_each(|chunk| joined.extend_from_slice(&chunk));
    Ok(joined.freeze())
}

pub fn header_text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned)
}

pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}
