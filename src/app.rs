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

use metrics_exporter_prometheus::PrometheusHandle;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use url::Url;

use crate::auth::Authenticator;
use crate::config::{Config, StorageConfig};
use crate::crypto::dev_keys::{self, DevKeyError};
use crate::crypto::keyring::Keyring;
use crate::crypto::CryptoError;
use crate::db::media::MediaRepo;
use crate::db::tenant_keys::{KeySettings, TenantKeys};
use crate::db::{Database, DbError};
use crate::http::limits::Limits;
use crate::http::metrics::ScrapeState;
use crate::http::server::{Server, ServerOptions};
use crate::http::tls::{ReloadingCert, TlsError};
use crate::ingest::pipeline::Pipeline;
use crate::ingest::remote::RemoteFetcher;
use crate::storage::links::{LinkKey, LinkSigner};
use crate::storage::{self, BlobStore, StorageError};

/// File name of the generated dev key that signs filesystem blob links.
pub const DEV_LINK_KEY_FILE: &str = "fs-link.key";

/// What the handlers share: a cheap handle (one reference count) on [`Shared`], cloned by every
/// extractor and middleware of every request.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The service's parts.
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Metadata database.
    pub db: Database,
    /// Blob storage.
    pub blobs: Arc<dyn BlobStore>,
    /// Verifier of the service's own signed blob links (filesystem backend only).
    pub links: Option<Arc<LinkSigner>>,
    /// Master keys (KEKs) that wrap the tenant keys.
    pub keyring: Arc<Keyring>,
    /// Tenant keys (wrapped in the database, cached unwrapped).
    pub keys: Arc<TenantKeys>,
    /// Encrypted media rows.
    pub media: MediaRepo,
    /// Bearer token checks and principals.
    pub auth: Arc<Authenticator>,
    /// The upload pipeline (checks, blob store, encrypted rows, audit).
    pub pipeline: Pipeline,
    /// The `remote_url` fetcher.
    pub remote: RemoteFetcher,
    /// Rate limits and the upload concurrency cap.
    pub limits: Arc<Limits>,
    /// The Prometheus recorder's handle (renders `/metrics`).
    pub metrics: PrometheusHandle,
    /// Scrape-time gauge bookkeeping.
    pub scrape: ScrapeState,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The blob store could not be opened.
    #[error("blob store: {0}")]
    Storage(#[from] StorageError),
    /// A key could not be loaded or generated.
    #[error(transparent)]
    Keys(#[from] DevKeyError),
    /// The master keyring could not be loaded.
    #[error(transparent)]
    Keyring(#[from] CryptoError),
    /// A key was present but malformed.
    #[error("{0}")]
    InvalidKey(String),
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A bound, ready-to-serve instance of the service.
pub struct Application {
    listener: TcpListener,
    port: u16,
    metrics_listener: Option<TcpListener>,
    tls: Option<Arc<ReloadingCert>>,
    state: AppState,
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
        let keyring = Arc::new(Keyring::load(&config.keyring, &config.keys_dir)?);
        let db = Database::connect(&config.database).await?;
        if config.database.migrate_on_start {
            let report = db.migrate().await?;
            tracing::info!(applied = report.newly_applied, already = report.already_applied, "database migrations");
        }
        let (blobs, links) = open_storage(&config, public_base(&config, local)).await?;
        log_where_data_lives(&config, &db, &keyring, local);
        let keys = Arc::new(TenantKeys::new(db.clone(), keyring.clone(), key_settings(&config)));
        let media = MediaRepo::new(db.clone(), keys.clone()).with_cache(config.record_cache_ttl);
        let auth = Arc::new(Authenticator::new(&config.auth, &config.keys_dir, Some(db.clone()))?);
        auth.start().await;
        let pipeline = Pipeline::new(blobs.clone(), media.clone(), db.clone(), &config);
        let remote =
            RemoteFetcher::new(config.remote_fetch_timeout, &config.remote_fetch_allow_hosts, config.ops.ca.as_ref());
        let limits = Limits::new(&config);
        let state = AppState(Arc::new(Shared {
            config: Arc::new(config),
            db,
            blobs,
            links,
            keyring,
            keys,
            media,
            auth,
            pipeline,
            remote,
            limits,
            metrics,
            scrape: ScrapeState::default(),
        }));
        Ok(Self { listener, port: local.port(), metrics_listener, tls, state })
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
            crate::admin::sweep::spawn_background(
                state.media.clone(),
                state.pipeline.clone(),
                state.blobs.clone(),
                config.presign_ttl,
                config.sweep_interval,
            )
        });
        if let Some(tls) = &self.tls {
            crate::http::tls::spawn_reloader(tls);
        }
        let stopping = tokio_util::sync::CancellationToken::new();
        let metrics_server = self.metrics_listener.map(|listener| {
            let server = Server::new(
                listener,
                crate::http::metrics_router(state.clone()),
                ServerOptions { max_header_bytes: config.ops.max_header_bytes, max_connections: 64, tls: None },
            );
            let stop = stopping.clone().cancelled_owned();
            tokio::spawn(async move { server.run(stop, Duration::from_secs(1)).await })
        });
        let options = ServerOptions {
            max_header_bytes: config.ops.max_header_bytes,
            max_connections: config.ops.max_connections,
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
        let unfinished = state.pipeline.drain(UPLOAD_CLEANUP_GRACE).await;
        if unfinished > 0 {
            tracing::warn!(uploads = unfinished, "uploads still cleaning up at exit; the sweeper will finish them");
        }
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        state.db.close().await;
        tracing::info!(dropped_connections = dropped, "stopped");
        Ok(())
    }
}

/// How long interrupted uploads get to abort their multipart uploads once the connections are gone.
const UPLOAD_CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// Opens the configured blob store; for the filesystem backend also the signer of its links (served
/// under `public_base`). Admin commands pass any base: they never sign links.
pub async fn open_storage(
    config: &Config,
    public_base: Url,
) -> Result<(Arc<dyn BlobStore>, Option<Arc<LinkSigner>>), StartupError> {
    let links = match &config.storage {
        StorageConfig::Filesystem(fs) => Some(Arc::new(LinkSigner::new(link_key(config, fs)?, public_base))),
        StorageConfig::S3(_) => None,
    };
    let blobs = storage::from_config(&config.storage, links.clone()).await?;
    Ok((blobs, links))
}

/// Key cache and budget settings from the configuration.
pub fn key_settings(config: &Config) -> KeySettings {
    KeySettings {
        key_ttl: config.key_cache_ttl,
        encryption_budget: config.dek_encryption_budget,
        ..KeySettings::default()
    }
}

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

fn link_key(config: &Config, fs: &crate::config::FsConfig) -> Result<LinkKey, StartupError> {
    let text = match &fs.signing_key {
        Some(key) => key.expose_secret().to_owned(),
        None => dev_keys::load_or_create(&config.keys_dir, DEV_LINK_KEY_FILE, || LinkKey::generate().to_hex())?,
    };
    LinkKey::parse(&text).ok_or_else(|| {
        StartupError::InvalidKey("the filesystem link signing key must be 64 hex characters (32 bytes)".into())
    })
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

async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}
