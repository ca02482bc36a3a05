//! A body of announced length streamed from its source into one S3 request (a `PutObject` of a
//! `Content-Length` upload, a part sent while it fills): what it passed, and the source's error when
//! it failed, are kept for the caller, which tells a failing client from a failing store by them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures::StreamExt;

use crate::storage::ByteStream;

/// A body of announced length streamed into one request: it counts what it passes, fails when the
/// source does or when the source runs past `length`, and keeps the source's error for the caller.
/// `Sync` (which the SDK requires) through a mutex only ever reached through `&mut`.
pub(super) struct SizedBody {
    inner: Mutex<ByteStream>,
    length: u64,
    /// Bytes passed so far.
    pub(super) sent: Arc<AtomicU64>,
    /// The source's error, when it failed.
    pub(super) failure: Arc<Mutex<Option<std::io::Error>>>,
}

impl SizedBody {
    pub(super) fn new(inner: ByteStream, length: u64) -> Self {
        Self { inner: Mutex::new(inner), length, sent: Arc::default(), failure: Arc::default() }
    }

    fn fail(&self, err: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
        let message = err.to_string();
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(err);
        message.into()
    }
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let inner = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match futures::ready!(inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                let sent = this.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if sent > this.length {
                    let err = std::io::Error::new(std::io::ErrorKind::InvalidData, "the body is longer than announced");
                    return std::task::Poll::Ready(Some(Err(this.fail(err))));
                }
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(err)) => std::task::Poll::Ready(Some(Err(this.fail(err)))),
            None if this.sent.load(Ordering::Relaxed) < this.length => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the body ended before its announced length",
                );
                std::task::Poll::Ready(Some(Err(this.fail(err))))
            }
            None => std::task::Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}
