//! A bound on what the multipart parser holds in memory. `multer` buffers until it finds what it is
//! looking for — the first boundary, the end of a part's headers — so a body whose boundary never
//! comes (or whose headers never end) would grow its buffer without limit. Only the `file` part's
//! data is streamed; everything before it (preamble, part headers, the short text parts) is small
//! in any real form. [`guard`] counts the body's bytes until the handler reaches the `file` part
//! and stops the body with [`PrefixTooLarge`] when a chunk arrives after more than [`PREFIX_MAX`]
//! went by, so a request holds at most that much plus one chunk (the server's read buffer) before
//! its file streams; a chunk carrying the last headers and the file's first bytes together always
//! passes. After the file part the handler reads no further.
//!
//! Beside that byte bound: at most [`MAX_PARTS_BEFORE_FILE`] parts may come before the file, the
//! text parts are at most [`TEXT_PART_MAX`] bytes each, and the whole body may be at most the
//! upload limit plus [`FORM_OVERHEAD`] ([`whole_body_max`]): a `Content-Length` past it is refused
//! before a byte is read, and multer's own stream limit stops a chunked body past it. Every
//! refusal is an [`ApiError`] with a stable code ([`refusal`]).
//!
//! The parser reads every chunk the body has ready into its buffer before it looks at any of them;
//! on a fast connection that is whatever the socket holds, so its buffer grew by megabytes during a
//! large file part. [`guard`] hands it one chunk per poll (the next poll is `Pending` with an
//! immediate wake-up), so the parser holds at most about one chunk beside what it is searching.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
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

/// The parser's own limits: the whole body and the text parts.
pub fn constraints(max_bytes: u64) -> multer::Constraints {
    let limits = multer::SizeLimit::new()
        .whole_stream(whole_body_max(max_bytes))
        .for_field("user_id", TEXT_PART_MAX)
        .for_field("filename", TEXT_PART_MAX);
    multer::Constraints::new().size_limit(limits)
}

/// The answer to a parser error: the prefix bound (413 `multipart_prefix_too_large`), the upload
/// deadlines (408 `upload_timeout`), the whole-body bound (413 `too_large`), a long text part or
/// anything malformed (400 `invalid_multipart`).
pub fn refusal(err: &multer::Error, max_bytes: u64) -> ApiError {
    match err {
        _ if is_prefix_too_large(err) => ApiError::FormPrefixTooLarge { limit: PREFIX_MAX },
        _ if is_timeout(err) => ApiError::UploadTimeout { message: super::error::innermost_text(err) },
        multer::Error::StreamSizeExceeded { .. } => ApiError::TooLarge { limit: max_bytes },
        multer::Error::FieldSizeExceeded { .. } => {
            ApiError::bad_request("invalid_multipart", format!("a text part is longer than {TEXT_PART_MAX} bytes"))
        }
        _ => ApiError::bad_request("invalid_multipart", format!("the multipart body is malformed: {err}")),
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

/// A chunk of the body, or why it stopped.
type Chunk = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// `body`, ended with [`PrefixTooLarge`] at the first chunk that comes after more than
/// [`PREFIX_MAX`] bytes while `reached` is not set, one chunk per poll (see the module docs).
pub fn guard<E>(
    body: impl Stream<Item = Result<Bytes, E>> + Send + 'static,
    reached: FileReached,
) -> impl Stream<Item = Chunk> + Send + 'static
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut seen = 0u64;
    let counted = body.map(move |chunk| -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
        let chunk = chunk.map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)?;
        if !reached.0.load(Ordering::Acquire) {
            if seen > PREFIX_MAX {
                return Err(Box::new(PrefixTooLarge));
            }
            seen += chunk.len() as u64;
        }
        Ok(chunk)
    });
    OneChunkPerPoll { inner: counted.boxed(), yielded: false }
}

/// A stream that is `Pending` (and woken at once) after each chunk it yields.
struct OneChunkPerPoll {
    inner: BoxStream<'static, Chunk>,
    yielded: bool,
}

impl Stream for OneChunkPerPoll {
    type Item = Chunk;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        if std::mem::take(&mut self.yielded) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = self.inner.poll_next_unpin(cx);
        self.yielded = matches!(next, Poll::Ready(Some(_)));
        next
    }
}

/// Whether a parser error came from [`guard`] stopping the body.
fn is_prefix_too_large(err: &multer::Error) -> bool {
    matches!(err, multer::Error::StreamReadFailed(inner) if inner.is::<PrefixTooLarge>())
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

    #[tokio::test]
    async fn the_parser_gets_one_chunk_per_poll_even_when_more_are_ready() {
        let mut body = Box::pin(guard(chunks(&[10, 20]), FileReached::default()));
        let mut polls = Vec::new();
        loop {
            match futures::poll!(body.next()) {
                Poll::Ready(Some(chunk)) => polls.push(Some(chunk.expect("a chunk").len())),
                Poll::Ready(None) => break,
                Poll::Pending => polls.push(None),
            }
        }
        assert_eq!(polls, [Some(10), None, Some(20), None], "a pause after every chunk, every chunk once, in order");
    }
}
