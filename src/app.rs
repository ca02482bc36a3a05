//! Start-up and the running server.
//!
//! [`Application::build`] does everything that can fail before traffic is accepted — bind the port
//! (port 0 picks a free one, which tests use), load the master keyring, connect and migrate the
//! database, open the blob store, load or generate dev keys, fetch the token issuers' keys — and [`Application::run_until_stopped`] serves until SIGINT/SIGTERM,
//! then lets in-flight requests finish for at most `SHUTDOWN_TIMEOUT`.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use url::Url;

use crate::auth::Authenticator;
use crate::config::{Config, StorageConfig};
use crate::crypto::keyring::Keyring;
use crate::db::audit::AuditLog;
use crate::db::Database;
use crate::http::admission::Limits;
use crate::http::routes::metrics::ScrapeState;
use crate::http::server::{Server, ServerOptions};
use crate::http::state::{AppState, Shared};
use crate::http::tls::ReloadingCert;
use crate::services::{Role, Services, StartupError};

/// A bound, ready-to-serve instance of the service.
pub struct Application {
    listener: TcpListener,
    port: u16,
    metrics_listener: Option<TcpListener>,
    tls: Option<Arc<ReloadingCert>>,
    state: AppState,
    /// The cache invalidation listener (Postgres).
    invalidation: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds, connects, migrates (unless disabled) and opens storage.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let metrics = crate::telemetry::metrics::install();
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| StartupError::Bind { addr, source })?;
        let metrics_listener = match config.ops.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?),
            None => None,
        };
        let tls = config.ops.tls.as_ref().map(ReloadingCert::load).transpose()?;
        let role = Role::Server { public_base: public_base(&config, local) };
        let Services { keyring, db, keys, media, blobs, pipeline, service, gate, .. } =
            Services::open(&config, role).await?;
        log_where_data_lives(&config, &db, &keyring, local);
        let invalidation = crate::db::notify::spawn_listener(&db, gate.clone(), media.clone(), keys.clone());
        let auth = Arc::new(Authenticator::new(&config.auth, &config.keys_dir, Some(AuditLog::new(keys.clone())))?);
        auth.start().await;
        let limits = Limits::new(&config).await.map_err(|e| StartupError::Limits(e.to_string()))?;
        let state = AppState(Arc::new(Shared {
            config: Arc::new(config),
            db,
            blobs,
            keyring,
            keys,
            media,
            auth,
            pipeline,
            service,
            cache_gate: gate,
            limits,
            metrics,
            scrape: ScrapeState::default(),
            readiness: Default::default(),
        }));
        Ok(Self { listener, port: local.port(), metrics_listener, tls, state, invalidation })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port of the separate metrics listener (`MEDIA_METRICS_ADDR`), when there is one.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.port())
    }

    /// The shared state (tests use it to reach the database and blob store directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish for
    /// at most `SHUTDOWN_TIMEOUT`, drops the connections still open and waits (bounded) for the
    /// uploads they carried to clean up — so no multipart upload is left behind.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        let config = state.config.clone();
        let sweeper = (!config.sweep_interval.is_zero()).then(|| {
            crate::jobs::sweep::spawn_background(
                state.pipeline.removal().clone(),
                config.presign_ttl,
                config.sweep_interval,
                config.reconcile_grace,
            )
        });
        if let Some(tls) = &self.tls {
            crate::http::tls::spawn_reloader(tls);
        }
        let upkeep =
            crate::telemetry::metrics::spawn_upkeep(state.metrics.clone(), crate::telemetry::metrics::UPKEEP_PERIOD);
        let stopping = tokio_util::sync::CancellationToken::new();
        let metrics_server = self.metrics_listener.map(|listener| {
            let server = Server::new(
                listener,
                crate::http::metrics_router(state.clone()),
                ServerOptions {
                    max_header_bytes: config.ops.max_header_bytes,
                    max_connections: 64,
                    max_connections_per_ip: 0,
                    keepalive_timeout: config.ops.keepalive_timeout,
                    send_timeout: config.ops.send_timeout,
                    tls: None,
                },
            );
            let stop = stopping.clone().cancelled_owned();
            tokio::spawn(async move { server.run(stop, Duration::from_secs(1)).await })
        });
        let options = ServerOptions {
            max_header_bytes: config.ops.max_header_bytes,
            max_connections: config.ops.max_connections,
            max_connections_per_ip: config.ops.max_connections_per_ip,
            keepalive_timeout: config.ops.keepalive_timeout,
            send_timeout: config.ops.send_timeout,
            tls: self.tls.as_ref().map(ReloadingCert::server_config),
        };
        let server = Server::new(self.listener, crate::http::router(self.state), options);
        let stop = async move {
            shutdown.await;
            tracing::info!(grace_seconds = config.shutdown_timeout.as_secs(), "stop requested");
        };
        let dropped = server.run(stop, state.config.shutdown_timeout).await;
        stopping.cancel();
        if let Some(sweeper) = &sweeper {
            sweeper.abort();
        }
        if let Some(invalidation) = &self.invalidation {
            invalidation.abort();
        }
        upkeep.abort();
        let unfinished = state.service.drain(UPLOAD_CLEANUP_GRACE).await;
        if unfinished > 0 {
            tracing::warn!(uploads = unfinished, "uploads still cleaning up at exit; the sweeper will finish them");
        }
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        state.media.close_read_lane().await;
        state.db.close().await;
        tracing::info!(dropped_connections = dropped, "stopped");
        Ok(())
    }
}

/// How long interrupted uploads get to abort their multipart uploads once the connections are gone.
const UPLOAD_CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// The base URL this service is reached at: `MEDIA_PUBLIC_URL`, else the bound address.
fn public_base(config: &Config, local: SocketAddr) -> Url {
    if let Some(url) = &config.public_url {
        return url.clone();
    }
    let host = match local.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let authority = SocketAddr::new(host, local.port());
    let scheme = if config.ops.tls.is_some() { "https" } else { "http" };
    Url::parse(&format!("{scheme}://{authority}/")).expect("an address formats as a valid URL")
}

fn log_where_data_lives(config: &Config, db: &Database, keyring: &Keyring, local: SocketAddr) {
    let storage = match &config.storage {
        StorageConfig::S3(s3) => {
            format!("s3 bucket {} at {}", s3.bucket, s3.endpoint.as_ref().map_or("AWS".to_owned(), Url::to_string))
        }
        StorageConfig::Filesystem(fs) => format!("filesystem {}", fs.root.display()),
    };
    tracing::info!(
        profile = ?config.profile,
        database = %config.database_url_for_logs(),
        database_backend = db.backend(),
        master_keys = keyring.ids().count(),
        primary_master_key = keyring.primary_id(),
        storage = %storage,
        addr = %local,
        "media-api listening"
    );
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: a signal that arrives while the server is starting is a graceful stop,
/// never the default action (killing the process mid-request).
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, Signal, SignalKind};
        let listen = |kind: SignalKind, name: &'static str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(err) => {
                tracing::error!(error = %err, signal = name, "cannot listen for a stop signal");
                None
            }
        };
        let (interrupt, terminate) =
            (listen(SignalKind::interrupt(), "SIGINT"), listen(SignalKind::terminate(), "SIGTERM"));
        async fn received(signal: Option<Signal>) {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        async move {
            tokio::select! {
                () = received(interrupt) => {},
                () = received(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
