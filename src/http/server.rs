//! The accept loop: HTTP/1.1 connections, plain or TLS, each served by hyper in its own tracked
//! task, with the connection limits axum's `serve` does not expose (request-head size, head read
//! timeout) and a shutdown that knows its connections.
//!
//! Shutdown ([`Server::run`] after `stop` completes): the listener closes at once; every connection
//! is told to finish its current request and close; after `grace` (`SHUTDOWN_TIMEOUT`) the
//! connections still open are dropped, which ends their request bodies, so interrupted uploads fail
//! in the pipeline and abort their multipart uploads. The caller then drains the pipeline
//! ([`crate::media::ingest::pipeline::Pipeline::drain`]) before the process exits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Time a client has to send a request head (slow-loris bound) and to finish a TLS handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Connection settings.
#[derive(Clone)]
pub struct ServerOptions {
    /// Largest request head in bytes (hyper answers 431 past it).
    pub max_header_bytes: usize,
    /// Connections served at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// TLS, when serving HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A listener and the router it serves.
pub struct Server {
    listener: TcpListener,
    router: Router,
    options: ServerOptions,
}

impl Server {
    /// A server for `router` on an already bound listener.
    pub fn new(listener: TcpListener, router: Router, options: ServerOptions) -> Self {
        Self { listener, router, options }
    }

    /// Serves until `stop` completes, then drains (see the module docs). Returns how many
    /// connections had to be dropped at the end of `grace`.
    pub async fn run(self, stop: impl Future<Output = ()>, grace: Duration) -> usize {
        let connections = TaskTracker::new();
        let finish = CancellationToken::new();
        let abort = CancellationToken::new();
        let tls = self.options.tls.clone().map(TlsAcceptor::from);
        let open = Arc::new(tokio::sync::Semaphore::new(self.options.max_connections));
        tokio::pin!(stop);
        loop {
            // At the connection limit, stop accepting until one closes (backpressure, no busy loop).
            let permit = tokio::select! {
                () = &mut stop => break,
                permit = open.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = &mut stop => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                router: self.router.clone(),
                peer,
                max_header_bytes: self.options.max_header_bytes,
                finish: finish.clone(),
                abort: abort.clone(),
            };
            let tls = tls.clone();
            let stopping = finish.clone();
            connections.spawn(async move {
                let _permit = permit;
                let Some(acceptor) = tls else { return conn.serve(stream).await };
                // A handshake still running at shutdown is abandoned: no request was sent yet.
                let handshake = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream));
                tokio::select! {
                    result = handshake => match result {
                        Ok(Ok(stream)) => conn.serve(stream).await,
                        Ok(Err(err)) => tracing::debug!(%peer, error = %err, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                    () = stopping.cancelled() => {}
                }
            });
        }
        drop(self.listener);
        connections.close();
        finish.cancel();
        tracing::info!(connections = connections.len(), "listener closed; finishing in-flight requests");
        if tokio::time::timeout(grace, connections.wait()).await.is_ok() {
            return 0;
        }
        let dropped = connections.len();
        tracing::warn!(connections = dropped, "shutdown timeout passed: dropping the remaining connections");
        abort.cancel();
        connections.wait().await;
        dropped
    }
}

/// One accepted connection.
struct Connection {
    router: Router,
    peer: SocketAddr,
    max_header_bytes: usize,
    finish: CancellationToken,
    abort: CancellationToken,
}

impl Connection {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Self { router, peer, max_header_bytes, finish, abort } = self;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(HEAD_TIMEOUT).max_buf_size(max_header_bytes);
        let mut connection = builder.serve_connection(TokioIo::new(stream), service);
        let mut run = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
        let result = tokio::select! {
            result = &mut run => result,
            () = finish.cancelled() => {
                drop(run);
                std::pin::Pin::new(&mut connection).graceful_shutdown();
                let run = std::future::poll_fn(|cx| connection.poll_without_shutdown(cx));
                tokio::select! {
                    result = run => result,
                    () = abort.cancelled() => return,
                }
            }
        };
        match result {
            Ok(()) => {
                let io = connection.into_parts().io.into_inner();
                tokio::select! {
                    () = linger(io) => {}
                    () = abort.cancelled() => {}
                }
            }
            Err(err) => tracing::debug!(%peer, error = %err, "connection ended with an error"),
        }
    }
}

/// How long, and how many bytes, a closed connection's unread request body is drained for.
const LINGER_TIME: Duration = Duration::from_secs(10);
const LINGER_BYTES: u64 = 256 * 1024 * 1024;

/// Closes a connection the way a client can read: hyper ends a connection whose request body
/// was not read (an upload refused with 413, 429 or 503 before its body), and closing a socket
/// with unread data makes the kernel send a reset that destroys the response the client has not
/// read yet. So the write side is shut (the response is complete) and what the client is still
/// sending is read and discarded for a bounded time before the socket closes ("lingering close").
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut rest = (&mut io).take(LINGER_BYTES);
    let _ = tokio::time::timeout(LINGER_TIME, tokio::io::copy(&mut rest, &mut tokio::io::sink())).await;
}
