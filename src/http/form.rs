//! A bound on what the multipart parser holds in memory. `multer` buffers until it finds what it is
//! looking for — the first boundary, the end of a part's headers — so a body whose boundary never
//! comes (or whose headers never end) would grow its buffer without limit. Only the `file` part's
//! data is streamed; everything before it (preamble, part headers, the short text parts) is small
//! in any real form. [`guard`] counts the body's bytes until the handler reaches the `file` part
//! and stops the body with [`PrefixTooLarge`] when a chunk arrives after more than [`PREFIX_MAX`]
//! went by, so a request holds at most that much plus one chunk (the server's read buffer) before
//! its file streams; a chunk carrying the last headers and the file's first bytes together always
//! passes. After the file part the handler reads no further.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Bytes of a multipart body allowed before its `file` part begins.
pub const PREFIX_MAX: u64 = 64 * 1024;

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
) -> impl Stream<Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
where
    E: std::error::Error + Send + Sync + 'static,
{
    let mut seen = 0u64;
    body.map(move |chunk| -> Result<Bytes, Box<dyn std::error::Error + Send + Sync>> {
        let chunk = chunk.map_err(|err| Box::new(err) as Box<dyn std::error::Error + Send + Sync>)?;
        if !reached.0.load(Ordering::Acquire) {
            if seen > PREFIX_MAX {
                return Err(Box::new(PrefixTooLarge));
            }
            seen += chunk.len() as u64;
        }
        Ok(chunk)
    })
}

/// Whether a parser error came from [`guard`] stopping the body.
pub fn is_prefix_too_large(err: &multer::Error) -> bool {
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
}
