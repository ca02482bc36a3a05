//! Commands of the `media-api` binary, one file each, each with its clap `Opts` (where it takes any)
//! and a `run` function.

pub mod audit;
pub mod healthcheck;
pub mod keys;
pub mod migrate;
pub mod rotate_keys;
pub mod serve;
pub mod sweep;
pub mod tenant;
pub mod token;

use std::sync::Arc;

use anyhow::Context;

use crate::app::open_storage;
use crate::config::Config;
use crate::crypto::keyring::Keyring;
use crate::db::media::MediaRepo;
use crate::db::tenant_keys::TenantKeys;
use crate::db::Database;
use crate::ingest::pipeline::Pipeline;
use crate::storage::BlobStore;

/// What the data commands (`tenant shred`, `sweep`) work with, opened from the configuration.
pub struct Services {
    /// The database.
    pub db: Database,
    /// Tenant keys.
    pub keys: Arc<TenantKeys>,
    /// Encrypted media rows.
    pub media: MediaRepo,
    /// The blob store.
    pub blobs: Arc<dyn BlobStore>,
    /// The pipeline (removals and audit events).
    pub pipeline: Pipeline,
}

impl Services {
    /// Loads the keyring, connects the database and opens the blob store.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let keyring = Arc::new(Keyring::load(&config.keyring, &config.keys_dir).context("cannot load the keyring")?);
        let db = Database::connect(&config.database).await.context("cannot open the database")?;
        let keys = Arc::new(TenantKeys::new(db.clone(), keyring, crate::app::key_settings(config)));
        let media = MediaRepo::new(db.clone(), keys.clone());
        let base = url::Url::parse("http://localhost/").context("base URL")?;
        let (blobs, _) = open_storage(config, base).await.context("cannot open the blob store")?;
        let pipeline = Pipeline::new(blobs.clone(), media.clone(), db.clone(), config);
        Ok(Self { db, keys, media, blobs, pipeline })
    }
}
