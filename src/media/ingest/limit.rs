//! Size limits enforced while streaming.
//!
//! [`limit_stream`] passes chunks through until the running total would exceed the limit, then ends
//! the stream with an error the blob store treats as a failed source (nothing is stored). The caller
//! recognises that error with [`is_limit_exceeded`] to answer 413.

use futures::StreamExt;

use crate::storage::ByteStream;

/// The error a limited stream ends with when the limit is passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body is larger than the limit of {limit} bytes")]
pub struct LimitExceeded {
    /// The limit in bytes.
    pub limit: u64,
}

/// Wraps `body` so that it fails as soon as more than `limit` bytes have flowed.
pub fn limit_stream(body: ByteStream, limit: u64) -> ByteStream {
    let mut seen = 0u64;
    body.map(move |chunk| {
        let chunk = chunk?;
        seen = seen.saturating_add(chunk.len() as u64);
        if seen > limit {
            return Err(std::io::Error::other(LimitExceeded { limit }));
        }
        Ok(chunk)
    })
    .boxed()
}

/// The limit that was passed, when `err` comes from a [`limit_stream`].
pub fn is_limit_exceeded(err: &std::io::Error) -> Option<u64> {
    err.get_ref().and_then(|inner| inner.downcast_ref::<LimitExceeded>()).map(|e| e.limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures::stream;

    fn chunks(sizes: &[usize]) -> ByteStream {
        let items: Vec<Result<Bytes, std::io::Error>> = sizes.iter().map(|n| Ok(Bytes::from(vec![7u8; *n]))).collect();
        stream::iter(items).boxed()
    }

    #[tokio::test]
    async fn a_body_at_the_limit_passes_whole() {
        let out: Vec<_> = limit_stream(chunks(&[4, 6]), 10).collect().await;
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(Result::is_ok));
    }

    #[tokio::test]
    async fn the_chunk_that_passes_the_limit_becomes_an_error() {
        let mut limited = limit_stream(chunks(&[4, 6, 1, 5]), 10);
        assert!(limited.next().await.unwrap().is_ok());
        assert!(limited.next().await.unwrap().is_ok());
        let err = limited.next().await.unwrap().unwrap_err();
        assert_eq!(is_limit_exceeded(&err), Some(10));
        let other = std::io::Error::other("client went away");
        assert_eq!(is_limit_exceeded(&other), None);
    }
}
