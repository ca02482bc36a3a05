//! A bound on how long a connection may refuse the bytes of a response: a client that accepts
//! none of them for `MEDIA_SEND_TIMEOUT` (its receive window stays shut) is disconnected. Without
//! it a client that never reads could hold its connection slot, and whatever the response holds
//! (a resolve answer's share of the memory budget, a download's buffers), for as long as it likes.
//!
//! [`SendTimeout`] wraps a connection's stream: a write, flush or shutdown that stays pending for
//! the timeout fails with `TimedOut`, which ends the connection (hyper drops the response body, so
//! what it held is freed). Any progress restarts the clock; reads are untouched (request bodies
//! have their own deadlines, request heads hyper's).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner`, with writes that may stall at most `timeout`.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    /// Running while a write is pending; `None` when the last write made progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> SendTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, stalled: None }
    }

    /// Passes a write's outcome through: progress disarms the clock, a pending write arms it (once)
    /// and fails when it runs out.
    fn watch<T>(&mut self, cx: &mut Context<'_>, outcome: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = None;
            return outcome;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                metrics::counter!(crate::telemetry::metrics::names::SEND_TIMEOUTS).increment(1);
                let why = format!("the client accepted no byte of the response for {} s", timeout.as_secs());
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_fails_the_write_after_the_timeout_and_progress_restarts_it() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut stream = SendTimeout::new(near, Duration::from_secs(30));
        stream.write_all(&[1; 1024]).await.expect("fits the pipe");
        // The pipe is full; the far side reads 512 bytes 20 s later: progress, the clock restarts.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            let mut half = [0u8; 512];
            far.read_exact(&mut half).await.expect("read");
            far
        });
        stream.write_all(&[2; 512]).await.expect("written once the far side read");
        let _far = reader.await.expect("reader");
        let started = Instant::now();
        let err = stream.write_all(&[3; 512]).await.expect_err("nobody reads any more");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30), "failed after the timeout, not before");
    }
}
