//! The one place the service's parts are assembled from the configuration: the master keyring, the
//! database, tenant keys, the encrypted media repository, the blob store (and its link signer), the
//! ingest pipeline and the media use cases over them. (The HTTP front adds only its own: the
//! token authenticator, admission limits, the metrics handle.) `serve` ([`crate::app::Application`]) and every admin command open them here, so
//! the service and its tools can never be wired differently.

use std::net::SocketAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;
use url::Url;

use crate::config::{Config, StorageConfig};
use crate::crypto::dev_keys::{self, DevKeyError};
use crate::crypto::keyring::Keyring;
use crate::crypto::CryptoError;
use crate::db::audit::AuditLog;
use crate::db::media::MediaRepo;
use crate::db::notify::CacheGate;
use crate::db::tenant_keys::{KeySettings, TenantKeys};
use crate::db::{Database, DbError};
use crate::domain::link_key::LinkKey;
use crate::http::tls::TlsError;
use crate::media::ingest::pipeline::Pipeline;
use crate::media::ingest::remote::RemoteFetcher;
use crate::media::{MediaService, MediaSettings};
use crate::storage::links::LinkSigner;
use crate::storage::{self, BlobStore, StorageError};

/// File name of the generated dev key that signs the service's own blob links.
pub const DEV_LINK_KEY_FILE: &str = "fs-link.key";

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
    /// The Redis client refused `MEDIA_REDIS_URL` (a Redis that is down is not an error).
    #[error("MEDIA_REDIS_URL: {0}")]
    Limits(String),
}

/// Who opens the parts: the server caches decrypted rows and migrates on start (when configured);
/// an admin command does neither.
pub enum Role {
    /// `serve`: links are signed for `public_base` (the service's public URL).
    Server {
        /// Where clients reach this service.
        public_base: Url,
    },
    /// An admin command: no record cache, no migration, links never signed.
    Admin,
}

/// The keyring, the database, tenant keys and the media repository: what key and row commands
/// (`rotate-keys`, `keys status`) need, without a blob store.
pub struct KeyServices {
    /// Master keys (KEKs) that wrap the tenant keys.
    pub keyring: Arc<Keyring>,
    /// The database.
    pub db: Database,
    /// Tenant keys (wrapped in the database, cached unwrapped).
    pub keys: Arc<TenantKeys>,
    /// Encrypted media rows.
    pub media: MediaRepo,
    /// Whether the caches may be used (closed for a server on Postgres until its listener is up).
    pub gate: CacheGate,
}

impl KeyServices {
    /// Loads the keyring and connects the database (a server also migrates it when configured).
    pub async fn open(config: &Config, role: &Role) -> Result<Self, StartupError> {
        let keyring = Arc::new(Keyring::load(&config.keyring, &config.keys_dir)?);
        let (db, read_lane) = match role {
            Role::Server { .. } => Database::connect_server(&config.database).await?,
            _ => (Database::connect(&config.database).await?, None),
        };
        let mut media_cache = None;
        // A server on Postgres caches only while its invalidation listener is connected.
        let mut gate = CacheGate::open();
        let mut migrated = None;
        if let Role::Server { .. } = role {
            if let Database::Postgres(_) = db {
                gate = CacheGate::closed();
            }
            if config.database.migrate_on_start {
                let report = db.migrate().await?;
                tracing::info!(applied = report.newly_applied, already = report.already_applied, "database migrations");
                migrated = Some(report);
            }
            media_cache = Some(config.record_cache_ttl);
        }
        let keys = Arc::new(TenantKeys::new(db.clone(), keyring.clone(), key_settings(config)).with_gate(gate.clone()));
        if let Some(report) = migrated {
            // Carries audit events of before the keyed format forward, in the run that added it.
            AuditLog::new(keys.clone()).after_migration(&report).await?;
        }
        let media =
            MediaRepo::new(db.clone(), keys.clone()).with_gate(gate.clone()).with_read_lane(read_lane.map(Arc::new));
        let media = match media_cache {
            Some(ttl) => media.with_cache(ttl),
            None => media,
        };
        Ok(Self { keyring, db, keys, media, gate })
    }
}

/// Every part the service and the data commands (`tenant shred`, `sweep`) work with.
pub struct Services {
    /// Master keys (KEKs) that wrap the tenant keys.
    pub keyring: Arc<Keyring>,
    /// The database.
    pub db: Database,
    /// Tenant keys.
    pub keys: Arc<TenantKeys>,
    /// Encrypted media rows.
    pub media: MediaRepo,
    /// The blob store.
    pub blobs: Arc<dyn BlobStore>,
    /// Signer and verifier of the service's own blob links (filesystem backend, encrypted objects).
    pub links: Option<Arc<LinkSigner>>,
    /// The ingest pipeline (uploads, removals, audit events).
    pub pipeline: Pipeline,
    /// The media use cases over these parts (what the HTTP handlers call).
    pub service: MediaService,
    /// Whether the caches may be used (see [`KeyServices::gate`]).
    pub gate: CacheGate,
}

impl Services {
    /// Loads the keyring, connects (and for a server migrates) the database, opens the blob store.
    pub async fn open(config: &Config, role: Role) -> Result<Self, StartupError> {
        let KeyServices { keyring, db, keys, media, gate } = KeyServices::open(config, &role).await?;
        let public_base = match role {
            Role::Server { public_base } => public_base,
            // Admin commands never sign links: any base will do.
            Role::Admin => Url::parse("http://localhost/").expect("a valid URL"),
        };
        let (blobs, links) = open_storage(config, public_base).await?;
        let pipeline = Pipeline::new(blobs.clone(), media.clone(), db.clone(), config);
        let remote =
            RemoteFetcher::new(config.remote_fetch_timeout, &config.remote_fetch_allow_hosts, config.ops.ca.as_ref());
        let settings = MediaSettings::from_config(config);
        let service = MediaService::new(pipeline.clone(), links.clone(), remote, settings);
        Ok(Self { keyring, db, keys, media, blobs, links, pipeline, service, gate })
    }
}

/// Opens the configured blob store, and the signer of the service's own links (served under
/// `public_base`) when links are served: for the filesystem backend, with object encryption on (an
/// encrypted object is fetched through the service), or whenever a link key is configured (objects
/// encrypted before encryption was turned off keep their links). Admin commands pass any base: they
/// never sign links.
pub async fn open_storage(
    config: &Config,
    public_base: Url,
) -> Result<(Arc<dyn BlobStore>, Option<Arc<LinkSigner>>), StartupError> {
    let serves_links = matches!(config.storage, StorageConfig::Filesystem(_))
        || config.object_encryption
        || config.link_signing_key.is_some();
    let links = match serves_links {
        true => Some(Arc::new(LinkSigner::new(link_key(config)?, public_base))),
        false => None,
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

fn link_key(config: &Config) -> Result<LinkKey, StartupError> {
    let text = match &config.link_signing_key {
        Some(key) => key.expose_secret().to_owned(),
        None => dev_keys::load_or_create(&config.keys_dir, DEV_LINK_KEY_FILE, || LinkKey::generate().to_hex())?,
    };
    LinkKey::parse(&text)
        .ok_or_else(|| StartupError::InvalidKey("the link signing key must be 64 hex characters (32 bytes)".into()))
}
