//! Typed configuration, read from the environment once at start and validated there.
//!
//! Variable names follow the jan-server media-api (v1) so the service is a drop-in replacement
//! (`MEDIA_API_PORT`, `MEDIA_DATABASE_URL`, `MEDIA_S3_*`, `AUTH_*`, …); settings the Go service did not
//! have use the same prefixes. Every problem is reported as a [`ConfigError`] naming the variable, so a
//! bad deployment stops with one clear line (the binary exits with status 2).
//!
//! Two profiles exist. `dev` (the default) fills in an embedded setup: SQLite and blobs under `./data`,
//! generated keys under `./keys`. `production` refuses every such default: it wants an explicit
//! database, storage, keyring and token issuer/audience, and refuses disabled auth.
//!
//! Secrets (database URL, S3 secret, master keys, link signing key) are held in
//! [`secrecy::SecretString`], so `Debug` output of a [`Config`] never shows them.

mod auth;
mod database;
mod env;
mod issuer_tenants;
mod keys;
mod ops;
mod storage;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub use auth::{AuthConfig, AuthMode, DEFAULT_ALGORITHMS, DEV_AUDIENCE, DEV_ISSUER};
pub use database::DatabaseConfig;
pub use env::{parse_bool, parse_duration, parse_size, redact_url, MIB};
pub use issuer_tenants::IssuerTenants;
pub use keys::KeyringSource;
pub use ops::{CaBundle, OpsConfig, RateLimit, RedisConfig, TlsConfig, MAX_UPLOAD_TIMEOUT};
pub use storage::{ChunkedPut, FsConfig, S3Config, StorageConfig, S3_MAX_UPLOAD_PARTS, S3_MIN_PART_SIZE};

use crate::domain::link_key::{LinkKey, LINK_KEY_RULE};
use auth::auth_config;
use database::database_config;
use env::Env;
use keys::keyring_source;
use ops::ops_config;
use storage::{allowed_types, link_signing_key, object_encryption, storage_config, storage_prefix};

/// The longest validity S3 (SigV4) allows for a presigned URL.
pub const PRESIGN_HARD_MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A setting that could not be accepted: the variable and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or variables, for profile checks) at fault.
    pub var: String,
    /// A sentence saying what is wrong and what is expected.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(var: &str, reason: impl Into<String>) -> Self {
        Self { var: var.to_owned(), reason: reason.into() }
    }
}

/// Deployment profile (`MEDIA_PROFILE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Embedded defaults allowed, with loud warnings.
    Dev,
    /// Every dev default is refused.
    Production,
}

/// Log output format (`MEDIA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `dev` or `production`.
    pub profile: Profile,
    /// Listen address (`MEDIA_API_HOST`, default 0.0.0.0).
    pub host: IpAddr,
    /// Listen port (`MEDIA_API_PORT`, default 8285; 0 picks a free port).
    pub port: u16,
    /// Base URL clients use to reach this service (`MEDIA_PUBLIC_URL`); used for signed blob links.
    pub public_url: Option<Url>,
    /// Where embedded data lives (`MEDIA_DATA_DIR`, default `./data`).
    pub data_dir: PathBuf,
    /// Where generated dev keys live (`MEDIA_KEYS_DIR`, default `./keys`).
    pub keys_dir: PathBuf,
    /// Metadata database.
    pub database: DatabaseConfig,
    /// Blob storage.
    pub storage: StorageConfig,
    /// Seal every new object under the tenant's keys before it is stored (`MEDIA_OBJECT_ENCRYPTION`,
    /// `on`/`off`; default on for the filesystem store, off for S3). See DESIGN §9.
    pub object_encryption: bool,
    /// HMAC key of the service's own signed links (`MEDIA_LINK_SIGNING_KEY`, formerly
    /// `MEDIA_FS_SIGNING_KEY`): the filesystem backend's URLs and encrypted objects' links. Generated
    /// under the keys directory in dev when needed.
    pub link_signing_key: Option<SecretString>,
    /// Default validity of presigned URLs (`MEDIA_S3_PRESIGN_TTL`, default 5m).
    pub presign_ttl: Duration,
    /// Cap on any presigned URL's validity (`MEDIA_PRESIGN_MAX_TTL`, default 1h).
    pub presign_max_ttl: Duration,
    /// Largest accepted upload in bytes (`MEDIA_MAX_BYTES`, default 20 MiB).
    pub max_bytes: u64,
    /// Stream bytes through the service on `GET /v1/media/{id}` (`MEDIA_PROXY_DOWNLOAD`, default true).
    pub proxy_download: bool,
    /// Days media are kept (`MEDIA_RETENTION_DAYS`; absent or 0 keeps them).
    pub retention_days: Option<u32>,
    /// Timeout of a `remote_url` fetch (`MEDIA_REMOTE_FETCH_TIMEOUT`, default 15s).
    pub remote_fetch_timeout: Duration,
    /// Hosts (`host` or `host:port`) exempt from the remote fetch address checks
    /// (`MEDIA_REMOTE_FETCH_ALLOW_HOSTS`).
    pub remote_fetch_allow_hosts: Vec<String>,
    /// Prefix of every object key the service creates (`MEDIA_STORAGE_PREFIX`, default none), to
    /// share a bucket: `media/` stores objects under `media/m/…`.
    pub storage_prefix: String,
    /// Accepted content types (`MEDIA_ALLOWED_TYPES`, default JPEG, PNG, WebP, GIF, BMP, TIFF, AVIF, HEIC).
    pub allowed_types: Vec<String>,
    /// Largest `POST /v1/media/resolve` body (`MEDIA_RESOLVE_MAX_BYTES`, default 8 MiB).
    pub resolve_max_bytes: u64,
    /// Most distinct IDs one resolve call may name (`MEDIA_RESOLVE_MAX_IDS`, default 256).
    pub resolve_max_ids: usize,
    /// Bytes all resolve calls may hold at once, counted as twice their bodies (body and
    /// rewritten copy) (`MEDIA_RESOLVE_BUDGET`, default 32 MiB or two largest bodies, whichever is
    /// more); past it 503 `busy`.
    pub resolve_budget: u64,
    /// How often expired media, stale pending uploads and abandoned multipart uploads are swept
    /// (`MEDIA_SWEEP_INTERVAL`, default 10m; 0 turns the background sweeper off).
    pub sweep_interval: Duration,
    /// Grace period of the sweeper's bounded reconcile pass, which follows each sweep and deletes
    /// the unreferenced objects of one sixteenth of the key space (`MEDIA_RECONCILE_GRACE`, default
    /// 24h; 0 turns the pass off). See `jobs::reconcile`.
    pub reconcile_grace: Option<Duration>,
    /// Token validation.
    pub auth: AuthConfig,
    /// Key-encryption keyring source.
    pub keyring: KeyringSource,
    /// Encryptions under one DEK version before a new one is rolled (`MEDIA_DEK_ENCRYPTION_BUDGET`,
    /// default 2^31, at most 2^32).
    pub dek_encryption_budget: u64,
    /// How long unwrapped tenant keys stay in memory (`MEDIA_KEY_CACHE_TTL`, default 5m).
    pub key_cache_ttl: Duration,
    /// How long decrypted ready media rows are cached for presign/resolve/download
    /// (`MEDIA_RECORD_CACHE_TTL`, default 5s; 0 turns the cache off).
    pub record_cache_ttl: Duration,
    /// How long in-flight requests may run after a stop signal (`SHUTDOWN_TIMEOUT`, default 30s).
    pub shutdown_timeout: Duration,
    /// Log format (`MEDIA_LOG_FORMAT`, default json).
    pub log_format: LogFormat,
    /// Log filter (`LOG_LEVEL`, an `EnvFilter` directive, default `info`).
    pub log_level: String,
    /// Listeners, limits, CORS and TLS.
    pub ops: OpsConfig,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Reads the configuration from a map of variables (the environment, or a test's own map).
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Env { vars };
        let profile = match env.get("MEDIA_PROFILE").as_deref() {
            None | Some("dev") | Some("development") => Profile::Dev,
            Some("production") | Some("prod") => Profile::Production,
            Some(other) => {
                return Err(ConfigError::new("MEDIA_PROFILE", format!("expected `dev` or `production`, got {other:?}")))
            }
        };
        let data_dir = PathBuf::from(env.get("MEDIA_DATA_DIR").unwrap_or_else(|| "./data".into()));
        let mut config = Config {
            profile,
            host: env.parse("MEDIA_API_HOST", "an IP address such as 0.0.0.0")?.unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: env.parse("MEDIA_API_PORT", "a port number (0-65535)")?.unwrap_or(8285),
            public_url: env.url("MEDIA_PUBLIC_URL")?,
            keys_dir: PathBuf::from(env.get("MEDIA_KEYS_DIR").unwrap_or_else(|| "./keys".into())),
            database: database_config(&env, &data_dir)?,
            storage: storage_config(&env, &data_dir)?,
            object_encryption: false,
            link_signing_key: link_signing_key(&env).map(|(_, key)| key),
            presign_ttl: env.duration("MEDIA_S3_PRESIGN_TTL")?.unwrap_or(Duration::from_secs(300)),
            presign_max_ttl: env.duration("MEDIA_PRESIGN_MAX_TTL")?.unwrap_or(Duration::from_secs(3600)),
            max_bytes: env.size("MEDIA_MAX_BYTES")?.unwrap_or(20 * MIB),
            proxy_download: env.bool("MEDIA_PROXY_DOWNLOAD")?.unwrap_or(true),
            retention_days: env.parse::<u32>("MEDIA_RETENTION_DAYS", "a whole number of days")?.filter(|d| *d > 0),
            remote_fetch_timeout: env.duration("MEDIA_REMOTE_FETCH_TIMEOUT")?.unwrap_or(Duration::from_secs(15)),
            remote_fetch_allow_hosts: env.list("MEDIA_REMOTE_FETCH_ALLOW_HOSTS"),
            allowed_types: allowed_types(&env)?,
            storage_prefix: storage_prefix(&env)?,
            resolve_max_bytes: env.size("MEDIA_RESOLVE_MAX_BYTES")?.unwrap_or(8 * MIB),
            resolve_max_ids: env.parse("MEDIA_RESOLVE_MAX_IDS", "a whole number")?.unwrap_or(256),
            resolve_budget: 0,
            sweep_interval: env.duration("MEDIA_SWEEP_INTERVAL")?.unwrap_or(Duration::from_secs(600)),
            reconcile_grace: Some(env.duration("MEDIA_RECONCILE_GRACE")?.unwrap_or(Duration::from_secs(86_400)))
                .filter(|grace| !grace.is_zero()),
            auth: auth_config(&env, profile)?,
            keyring: keyring_source(&env),
            dek_encryption_budget: env.parse("MEDIA_DEK_ENCRYPTION_BUDGET", "a whole number")?.unwrap_or(1 << 31),
            key_cache_ttl: env.duration("MEDIA_KEY_CACHE_TTL")?.unwrap_or(Duration::from_secs(300)),
            record_cache_ttl: env.duration("MEDIA_RECORD_CACHE_TTL")?.unwrap_or(Duration::from_secs(5)),
            shutdown_timeout: env.duration("SHUTDOWN_TIMEOUT")?.unwrap_or(Duration::from_secs(30)),
            log_format: match env.get("MEDIA_LOG_FORMAT").as_deref() {
                None | Some("json") => LogFormat::Json,
                Some("pretty") | Some("text") => LogFormat::Pretty,
                Some(other) => {
                    return Err(ConfigError::new(
                        "MEDIA_LOG_FORMAT",
                        format!("expected `json` or `pretty`, got {other:?}"),
                    ))
                }
            },
            log_level: env.get("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            ops: ops_config(&env)?,
            data_dir,
        };
        config.object_encryption = object_encryption(&env, &config.storage)?;
        config.share_ca_bundle();
        let largest_call = config.resolve_max_bytes.saturating_mul(2);
        config.resolve_budget = match env.size("MEDIA_RESOLVE_BUDGET")? {
            None => (32 * MIB).max(largest_call),
            Some(budget) if budget >= largest_call => budget,
            Some(_) => {
                return Err(ConfigError::new(
                    "MEDIA_RESOLVE_BUDGET",
                    format!("must hold one largest resolve call: twice MEDIA_RESOLVE_MAX_BYTES ({largest_call} bytes)"),
                ))
            }
        };
        config.validate(&env)?;
        Ok(config)
    }

    /// Hands `MEDIA_CA_FILE` to every outbound client's settings.
    fn share_ca_bundle(&mut self) {
        let ca = self.ops.ca.clone();
        self.database.ca = ca.clone();
        self.auth.ca = ca.clone();
        if let StorageConfig::S3(s3) = &mut self.storage {
            s3.ca = ca;
        }
    }

    /// Checks that need several settings at once, and the production profile's refusals.
    fn validate(&self, env: &Env<'_>) -> Result<(), ConfigError> {
        if self.max_bytes == 0 {
            return Err(ConfigError::new("MEDIA_MAX_BYTES", "must be greater than 0"));
        }
        if let StorageConfig::S3(s3) = &self.storage {
            storage::check_part_count(self.max_bytes, s3.part_size)?;
        }
        if self.dek_encryption_budget == 0 || self.dek_encryption_budget > 1 << 32 {
            return Err(ConfigError::new(
                "MEDIA_DEK_ENCRYPTION_BUDGET",
                "must be between 1 and 2^32 (the random-nonce limit of AES-GCM)",
            ));
        }
        if self.presign_max_ttl > PRESIGN_HARD_MAX_TTL {
            return Err(ConfigError::new("MEDIA_PRESIGN_MAX_TTL", "must be at most 7 days (the S3 limit)"));
        }
        if self.presign_ttl.is_zero() || self.presign_ttl > self.presign_max_ttl {
            return Err(ConfigError::new(
                "MEDIA_S3_PRESIGN_TTL",
                format!("must be more than 0 and at most MEDIA_PRESIGN_MAX_TTL ({}s)", self.presign_max_ttl.as_secs()),
            ));
        }
        if let KeyringSource::Env(keys) = &self.keyring {
            crate::domain::master_keys::parse(keys.expose_secret())
                .map_err(|reason| ConfigError::new("MEDIA_MASTER_KEYS", reason))?;
        }
        if let Some((var, key)) = link_signing_key(env) {
            if LinkKey::parse(key.expose_secret()).is_none() {
                return Err(ConfigError::new(var, LINK_KEY_RULE));
            }
        }
        if !self.auth.jwks_urls.is_empty() && self.auth.issuers.is_empty() {
            return Err(ConfigError::new("AUTH_JWKS_URL", "is set but AUTH_ISSUER is not: name the issuer it serves"));
        }
        if self.profile == Profile::Production {
            self.refuse_dev_defaults(env)?;
        } else if self.auth.mode != AuthMode::Disabled && self.auth.issuers.is_empty() && !self.auth.dev_issuer {
            return Err(ConfigError::new(
                "AUTH_ISSUER",
                "is not set and AUTH_DEV_ISSUER is off, so no token could ever be accepted",
            ));
        }
        Ok(())
    }

    /// The production profile refuses every embedded default; all problems are named in one line.
    fn refuse_dev_defaults(&self, env: &Env<'_>) -> Result<(), ConfigError> {
        let mut problems: Vec<&str> = Vec::new();
        if self.auth.mode == AuthMode::Disabled {
            problems.push("AUTH_ENABLED/AUTH_MODE: authentication cannot be disabled");
        }
        if self.auth.issuers.is_empty() {
            problems.push("AUTH_ISSUER is not set");
        }
        if env.get("AUTH_AUDIENCE").is_none() {
            problems.push("AUTH_AUDIENCE is not set");
        }
        if self.auth.dev_issuer {
            problems.push("AUTH_DEV_ISSUER: the local dev token issuer cannot be trusted");
        }
        if self.auth.issuers.len() > 1 && self.auth.issuer_tenants.is_none() {
            problems
                .push("AUTH_ISSUER_TENANTS is not set but AUTH_ISSUER names several issuers: bind each to its tenants");
        }
        if matches!(self.keyring, KeyringSource::DevGenerated) {
            problems.push("MEDIA_MASTER_KEYS or MEDIA_KEYRING_FILE is not set (no generated dev keyring)");
        }
        if env.get("MEDIA_DATABASE_URL").is_none() {
            problems.push("MEDIA_DATABASE_URL is not set (no embedded SQLite default)");
        }
        match &self.storage {
            StorageConfig::Filesystem(_) => {
                if env.get("MEDIA_STORAGE_BACKEND").is_none() {
                    problems.push("MEDIA_S3_BUCKET (or MEDIA_STORAGE_BACKEND=fs) is not set");
                }
                if self.link_signing_key.is_none() {
                    problems.push("MEDIA_LINK_SIGNING_KEY is not set (no generated link key)");
                }
            }
            StorageConfig::S3(_) if self.object_encryption => {
                if self.link_signing_key.is_none() {
                    problems.push(
                        "MEDIA_LINK_SIGNING_KEY is not set (MEDIA_OBJECT_ENCRYPTION=on: encrypted objects are fetched \
                         through the service's signed links)",
                    );
                }
                if self.public_url.is_none() {
                    problems.push(
                        "MEDIA_PUBLIC_URL is not set (MEDIA_OBJECT_ENCRYPTION=on: it is the base of the links clients \
                         and model providers fetch)",
                    );
                }
            }
            StorageConfig::S3(_) => {}
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigError::new("MEDIA_PROFILE=production", format!("refuses dev defaults: {}", problems.join("; "))))
    }

    /// The database URL with any password removed, for log lines.
    pub fn database_url_for_logs(&self) -> String {
        redact_url(self.database.url.expose_secret())
    }
}
