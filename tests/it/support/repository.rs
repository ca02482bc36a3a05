//! The encrypted repository without the HTTP service: a [`Fixture`] per database (a fresh
//! PostgreSQL database and a fresh SQLite file, each with its own one-key keyring), and
//! [`new_media`], a record whose every sensitive field is recognisable in a dump.

use std::sync::Arc;

use media_api::config::DatabaseConfig;
use media_api::crypto::keyring::Keyring;
use media_api::db::media::{MediaRecord, MediaRepo, MediaStatus};
use media_api::db::tenant_keys::{KeySettings, TenantKeys};
use media_api::db::Database;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::app::{fresh_postgres_url, random_hex};

pub struct Fixture {
    pub db: Database,
    pub db_url: String,
    pub keyring: Arc<Keyring>,
    /// The fixture keyring's one key (its id is `k1`).
    pub key_text: String,
    pub repo: MediaRepo,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh repository view over the same database (cold key cache), e.g. after tampering.
    pub fn reopen(&self, settings: KeySettings) -> (Arc<TenantKeys>, MediaRepo) {
        self.with_keyring(self.keyring.clone(), settings)
    }

    /// A fresh view with another keyring (KEK rotation).
    pub fn with_keyring(&self, keyring: Arc<Keyring>, settings: KeySettings) -> (Arc<TenantKeys>, MediaRepo) {
        let keys = Arc::new(TenantKeys::new(self.db.clone(), keyring, settings));
        (keys.clone(), MediaRepo::new(self.db.clone(), keys))
    }
}

/// One fixture on a fresh PostgreSQL database and one on a fresh SQLite file, each with its own
/// single-key keyring.
pub async fn fixtures(settings: KeySettings) -> Vec<Fixture> {
    let mut out = Vec::new();
    for postgres in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let url = if postgres {
            fresh_postgres_url().await
        } else {
            format!("sqlite://{}", dir.path().join("media.db").display())
        };
        let config = DatabaseConfig {
            url: SecretString::from(url.clone()),
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(10),
            migrate_on_start: true,
            ca: None,
        };
        let db = Database::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        let key_text = Keyring::generate_key();
        let keyring = Arc::new(Keyring::parse_env(&format!("k1:{key_text}")).unwrap());
        let keys = Arc::new(TenantKeys::new(db.clone(), keyring.clone(), settings));
        let repo = MediaRepo::new(db.clone(), keys.clone());
        out.push(Fixture { db, db_url: url, keyring, key_text, repo, _dir: dir });
    }
    out
}

pub fn new_media(tenant: &str, content: &[u8]) -> MediaRecord {
    MediaRecord {
        id: format!("jan_{}", random_hex(13)),
        tenant_id: tenant.into(),
        status: MediaStatus::Ready,
        mime: "image/png".into(),
        size: content.len() as u64,
        filename: Some("secret-holiday-filename.png".into()),
        uploader: "uploader-subject-7f3a".into(),
        user_hint: Some("client-user-hint-91".into()),
        storage_key: format!("objects/storage-key-{}", random_hex(6)),
        object_dek_version: None,
        sha256: Some(Sha256::digest(content).into()),
        metadata: Some(serde_json::json!({"camera": "metadata-value-x100"})),
        retention_until: None,
    }
}
