//! Start-up and the running server.
//!
//! [`Application::build`] does everything that can fail before traffic is accepted — bind the port
//! (port 0 picks a free one, which tests use), load the master keyring, connect and migrate the
//! database, open the blob store, load or generate dev keys, fetch the token issuers' keys — and [`Application::run_until_stopped`] serves until SIGINT/SIGTERM,
//! then lets in-flight requests finish for at most `SHUTDOWN_TIMEOUT`.

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

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
use crate::ingest::pipeline::Pipeline;
use crate::ingest::remote::RemoteFetcher;
use crate::storage::links::{LinkKey, LinkSigner};
use crate::storage::{self, BlobStore, StorageError};

/// File name of the generated dev key that signs filesystem blob links.
pub const DEV_LINK_KEY_FILE: &str = "fs-link.key";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
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
}

/// A bound, ready-to-serve instance of the service.
pub struct Application {
    listener: TcpListener,
    port: u16,
    state: AppState,
}

impl Application {
    /// Binds, connects, migrates (unless disabled) and opens storage.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let addr = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(addr).await.map_err(|source| StartupError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(|source| StartupError::Bind { addr, source })?;
        let keyring = Arc::new(Keyring::load(&config.keyring, &config.keys_dir)?);
        let db = Database::connect(&config.database).await?;
        if config.database.migrate_on_start {
            let report = db.migrate().await?;
            tracing::info!(applied = report.newly_applied, already = report.already_applied, "database migrations");
        }
        let (blobs, links) = open_storage(&config, public_base(&config, local)).await?;
        log_where_data_lives(&config, &db, &keyring, local);
        let keys = Arc::new(TenantKeys::new(db.clone(), keyring.clone(), key_settings(&config)));
        let media = MediaRepo::new(db.clone(), keys.clone());
        let auth = Arc::new(Authenticator::new(&config.auth, &config.keys_dir, Some(db.clone()))?);
        auth.start().await;
        let pipeline = Pipeline::new(blobs.clone(), media.clone(), db.clone(), &config);
        let remote = RemoteFetcher::new(config.remote_fetch_timeout, &config.remote_fetch_allow_hosts);
        let state =
            AppState { config: Arc::new(config), db, blobs, links, keyring, keys, media, auth, pipeline, remote };
        Ok(Self { listener, port: local.port(), state })
    }

    /// The bound port (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The shared state (tests use it to reach the database and blob store directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then drains in-flight requests for at most
    /// `SHUTDOWN_TIMEOUT` before returning.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let grace = self.state.config.shutdown_timeout;
        let db = self.state.db.clone();
        let sweeper = (!self.state.config.sweep_interval.is_zero()).then(|| {
            crate::admin::sweep::spawn_background(
                self.state.media.clone(),
                self.state.pipeline.clone(),
                self.state.blobs.clone(),
                self.state.config.presign_ttl,
                self.state.config.sweep_interval,
            )
        });
        let router = crate::http::router(self.state);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = axum::serve(self.listener, router.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
            })
            .into_future();
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result,
            () = shutdown => {}
        }
        if let Some(sweeper) = &sweeper {
            sweeper.abort();
        }
        tracing::info!(grace_seconds = grace.as_secs(), "stop requested: finishing in-flight requests");
        let _ = stop_tx.send(());
        let result = match tokio::time::timeout(grace, server).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!("shutdown timeout passed: remaining requests are aborted");
                Ok(())
            }
        };
        db.close().await;
        tracing::info!("stopped");
        result
    }
}

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
    Url::parse(&format!("http://{authority}/")).expect("an address formats as a valid URL")
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
