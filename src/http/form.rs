//! Multipart uploads: the reader ([`multipart`], which hands the file part on as slices of the
//! received chunks) and the bounds a form must keep.
//!
//! Everything before the `file` part (preamble, part headers, the short text parts) is small in
//! any real form, so [`guard`] counts the body's bytes until the handler reaches the `file` part
//! and stops the body with [`PrefixTooLarge`] when a chunk arrives after more than [`PREFIX_MAX`]
//! went by: a request holds at most that much plus one chunk (the server's read buffer) before its
//! file streams; a chunk carrying the last headers and the file's first bytes together always
//! passes. After the file part the handler reads no further, unless the blob store asks for the
//! bytes after it: a file streamed under a length guessed from the form's `Content-Length`
//! ([`file_length_guess`]) that turned out shorter is made up with them (`BlobStore::put_expecting`).
//!
//! Beside that byte bound: at most [`MAX_PARTS_BEFORE_FILE`] parts may come before the file, the
//! text parts are at most [`TEXT_PART_MAX`] bytes each, a part's headers at most
//! [`multipart::HEADERS_MAX`], and the whole body at most the upload limit plus [`FORM_OVERHEAD`]
//! ([`whole_body_max`]): a `Content-Length` past it is refused before a byte is read, and the
//! reader stops a chunked body past it. Every refusal is an [`ApiError`] with a stable code
//! ([`refusal`]).

pub mod multipart;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::error::ApiError;
use crate::media::error::is_timeout;

/// Bytes of a multipart body allowed before its `file` part begins.
pub const PREFIX_MAX: u64 = 64 * 1024;

/// Parts allowed before the `file` part (a real form has one or two: `user_id`, `filename`).
pub const MAX_PARTS_BEFORE_FILE: usize = 16;

/// Longest text part (`user_id`, `filename`).
pub const TEXT_PART_MAX: u64 = 1024;

/// What a whole form may carry beyond its file: the prefix, one read chunk past it, the part
/// headers and closing boundary of the file part.
pub const FORM_OVERHEAD: u64 = PREFIX_MAX + 1024 * 1024;

/// The largest multipart body accepted when files may be `max_bytes` long.
pub fn whole_body_max(max_bytes: u64) -> u64 {
    max_bytes.saturating_add(FORM_OVERHEAD)
}

/// The length of a form's file part, guessed from the form's `Content-Length` and `consumed`, the
/// bytes before the file's data, on the way curl, browsers and the usual libraries close a form:
/// the file is the last part and `CRLF--boundary--CRLF` follows it. `None` when the form is too
/// short for that. A part or an epilogue after the file makes the file shorter than the guess; a
/// closing delimiter without its line break, two bytes longer (see `storage::s3::expected`).
pub fn file_length_guess(form_length: u64, consumed: u64, boundary: &str) -> Option<u64> {
    let closing = "\r\n--".len() + boundary.len() + "--\r\n".len();
    form_length.checked_sub(consumed)?.checked_sub(closing as u64)
}

/// The boundary of a `multipart/form-data` content type (1 to 70 characters, RFC 2046).
pub fn boundary(content_type: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError::bad_request("invalid_multipart", format!("not a multipart form: {why}"));
    let mime: mime_guess::mime::Mime = content_type.parse().map_err(|_| invalid("the content type does not parse"))?;
    if mime.type_() != mime_guess::mime::MULTIPART || mime.subtype() != mime_guess::mime::FORM_DATA {
        return Err(invalid("the content type is not multipart/form-data"));
    }
    let boundary =
        mime.get_param(mime_guess::mime::BOUNDARY).ok_or_else(|| invalid("the content type has no boundary"))?;
    let boundary = boundary.as_str();
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(invalid("the boundary must be 1 to 70 characters long"));
    }
    Ok(boundary.to_owned())
}

/// The answer to a reader error: the prefix bound (413 `multipart_prefix_too_large`), the upload
/// deadlines (408 `upload_timeout`), the whole-body bound (413 `too_large`), a long text part or
/// anything malformed (400 `invalid_multipart`).
pub fn refusal(err: multipart::FormError, max_bytes: u64) -> ApiError {
    use multipart::FormError;
    match err {
        FormError::Source(source) if source.is::<PrefixTooLarge>() => {
            ApiError::FormPrefixTooLarge { limit: PREFIX_MAX }
        }
        FormError::Source(source) if is_timeout(source.as_ref()) => {
            ApiError::UploadTimeout { message: super::error::innermost_text(source.as_ref()) }
        }
        FormError::TooLarge { .. } => ApiError::TooLarge { limit: max_bytes },
        FormError::TextTooLong { max } => {
            ApiError::bad_request("invalid_multipart", format!("a text part is longer than {max} bytes"))
        }
        err => ApiError::bad_request("invalid_multipart", format!("the multipart body is malformed: {err}")),
    }
}

/// The body went past [`PREFIX_MAX`] before the `file` part began.
#[derive(Debug, thiserror::Error)]
#[error("more than {PREFIX_MAX} bytes before the file part")]
pub struct PrefixTooLarge;

/// Set by the handler once it holds the `file` part: the count stops mattering.
#[derive(Debug, Clone, Default)]
pub struct FileReached(Arc<AtomicBool>);

impl FileReached {
    /// The file part has begun.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// `body`, ended with [`PrefixTooLarge`] at the first chunk that comes after more than
/// [`PREFIX_MAX`] bytes while `reached` is not set.
pub fn guard<E>(
    body: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    reached: FileReached,
) -> impl Stream<Item = Result<Bytes, multipart::SourceError>> + Send + 'static
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut seen = 0u64;
    body.map(move |chunk| -> Result<Bytes, multipart::SourceError> {
        let chunk = chunk.map_err(|err| Box::new(err) as multipart::SourceError)?;
        if !reached.0.load(Ordering::Acquire) {
            if seen > PREFIX_MAX {
                return Err(Box::new(PrefixTooLarge));
            }
            seen += chunk.len() as u64;
        }
        Ok(chunk)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(sizes: &[usize]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures::stream::iter(sizes.iter().map(|n| Ok(Bytes::from(vec![b'x'; *n]))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn the_prefix_is_bounded_until_the_file_part_and_free_after() {
        let stopped: Vec<bool> =
            guard(chunks(&[40_000, 40_000, 10]), FileReached::default()).map(|c| c.is_err()).collect().await;
        assert_eq!(stopped, [false, false, true], "the third chunk comes after 80 KB");

        let reached = FileReached::default();
        let mut body = Box::pin(guard(chunks(&[1000, 100_000, 100_000]), reached.clone()));
        assert!(body.next().await.unwrap().is_ok());
        reached.set();
        assert!(body.next().await.unwrap().is_ok() && body.next().await.unwrap().is_ok());
    }

    #[test]
    fn a_file_length_is_guessed_for_a_form_closed_the_usual_way() {
        // 10 bytes before the file, 1000 of file, then CRLF--b--CRLF (4 + 1 + 4 bytes).
        assert_eq!(file_length_guess(10 + 1000 + 9, 10, "b"), Some(1000));
        assert_eq!(file_length_guess(10 + 8, 10, "b"), None, "too short for the closing delimiter");
        assert_eq!(file_length_guess(5, 10, "b"), None);
    }

    #[test]
    fn boundaries_come_from_a_multipart_form_data_type_only() {
        let ok = boundary("multipart/form-data; boundary=----abc").expect("a boundary");
        assert_eq!(ok, "----abc");
        assert_eq!(boundary("multipart/form-data; boundary=\"a b\"").expect("quoted"), "a b");
        for bad in [
            "image/png",
            "multipart/form-data",
            "multipart/mixed; boundary=x",
            &format!("multipart/form-data; boundary={}", "b".repeat(71)),
        ] {
            let err = boundary(bad).expect_err(bad);
            assert_eq!(err.code(), "invalid_multipart", "{bad}");
        }
    }
}
