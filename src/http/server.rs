//! The accept loop: HTTP/1.1 connections, plain or TLS, each served by hyper in its own tracked
//! task, with the connection limits axum's `serve` does not expose and a shutdown that knows its
//! connections.
//!
//! Limits: `max_connections` connections at once (past it new ones wait in the kernel's backlog);
//! per client network at most `max_connections_per_ip` ([`PerIpConnections`]: one more is closed
//! as soon as it is accepted, without a TLS handshake, and never holds one of the global slots, so
//! one client's idle connections cannot keep health probes from other addresses out); a request
//! head of at most `max_header_bytes`; and `keepalive_timeout` without a complete request head
//! closes the connection. That last one is hyper's `header_read_timeout`, which in hyper 1.12
//! (Cargo.lock) runs from the moment a connection can read a head: right after the accept, and
//! again right after each response of a kept-alive connection (`Conn::idle` wakes the reader, whose
//! `poll_read_head` starts the timer). So it bounds an idle keep-alive connection, a connection
//! that never sends anything, and a head that trickles in (slow loris) alike; the TLS handshake has
//! the same limit. A request being handled, or a body being read, is not timed here (the request
//! deadline and `MEDIA_UPLOAD_TIMEOUT` are).
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

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};

use super::send_timeout::SendTimeout;

use super::connections::PerIpConnections;
use crate::telemetry::metrics::names;
use crate::telemetry::throttle::LogEvery;

/// At most one log line a minute says connections are being refused over the per-IP cap.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Connection settings.
#[derive(Clone)]
pub struct ServerOptions {
    /// Largest request head in bytes (hyper answers 431 past it).
    pub max_header_bytes: usize,
    /// Connections served at once; past it new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Connections one client network may hold (0: no cap); past it a new one is closed at once.
    pub max_connections_per_ip: usize,
    /// Time without a complete request head after which a connection is closed (idle keep-alive,
    /// nothing sent, slow head), and the TLS handshake's limit.
    pub keepalive_timeout: Duration,
    /// Time a client may accept no byte of a response before it is disconnected.
    pub send_timeout: Duration,
    /// TLS, when serving HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What a [`Server`] serves: an HTTP service whose errors are responses, cloned for every request
/// (an `axum::Router`, or the layers around one). `Unpin`, service and futures alike, because the
/// server drives connections with `poll_without_shutdown` (it keeps the socket for a lingering
/// close), which requires it.
pub trait HttpService:
    Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin + 'static>
    + Clone
    + Send
    + Sync
    + Unpin
    + 'static
{
}

impl<T> HttpService for T where
    T: Service<Request, Response = Response, Error = Infallible, Future: Send + Unpin + 'static>
        + Clone
        + Send
        + Sync
        + Unpin
        + 'static
{
}

/// A listener and the service it serves.
pub struct Server<S> {
    listener: TcpListener,
    router: S,
    options: ServerOptions,
}

impl<S: HttpService> Server<S> {
    /// A server for `router` on an already bound listener.
    pub fn new(listener: TcpListener, router: S, options: ServerOptions) -> Self {
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
        let per_ip = PerIpConnections::new(self.options.max_connections_per_ip);
        let mut refusals = RefusalLog::default();
        let head_timeout = self.options.keepalive_timeout;
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
            let Some(counted) = per_ip.open(peer.ip()) else {
                // Closed before anything is read or spawned; the slot goes back at once.
                drop((stream, permit));
                refusals.record(peer);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                router: self.router.clone(),
                peer,
                max_header_bytes: self.options.max_header_bytes,
                head_timeout,
                send_timeout: self.options.send_timeout,
                finish: finish.clone(),
                abort: abort.clone(),
            };
            let tls = tls.clone();
            let stopping = finish.clone();
            connections.spawn(async move {
                let _held = (permit, counted, OpenConnection::new());
                let Some(acceptor) = tls else { return conn.serve(stream).await };
                // A handshake still running at shutdown is abandoned: no request was sent yet.
                let handshake = tokio::time::timeout(head_timeout, acceptor.accept(stream));
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

/// Counts and logs connections closed over the per-IP cap (the log at most once a minute).
struct RefusalLog(LogEvery);

impl Default for RefusalLog {
    fn default() -> Self {
        Self(LogEvery::new(REFUSAL_LOG_EVERY))
    }
}

impl RefusalLog {
    fn record(&mut self, peer: SocketAddr) {
        metrics::counter!(names::CONNECTIONS_REFUSED, "reason" => "per_ip").increment(1);
        if let Some(refused) = self.0.record() {
            tracing::warn!(
                %peer,
                refused,
                "closing connections over MEDIA_MAX_CONNECTIONS_PER_IP (behind a proxy, raise it or set 0)"
            );
        }
    }
}

/// The open-connections gauge's share of one connection.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        metrics::gauge!(names::CONNECTIONS_OPEN).increment(1.0);
        Self
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!(names::CONNECTIONS_OPEN).decrement(1.0);
    }
}

/// One accepted connection.
struct Connection<S> {
    router: S,
    peer: SocketAddr,
    max_header_bytes: usize,
    head_timeout: Duration,
    send_timeout: Duration,
    finish: CancellationToken,
    abort: CancellationToken,
}

impl<R: HttpService> Connection<R> {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(self, stream: S) {
        let Self { router, peer, max_header_bytes, head_timeout, send_timeout, finish, abort } = self;
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(head_timeout).max_buf_size(max_header_bytes);
        let stream = SendTimeout::new(stream, send_timeout);
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
            Err(err) if err.is_timeout() => {
                metrics::counter!(names::CONNECTIONS_TIMED_OUT).increment(1);
                tracing::debug!(%peer, "no request head within MEDIA_KEEPALIVE_TIMEOUT: connection closed");
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
