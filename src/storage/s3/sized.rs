//! A body streamed from its source into one S3 request — of announced length (a `PutObject` of a
//! `Content-Length` upload, a part sent while it fills), or of unknown length below a bound (a
//! `PutObject` sent with `Transfer-Encoding: chunked`, see `chunked`): what it passed, whether it
//! ended, and the source's error when it failed, are kept for the caller, which tells a failing
//! client from a failing store by them.
//!
//! It also keeps the time the request has been waiting on the store ([`Stall`]): from handing a
//! chunk over until the request asks for the next one. The HTTP client asks again once the chunk
//! is on its way (its write buffer has room), so a store that stops reading the request leaves the
//! body unasked, and the client's body unread, for as long as it likes; the caller gives up on the
//! request when that lasts too long ([`Stall::exceeded`]). After the last byte, the wait for the
//! store's answer counts the same way. Time spent waiting for the source (a slow client) is not
//! counted: the upload's own deadlines bound it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::time::Instant;

use crate::storage::ByteStream;

/// A body streamed into one request: it counts what it passes, fails when the source does, when
/// the source runs past `length`, or (`exact`) ends before it, and keeps the source's error for the
/// caller. `Sync` (which the SDK requires) through a mutex only ever reached through `&mut`.
pub(super) struct SizedBody {
    inner: Mutex<ByteStream>,
    /// The announced length (`exact`), or the most the body may hold.
    length: u64,
    exact: bool,
    /// Bytes passed so far.
    pub(super) sent: Arc<AtomicU64>,
    /// Whether the source ended cleanly (every byte handed over).
    pub(super) ended: Arc<AtomicBool>,
    /// Whether the body failed: asked again, it fails again, never ends cleanly.
    failed: bool,
    /// The source's error, when it failed.
    pub(super) failure: Arc<Mutex<Option<std::io::Error>>>,
    /// Since when the request has held its last chunk without asking for the next.
    pub(super) stall: Arc<Stall>,
}

/// Since when a request has been waiting on the store, if it is (see the module docs).
#[derive(Default)]
pub(super) struct Stall {
    since: Mutex<Option<Instant>>,
}

impl Stall {
    fn set(&self, since: Option<Instant>) {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner) = since;
    }

    /// Completes once the request has waited on the store for `bound` in one go.
    pub(super) async fn exceeded(&self, bound: Duration) {
        loop {
            let since = *self.since.lock().unwrap_or_else(PoisonError::into_inner);
            match since {
                Some(since) if since.elapsed() >= bound => return,
                Some(since) => tokio::time::sleep_until(since + bound).await,
                None => tokio::time::sleep(bound).await,
            }
        }
    }
}

impl SizedBody {
    /// A body of exactly `length` bytes (sent with that `Content-Length`).
    pub(super) fn new(inner: ByteStream, length: u64) -> Self {
        Self {
            inner: Mutex::new(inner),
            length,
            exact: true,
            sent: Arc::default(),
            ended: Arc::default(),
            failed: false,
            failure: Arc::default(),
            stall: Arc::default(),
        }
    }

    /// The announced length, for a body of one.
    pub(super) fn exact_length(&self) -> Option<u64> {
        self.exact.then_some(self.length)
    }

    /// A body of unknown length, at most `bound` bytes (sent chunked).
    pub(super) fn at_most(inner: ByteStream, bound: u64) -> Self {
        Self { exact: false, ..Self::new(inner, bound) }
    }

    fn fail(&mut self, err: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
        self.failed = true;
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
        if this.ended.load(Ordering::Relaxed) {
            // Asked again after its end (the SDK's body wrappers may): the source is not polled again.
            return std::task::Poll::Ready(None);
        }
        if this.failed {
            // Asked again after a failure: a chunked body must never end cleanly after one.
            return std::task::Poll::Ready(Some(Err("the body failed".into())));
        }
        // Asked for more: whatever comes next, the store is not the one being waited for.
        this.stall.set(None);
        let inner = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match futures::ready!(inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                let sent = this.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if sent > this.length {
                    let why =
                        if this.exact { "the body is longer than announced" } else { "the body is past its bound" };
                    let err = std::io::Error::new(std::io::ErrorKind::InvalidData, why);
                    return std::task::Poll::Ready(Some(Err(this.fail(err))));
                }
                this.stall.set(Some(Instant::now()));
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(err)) => std::task::Poll::Ready(Some(Err(this.fail(err)))),
            None if this.exact && this.sent.load(Ordering::Relaxed) < this.length => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the body ended before its announced length",
                );
                std::task::Poll::Ready(Some(Err(this.fail(err))))
            }
            None => {
                // Every byte handed over: what is left is the store's answer. (hyper does not ask
                // again once the announced length is written; the last chunk's time then stands.)
                this.stall.set(Some(Instant::now()));
                this.ended.store(true, Ordering::Relaxed);
                std::task::Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.exact {
            true => http_body::SizeHint::with_exact(self.length),
            false => http_body::SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    const BOUND: Duration = Duration::from_secs(5);

    /// A body of two chunks, the second only once `go_on` is sent (a client that pauses).
    fn paused_body() -> (SizedBody, tokio::sync::oneshot::Sender<()>) {
        let (go_on, gate) = tokio::sync::oneshot::channel::<()>();
        let first = futures::stream::iter([Ok(Bytes::from_static(b"first"))]);
        let second = futures::stream::once(async move {
            gate.await.expect("gate");
            Ok(Bytes::from_static(b"second"))
        });
        (SizedBody::new(first.chain(second).boxed(), 11), go_on)
    }

    #[tokio::test]
    async fn a_body_asked_again_after_its_end_does_not_poll_its_source_again() {
        // An unfold panics when polled after its end; the SDK's body wrappers may ask again.
        let source =
            futures::stream::unfold(
                false,
                |done| async move { (!done).then(|| (Ok(Bytes::from_static(b"all")), true)) },
            );
        let mut body = SizedBody::at_most(source.boxed(), 10);
        assert_eq!(body.frame().await.expect("a frame").expect("data").into_data().expect("data"), "all");
        assert!(body.frame().await.is_none(), "the end");
        assert!(body.frame().await.is_none(), "still the end, the source left alone");
        assert!(body.ended.load(Ordering::Relaxed));

        // A body whose source failed fails again when asked again, and never ends.
        let failing = futures::stream::iter([Err(std::io::Error::other("gone"))]);
        let mut body = SizedBody::at_most(failing.boxed(), 10);
        assert!(body.frame().await.expect("a frame").is_err());
        assert!(body.frame().await.expect("still a frame").is_err(), "not a clean end");
        assert!(!body.ended.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_the_request_does_not_follow_up_counts_as_waiting_on_the_store() {
        let (mut body, _go_on) = paused_body();
        body.frame().await.expect("a frame").expect("data");
        let started = Instant::now();
        // The request holds "first" and asks for nothing more: the store is being waited for.
        tokio::time::timeout(BOUND * 2, body.stall.exceeded(BOUND)).await.expect("the stall was noticed");
        assert_eq!(started.elapsed(), BOUND, "given up exactly one bound after the chunk was handed over");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_a_pausing_client_is_not_waiting_on_the_store() {
        let (mut body, go_on) = paused_body();
        body.frame().await.expect("a frame").expect("data");
        let stall = body.stall.clone();
        // The request asks for the next chunk, which the client sends only after 4 bounds.
        let reader = tokio::spawn(async move { body.frame().await.expect("a frame").expect("data") });
        let client = tokio::spawn(async move {
            tokio::time::sleep(BOUND * 4).await;
            go_on.send(()).expect("the body still waits");
        });
        tokio::select! {
            () = stall.exceeded(BOUND) => panic!("a client's pause was held against the store"),
            read = reader => assert_eq!(read.expect("reader").into_data().expect("data"), "second"),
        }
        client.await.expect("client");
        // Once "second" is handed over and not followed up, the store is waited for again.
        let handed = Instant::now();
        stall.exceeded(BOUND).await;
        assert_eq!(handed.elapsed(), BOUND);
    }
}
