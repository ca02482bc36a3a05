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

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

/// One MiB, the unit most size settings are written in.
pub const MIB: u64 = 1024 * 1024;
/// The smallest part S3 accepts in a multipart upload (except the last one).
pub const S3_MIN_PART_SIZE: u64 = 5 * MIB;
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
    fn new(var: &str, reason: impl Into<String>) -> Self {
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

/// How bearer tokens are required (`AUTH_MODE`, or `AUTH_ENABLED=false` for `Disabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every protected route needs a valid token.
    Required,
    /// A missing token means anonymous; a bad token is still refused.
    Optional,
    /// No authentication (dev only).
    Disabled,
}

/// Issuer name of the dev profile's local token issuer (`media-api token`).
pub const DEV_ISSUER: &str = "media-api-dev";
/// Audience accepted in the dev profile when `AUTH_AUDIENCE` is not set.
pub const DEV_AUDIENCE: &str = "media-api";
/// Signature algorithms accepted when `AUTH_ALGORITHMS` is not set.
pub const DEFAULT_ALGORITHMS: [jsonwebtoken::Algorithm; 4] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Token validation settings (used by the auth layer).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required, optional or disabled.
    pub mode: AuthMode,
    /// Accepted `iss` values (`AUTH_ISSUER`, comma separated).
    pub issuers: Vec<String>,
    /// Accepted `aud` values (`AUTH_AUDIENCE`, comma separated; `media-api` in dev when unset).
    pub audiences: Vec<String>,
    /// Where the signing keys are published (`AUTH_JWKS_URL`): one URL for every issuer, or one per
    /// issuer in the order of `AUTH_ISSUER`. Issuers without one use OIDC discovery.
    pub jwks_urls: Vec<Url>,
    /// Accepted signature algorithms (`AUTH_ALGORITHMS`, default RS256, PS256, ES256, EdDSA).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on `exp` and `nbf` (`AUTH_LEEWAY`, default 60s).
    pub leeway: Duration,
    /// How often key sets are refreshed (`AUTH_JWKS_REFRESH`, default 10m).
    pub jwks_refresh: Duration,
    /// Dotted claim path of the tenant (`AUTH_TENANT_CLAIM`, default `tenant_id`).
    pub tenant_claim: String,
    /// Tenant of tokens without a tenant claim, and of anonymous callers (`MEDIA_DEFAULT_TENANT`).
    pub default_tenant: Option<String>,
    /// Roles or scopes granting `media:read` (`AUTH_READ_ROLES`; empty: every valid token).
    pub read_roles: Vec<String>,
    /// Roles or scopes granting `media:write` (`AUTH_WRITE_ROLES`; empty: every valid token).
    pub write_roles: Vec<String>,
    /// Roles or scopes granting `media:admin` (`AUTH_ADMIN_ROLES`; empty: every valid token).
    pub admin_roles: Vec<String>,
    /// Clients whose `resource_access.<client>.roles` count (`AUTH_CLIENT_ID`; default: the audiences).
    pub client_ids: Vec<String>,
    /// Trust the local dev issuer and serve its JWKS (`AUTH_DEV_ISSUER`; default on in dev, refused in
    /// production).
    pub dev_issuer: bool,
    /// Extra trusted roots for JWKS and discovery fetches (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

/// Where the key-encryption keys come from.
#[derive(Debug, Clone)]
pub enum KeyringSource {
    /// `MEDIA_MASTER_KEYS`: `id:key,id:key`, the first is primary.
    Env(SecretString),
    /// `MEDIA_KEYRING_FILE`: a JSON keyring file (for example a mounted secret).
    File(PathBuf),
    /// Dev profile only: a keyring generated under the keys directory on first start.
    DevGenerated,
}

/// Metadata database settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…` (`MEDIA_DATABASE_URL`); may contain a password.
    pub url: SecretString,
    /// Pool size (`MEDIA_DATABASE_MAX_CONNECTIONS`, default 10).
    pub max_connections: u32,
    /// How long a request waits for a pooled connection (`MEDIA_DATABASE_ACQUIRE_TIMEOUT`, 5s).
    pub acquire_timeout: Duration,
    /// Apply pending migrations when the service starts (`MEDIA_MIGRATE_ON_START`, default true).
    pub migrate_on_start: bool,
    /// Extra roots for `sslmode=verify-ca`/`verify-full` (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

/// S3-compatible object storage settings (`MEDIA_S3_*`).
#[derive(Debug, Clone)]
pub struct S3Config {
    /// API endpoint for the service's own calls (`MEDIA_S3_ENDPOINT`); AWS when absent.
    pub endpoint: Option<Url>,
    /// Endpoint that clients can reach, used to sign presigned URLs (`MEDIA_S3_PUBLIC_ENDPOINT`).
    pub public_endpoint: Option<Url>,
    /// Region (`MEDIA_S3_REGION`, default `us-east-1`).
    pub region: String,
    /// Bucket (`MEDIA_S3_BUCKET`).
    pub bucket: String,
    /// Static access key id (`MEDIA_S3_ACCESS_KEY` or `MEDIA_S3_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// Static secret (`MEDIA_S3_SECRET_KEY` or `MEDIA_S3_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<SecretString>,
    /// Path-style addressing (`MEDIA_S3_USE_PATH_STYLE`; default true when an endpoint is set).
    pub path_style: bool,
    /// Multipart part size (`MEDIA_S3_PART_SIZE`, default and minimum 5 MiB, the S3 minimum).
    pub part_size: u64,
    /// Part buffers one upload may hold (`MEDIA_S3_UPLOAD_CONCURRENCY`, default 2): the parts in
    /// flight plus the one filling, so one upload holds at most this many × the part size.
    pub upload_concurrency: usize,
    /// Sign upload payloads with SigV4 (`MEDIA_S3_SIGN_PAYLOAD`, default false): a second SHA-256
    /// pass over every byte. Off, uploads are sent `UNSIGNED-PAYLOAD` and their integrity in
    /// transit rests on TLS (use an `https` endpoint outside a trusted network).
    pub sign_payload: bool,
    /// Extra trusted roots (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

/// Local filesystem blob storage settings (embedded default).
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Root directory of the blobs (`MEDIA_FS_ROOT`, default `<data dir>/blobs`).
    pub root: PathBuf,
    /// HMAC key for the service's signed blob links (`MEDIA_FS_SIGNING_KEY`); generated in dev.
    pub signing_key: Option<SecretString>,
}

/// Which blob store holds the bytes.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// S3 or an S3-compatible server.
    S3(Box<S3Config>),
    /// A local directory, links signed by the service.
    Filesystem(FsConfig),
}

/// Log output format (`MEDIA_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// A token-bucket rate: `rps` requests per second on average, `burst` at once (0 turns it off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub rps: u32,
    /// Bucket size.
    pub burst: u32,
}

impl RateLimit {
    /// Whether this limiter is on.
    pub fn enabled(&self) -> bool {
        self.rps > 0 && self.burst > 0
    }
}

/// HTTPS settings (`MEDIA_TLS_CERT_FILE` + `MEDIA_TLS_KEY_FILE`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for changes (`MEDIA_TLS_RELOAD_INTERVAL`, default 10s).
    pub reload_interval: Duration,
}

/// What an operator tunes to keep the service healthy under load: listeners, limits, CORS, TLS.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// Serve `/metrics` on this separate (internal) address instead of the main listener
    /// (`MEDIA_METRICS_ADDR`).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Per-principal limit (`MEDIA_RATE_LIMIT_RPS` 100, `MEDIA_RATE_LIMIT_BURST` 200).
    pub principal_rate: RateLimit,
    /// Per-client-IP limit for unauthenticated routes and refused tokens (`MEDIA_RATE_LIMIT_IP_RPS`
    /// 20, `MEDIA_RATE_LIMIT_IP_BURST` 40).
    pub ip_rate: RateLimit,
    /// Uploads running at once (`MEDIA_MAX_CONCURRENT_UPLOADS`, default 16); past it 503 `busy`.
    pub max_concurrent_uploads: u32,
    /// Uploads one caller (principal, or client network for signed links) may run at once
    /// (`MEDIA_MAX_UPLOADS_PER_CALLER`, default half of the total, at least 1); past it 429.
    pub max_uploads_per_caller: u32,
    /// Time limit of a non-upload request (`MEDIA_REQUEST_TIMEOUT`, default 30s).
    pub request_timeout: Duration,
    /// Time limit of an upload request (`MEDIA_UPLOAD_TIMEOUT`, default 10m).
    pub upload_timeout: Duration,
    /// Largest request head (`MEDIA_MAX_HEADER_BYTES`, default 64 KiB, at least 8 KiB); 431 past it.
    pub max_header_bytes: usize,
    /// Connections served at once (`MEDIA_MAX_CONNECTIONS`, default 1024); more wait in the backlog.
    pub max_connections: usize,
    /// Origins allowed by CORS (`CORS_ALLOWED_ORIGINS`; none by default, `*` for any).
    pub cors_allowed_origins: Vec<String>,
    /// HTTPS on the main listener.
    pub tls: Option<TlsConfig>,
    /// Extra trusted roots for outbound TLS (`MEDIA_CA_FILE`): S3, JWKS, remote fetch, Postgres.
    pub ca: Option<CaBundle>,
}

/// Certificates trusted for outbound TLS on top of the built-in roots (`MEDIA_CA_FILE`, PEM), read
/// and checked once at start; every client the service opens (S3, JWKS and discovery, `remote_url`
/// fetches, Postgres) gets them.
#[derive(Clone)]
pub struct CaBundle {
    /// The file they came from.
    pub path: PathBuf,
    /// The PEM text.
    pub pem: std::sync::Arc<[u8]>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("path", &self.path).finish_non_exhaustive()
    }
}

impl CaBundle {
    fn read(path: PathBuf) -> Result<Self, ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let fail = |why: String| ConfigError::new("MEDIA_CA_FILE", format!("{}: {why}", path.display()));
        let pem = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        let count = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not a PEM certificate bundle: {e}")))?
            .len();
        if count == 0 {
            return Err(fail("holds no PEM certificate".into()));
        }
        Ok(Self { path, pem: pem.into() })
    }

    /// The certificates for a reqwest client.
    pub fn reqwest_certificates(&self) -> Vec<reqwest::Certificate> {
        reqwest::Certificate::from_pem_bundle(&self.pem).unwrap_or_default()
    }

    /// Adds the certificates to a reqwest client's roots.
    pub fn trust_in(bundle: Option<&Self>, mut builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        for certificate in bundle.map(Self::reqwest_certificates).unwrap_or_default() {
            builder = builder.add_root_certificate(certificate);
        }
        builder
    }
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
    /// How often expired media, stale pending uploads and abandoned multipart uploads are swept
    /// (`MEDIA_SWEEP_INTERVAL`, default 10m; 0 turns the background sweeper off).
    pub sweep_interval: Duration,
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
            sweep_interval: env.duration("MEDIA_SWEEP_INTERVAL")?.unwrap_or(Duration::from_secs(600)),
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
        config.share_ca_bundle();
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
            crate::crypto::keyring::Keyring::parse_env(keys.expose_secret())
                .map_err(|e| ConfigError::new("MEDIA_MASTER_KEYS", e.reason()))?;
        }
        if let StorageConfig::Filesystem(FsConfig { signing_key: Some(key), .. }) = &self.storage {
            if crate::storage::links::LinkKey::parse(key.expose_secret()).is_none() {
                return Err(ConfigError::new("MEDIA_FS_SIGNING_KEY", "expected 64 hex characters (32 bytes)"));
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
        if matches!(self.keyring, KeyringSource::DevGenerated) {
            problems.push("MEDIA_MASTER_KEYS or MEDIA_KEYRING_FILE is not set (no generated dev keyring)");
        }
        if env.get("MEDIA_DATABASE_URL").is_none() {
            problems.push("MEDIA_DATABASE_URL is not set (no embedded SQLite default)");
        }
        match &self.storage {
            StorageConfig::Filesystem(fs) => {
                if env.get("MEDIA_STORAGE_BACKEND").is_none() {
                    problems.push("MEDIA_S3_BUCKET (or MEDIA_STORAGE_BACKEND=fs) is not set");
                }
                if fs.signing_key.is_none() {
                    problems.push("MEDIA_FS_SIGNING_KEY is not set (no generated link key)");
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

fn rate_limit(env: &Env<'_>, rps: &str, burst: &str, defaults: (u32, u32)) -> Result<RateLimit, ConfigError> {
    let expected = "a whole number (0 turns the limit off)";
    let rps = env.parse(rps, expected)?.unwrap_or(defaults.0);
    let burst = env.parse(burst, expected)?.unwrap_or(if rps == 0 { 0 } else { defaults.1.max(rps) });
    Ok(RateLimit { rps, burst })
}

fn ops_config(env: &Env<'_>) -> Result<OpsConfig, ConfigError> {
    let max_header_bytes = env.size("MEDIA_MAX_HEADER_BYTES")?.unwrap_or(64 * 1024);
    if !(8 * 1024..=16 * MIB).contains(&max_header_bytes) {
        return Err(ConfigError::new("MEDIA_MAX_HEADER_BYTES", "must be between 8KiB and 16MiB"));
    }
    let max_concurrent_uploads = env.parse("MEDIA_MAX_CONCURRENT_UPLOADS", "a whole number ≥ 1")?.unwrap_or(16);
    if max_concurrent_uploads == 0 {
        return Err(ConfigError::new("MEDIA_MAX_CONCURRENT_UPLOADS", "must be at least 1"));
    }
    let tls = match (env.get("MEDIA_TLS_CERT_FILE"), env.get("MEDIA_TLS_KEY_FILE")) {
        (Some(cert), Some(key)) => Some(TlsConfig {
            cert_file: PathBuf::from(cert),
            key_file: PathBuf::from(key),
            reload_interval: env.duration("MEDIA_TLS_RELOAD_INTERVAL")?.unwrap_or(Duration::from_secs(10)),
        }),
        (None, None) => None,
        (Some(_), None) => return Err(ConfigError::new("MEDIA_TLS_KEY_FILE", "is required with MEDIA_TLS_CERT_FILE")),
        (None, Some(_)) => return Err(ConfigError::new("MEDIA_TLS_CERT_FILE", "is required with MEDIA_TLS_KEY_FILE")),
    };
    let cors_allowed_origins = env.list("CORS_ALLOWED_ORIGINS");
    for origin in cors_allowed_origins.iter().filter(|o| o.as_str() != "*") {
        let url = Url::parse(origin).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.path() == "/" && !origin.ends_with('/')
        });
        if url.is_none() {
            return Err(ConfigError::new(
                "CORS_ALLOWED_ORIGINS",
                format!(
                    "expected origins such as https://app.example.com (scheme, host, optional port), got {origin:?}"
                ),
            ));
        }
    }
    let at_least_a_second = |name: &str, value: Duration| {
        if value < Duration::from_secs(1) {
            return Err(ConfigError::new(name, "must be at least 1s"));
        }
        Ok(value)
    };
    let request_timeout = env.duration("MEDIA_REQUEST_TIMEOUT")?.unwrap_or(Duration::from_secs(30));
    let upload_timeout = env.duration("MEDIA_UPLOAD_TIMEOUT")?.unwrap_or(Duration::from_secs(600));
    if upload_timeout > MAX_UPLOAD_TIMEOUT {
        return Err(ConfigError::new(
            "MEDIA_UPLOAD_TIMEOUT",
            "must be at most 30m (the sweeper takes writes older than an hour for abandoned)",
        ));
    }
    if tls.as_ref().is_some_and(|tls| tls.reload_interval < Duration::from_millis(100)) {
        return Err(ConfigError::new("MEDIA_TLS_RELOAD_INTERVAL", "must be at least 100ms"));
    }
    let max_uploads_per_caller: u32 =
        env.parse("MEDIA_MAX_UPLOADS_PER_CALLER", "a whole number ≥ 1")?.unwrap_or((max_concurrent_uploads / 2).max(1));
    if max_uploads_per_caller == 0 {
        return Err(ConfigError::new("MEDIA_MAX_UPLOADS_PER_CALLER", "must be at least 1"));
    }
    let max_connections: usize = env.parse("MEDIA_MAX_CONNECTIONS", "a whole number ≥ 1")?.unwrap_or(1024);
    if max_connections == 0 {
        return Err(ConfigError::new("MEDIA_MAX_CONNECTIONS", "must be at least 1"));
    }
    Ok(OpsConfig {
        metrics_addr: env.parse("MEDIA_METRICS_ADDR", "an address such as 0.0.0.0:9090")?,
        principal_rate: rate_limit(env, "MEDIA_RATE_LIMIT_RPS", "MEDIA_RATE_LIMIT_BURST", (100, 200))?,
        ip_rate: rate_limit(env, "MEDIA_RATE_LIMIT_IP_RPS", "MEDIA_RATE_LIMIT_IP_BURST", (20, 40))?,
        max_concurrent_uploads,
        max_uploads_per_caller,
        request_timeout: at_least_a_second("MEDIA_REQUEST_TIMEOUT", request_timeout)?,
        upload_timeout: at_least_a_second("MEDIA_UPLOAD_TIMEOUT", upload_timeout)?,
        max_header_bytes: max_header_bytes as usize,
        max_connections,
        cors_allowed_origins,
        tls,
        ca: env.get("MEDIA_CA_FILE").map(PathBuf::from).map(CaBundle::read).transpose()?,
    })
}

fn database_config(env: &Env<'_>, data_dir: &std::path::Path) -> Result<DatabaseConfig, ConfigError> {
    let url = match env.get("MEDIA_DATABASE_URL") {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return Err(ConfigError::new("MEDIA_DATABASE_URL", "expected a postgres://… or sqlite://… URL"));
            }
            url
        }
        None => format!("sqlite://{}", data_dir.join("media.db").display()),
    };
    let max_connections = env.parse::<u32>("MEDIA_DATABASE_MAX_CONNECTIONS", "a whole number")?.unwrap_or(10);
    if max_connections == 0 {
        return Err(ConfigError::new("MEDIA_DATABASE_MAX_CONNECTIONS", "must be at least 1"));
    }
    Ok(DatabaseConfig {
        url: SecretString::from(url),
        max_connections,
        acquire_timeout: env.duration("MEDIA_DATABASE_ACQUIRE_TIMEOUT")?.unwrap_or(Duration::from_secs(5)),
        migrate_on_start: env.bool("MEDIA_MIGRATE_ON_START")?.unwrap_or(true),
        ca: None,
    })
}

fn storage_config(env: &Env<'_>, data_dir: &std::path::Path) -> Result<StorageConfig, ConfigError> {
    let backend = env.get("MEDIA_STORAGE_BACKEND");
    let bucket = env.get("MEDIA_S3_BUCKET");
    let use_s3 = match backend.as_deref() {
        Some("s3") => true,
        Some("fs") | Some("filesystem") => false,
        Some(other) => {
            return Err(ConfigError::new("MEDIA_STORAGE_BACKEND", format!("expected `s3` or `fs`, got {other:?}")))
        }
        None => bucket.is_some(),
    };
    if !use_s3 {
        return Ok(StorageConfig::Filesystem(FsConfig {
            root: env.get("MEDIA_FS_ROOT").map(PathBuf::from).unwrap_or_else(|| data_dir.join("blobs")),
            signing_key: env.secret("MEDIA_FS_SIGNING_KEY"),
        }));
    }
    let bucket = bucket.ok_or_else(|| ConfigError::new("MEDIA_S3_BUCKET", "is required for the s3 backend"))?;
    let endpoint = env.url("MEDIA_S3_ENDPOINT")?;
    let access_key_id = env.get("MEDIA_S3_ACCESS_KEY").or_else(|| env.get("MEDIA_S3_ACCESS_KEY_ID"));
    let secret_access_key = env.secret("MEDIA_S3_SECRET_KEY").or_else(|| env.secret("MEDIA_S3_SECRET_ACCESS_KEY"));
    if access_key_id.is_some() != secret_access_key.is_some() {
        return Err(ConfigError::new(
            "MEDIA_S3_ACCESS_KEY",
            "set both the access key and MEDIA_S3_SECRET_KEY, or neither (default credential chain)",
        ));
    }
    let part_size = env.size("MEDIA_S3_PART_SIZE")?.unwrap_or(S3_MIN_PART_SIZE);
    if part_size < S3_MIN_PART_SIZE {
        return Err(ConfigError::new("MEDIA_S3_PART_SIZE", "must be at least 5 MiB (the S3 minimum)"));
    }
    let upload_concurrency = env.parse::<usize>("MEDIA_S3_UPLOAD_CONCURRENCY", "a whole number")?.unwrap_or(2);
    if !(1..=16).contains(&upload_concurrency) {
        return Err(ConfigError::new("MEDIA_S3_UPLOAD_CONCURRENCY", "must be between 1 and 16"));
    }
    Ok(StorageConfig::S3(Box::new(S3Config {
        path_style: env.bool("MEDIA_S3_USE_PATH_STYLE")?.unwrap_or(endpoint.is_some()),
        public_endpoint: env.url("MEDIA_S3_PUBLIC_ENDPOINT")?,
        region: env.get("MEDIA_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
        endpoint,
        bucket,
        access_key_id,
        secret_access_key,
        part_size,
        upload_concurrency,
        sign_payload: env.bool("MEDIA_S3_SIGN_PAYLOAD")?.unwrap_or(false),
        ca: None,
    })))
}

fn auth_config(env: &Env<'_>, profile: Profile) -> Result<AuthConfig, ConfigError> {
    let mode = match env.get("AUTH_MODE").as_deref() {
        Some("required") => AuthMode::Required,
        Some("optional") => AuthMode::Optional,
        Some("disabled") => AuthMode::Disabled,
        Some(other) => {
            return Err(ConfigError::new(
                "AUTH_MODE",
                format!("expected `required`, `optional` or `disabled`, got {other:?}"),
            ))
        }
        None => match env.bool("AUTH_ENABLED")? {
            Some(false) => AuthMode::Disabled,
            _ => AuthMode::Required,
        },
    };
    let issuers = env.list("AUTH_ISSUER");
    let mut audiences = env.list("AUTH_AUDIENCE");
    if audiences.is_empty() && profile == Profile::Dev {
        audiences.push(DEV_AUDIENCE.to_owned());
    }
    let jwks_urls = env
        .list("AUTH_JWKS_URL")
        .iter()
        .map(|url| parse_http_url("AUTH_JWKS_URL", url))
        .collect::<Result<Vec<_>, _>>()?;
    if jwks_urls.len() > 1 && jwks_urls.len() != issuers.len() {
        return Err(ConfigError::new(
            "AUTH_JWKS_URL",
            format!("give one URL for all issuers or one per AUTH_ISSUER entry ({} issuers)", issuers.len()),
        ));
    }
    let default_tenant = env.get("MEDIA_DEFAULT_TENANT");
    if let Some(tenant) = &default_tenant {
        if !crate::auth::principal::is_valid_tenant(tenant) {
            return Err(ConfigError::new("MEDIA_DEFAULT_TENANT", crate::auth::principal::TENANT_RULE));
        }
    }
    let client_ids = env.list("AUTH_CLIENT_ID");
    Ok(AuthConfig {
        mode,
        algorithms: algorithms(env)?,
        leeway: env.duration("AUTH_LEEWAY")?.unwrap_or(Duration::from_secs(60)),
        jwks_refresh: env
            .duration("AUTH_JWKS_REFRESH")?
            .unwrap_or(Duration::from_secs(600))
            .max(Duration::from_secs(1)),
        tenant_claim: env.get("AUTH_TENANT_CLAIM").unwrap_or_else(|| "tenant_id".into()),
        default_tenant,
        read_roles: env.list("AUTH_READ_ROLES"),
        write_roles: env.list("AUTH_WRITE_ROLES"),
        admin_roles: env.list("AUTH_ADMIN_ROLES"),
        client_ids: if client_ids.is_empty() { audiences.clone() } else { client_ids },
        dev_issuer: env.bool("AUTH_DEV_ISSUER")?.unwrap_or(profile == Profile::Dev),
        issuers,
        audiences,
        jwks_urls,
        ca: None,
    })
}

fn storage_prefix(env: &Env<'_>) -> Result<String, ConfigError> {
    let Some(prefix) = env.get("MEDIA_STORAGE_PREFIX") else { return Ok(String::new()) };
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    crate::storage::validate_key(&format!("{prefix}x"))
        .map_err(|e| ConfigError::new("MEDIA_STORAGE_PREFIX", e.to_string()))?;
    Ok(prefix)
}

fn allowed_types(env: &Env<'_>) -> Result<Vec<String>, ConfigError> {
    let types = env.list("MEDIA_ALLOWED_TYPES");
    if types.is_empty() {
        return Ok(crate::ingest::sniff::DEFAULT_ALLOWED.iter().map(|t| (*t).to_owned()).collect());
    }
    for name in &types {
        let canonical = crate::ingest::sniff::canonical(name);
        if canonical.as_deref().is_none_or(|t| !t.contains('/') || t == "image/svg+xml" || t.starts_with("text/")) {
            return Err(ConfigError::new(
                "MEDIA_ALLOWED_TYPES",
                format!("{name:?} cannot be allowed: give MIME types the bytes can be sniffed as, such as image/png"),
            ));
        }
    }
    Ok(types)
}

fn algorithms(env: &Env<'_>) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
    let names = env.list("AUTH_ALGORITHMS");
    if names.is_empty() {
        return Ok(DEFAULT_ALGORITHMS.to_vec());
    }
    names
        .iter()
        .map(|name| match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac => Ok(alg),
            _ => Err(ConfigError::new(
                "AUTH_ALGORITHMS",
                format!(
                    "{name:?} is not an accepted algorithm: use RS256, RS384, RS512, PS256, PS384, PS512, ES256, \
                     ES384 or EdDSA (shared-secret HS* algorithms are not supported)"
                ),
            )),
        })
        .collect()
}

fn keyring_source(env: &Env<'_>) -> KeyringSource {
    if let Some(keys) = env.secret("MEDIA_MASTER_KEYS") {
        KeyringSource::Env(keys)
    } else if let Some(path) = env.get("MEDIA_KEYRING_FILE") {
        KeyringSource::File(PathBuf::from(path))
    } else {
        KeyringSource::DevGenerated
    }
}

/// Typed access to the variables; empty values count as unset.
struct Env<'a> {
    vars: &'a HashMap<String, String>,
}

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn secret(&self, name: &str) -> Option<SecretString> {
        self.get(name).map(SecretString::from)
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn parse<T: std::str::FromStr>(&self, name: &str, expected: &str) -> Result<Option<T>, ConfigError> {
        self.get(name)
            .map(|v| v.parse::<T>().map_err(|_| ConfigError::new(name, format!("expected {expected}, got {v:?}"))))
            .transpose()
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ConfigError> {
        self.get(name)
            .map(|v| parse_bool(&v).ok_or_else(|| ConfigError::new(name, format!("expected true or false, got {v:?}"))))
            .transpose()
    }

    fn duration(&self, name: &str) -> Result<Option<Duration>, ConfigError> {
        self.get(name)
            .map(|v| {
                parse_duration(&v).ok_or_else(|| {
                    ConfigError::new(name, format!("expected a duration such as 30s, 5m or 1h30m, got {v:?}"))
                })
            })
            .transpose()
    }

    fn size(&self, name: &str) -> Result<Option<u64>, ConfigError> {
        self.get(name)
            .map(|v| {
                parse_size(&v).ok_or_else(|| {
                    ConfigError::new(name, format!("expected a size in bytes such as 20971520 or 20MiB, got {v:?}"))
                })
            })
            .transpose()
    }

    fn url(&self, name: &str) -> Result<Option<Url>, ConfigError> {
        self.get(name).map(|v| parse_http_url(name, &v)).transpose()
    }
}

fn parse_http_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value)
        .map_err(|e| ConfigError::new(name, format!("expected an http(s) URL, got {value:?} ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ConfigError::new(name, format!("expected an http(s) URL, got {value:?}")));
    }
    Ok(url)
}

/// `true/false`, `1/0`, `yes/no`, `on/off`, any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The longest `MEDIA_UPLOAD_TIMEOUT`: well below the hour after which the sweeper treats an
/// unfinished write as abandoned, so it never deletes an upload still running.
pub const MAX_UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Go-style durations (`300ms`, `15s`, `5m`, `1h30m`) or a bare number of seconds.
pub fn parse_duration(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.checked_mul(60)?),
            "h" => Duration::from_secs(number.checked_mul(3600)?),
            "d" => Duration::from_secs(number.checked_mul(86400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// A byte count: a bare number, or a number with `KB`, `MB`, `GB` (powers of 1000) or `KiB`, `MiB`,
/// `GiB` (powers of 1024).
pub fn parse_size(value: &str) -> Option<u64> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    if split == 0 {
        return None;
    }
    let number: u64 = value[..split].parse().ok()?;
    let factor: u64 = match value[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1000 * 1000,
        "gb" | "g" => 1000 * 1000 * 1000,
        "kib" => 1024,
        "mib" => MIB,
        "gib" => 1024 * MIB,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// Removes user info (passwords) and query strings from a URL for logging.
pub fn redact_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.set_query(None);
            url.to_string()
        }
        Err(_) => raw.split('?').next().unwrap_or_default().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master_keys() -> String {
        format!("k1:{}", crate::crypto::keyring::Keyring::generate_key())
    }

    #[test]
    fn malformed_keys_are_refused_at_start_naming_the_variable() {
        let err = Config::from_vars(&vars(&[("MEDIA_MASTER_KEYS", "k1:not-a-fernet-key")])).unwrap_err();
        assert_eq!(err.var, "MEDIA_MASTER_KEYS");
        assert!(!err.to_string().contains("not-a-fernet-key"), "the secret is not echoed: {err}");
        let err = Config::from_vars(&vars(&[("MEDIA_FS_SIGNING_KEY", "short")])).unwrap_err();
        assert_eq!(err.var, "MEDIA_FS_SIGNING_KEY");
    }

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_environment_gives_the_embedded_dev_setup() {
        let config = Config::from_vars(&HashMap::new()).expect("dev defaults are valid");
        assert_eq!(config.profile, Profile::Dev);
        assert_eq!(config.port, 8285);
        assert_eq!(config.max_bytes, 20 * MIB);
        assert_eq!(config.presign_ttl, Duration::from_secs(300));
        assert!(config.database.url.expose_secret().starts_with("sqlite://"));
        assert!(matches!(config.storage, StorageConfig::Filesystem(_)));
        assert!(matches!(config.keyring, KeyringSource::DevGenerated));
    }

    #[test]
    fn a_bad_number_names_the_variable() {
        let err = Config::from_vars(&vars(&[("MEDIA_MAX_BYTES", "abc")])).unwrap_err();
        assert_eq!(err.var, "MEDIA_MAX_BYTES");
        assert!(err.to_string().contains("\"abc\""), "{err}");
    }

    #[test]
    fn production_names_every_missing_setting_in_one_line() {
        let err = Config::from_vars(&vars(&[("MEDIA_PROFILE", "production")])).unwrap_err();
        let line = err.to_string();
        for name in ["AUTH_ISSUER", "AUTH_AUDIENCE", "MEDIA_MASTER_KEYS", "MEDIA_DATABASE_URL", "MEDIA_S3_BUCKET"] {
            assert!(line.contains(name), "{name} missing from: {line}");
        }
        assert!(!line.contains('\n'));
    }

    #[test]
    fn production_refuses_disabled_auth_even_when_everything_else_is_set() {
        let err = Config::from_vars(&vars(&[
            ("MEDIA_PROFILE", "production"),
            ("AUTH_ENABLED", "false"),
            ("AUTH_ISSUER", "https://id.example.com/realms/jan"),
            ("AUTH_AUDIENCE", "media-api"),
            ("MEDIA_MASTER_KEYS", &master_keys()),
            ("MEDIA_DATABASE_URL", "postgres://db/media"),
            ("MEDIA_S3_BUCKET", "media"),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("authentication cannot be disabled"), "{err}");
    }

    #[test]
    fn production_with_everything_explicit_is_accepted() {
        let keys = master_keys();
        let config = Config::from_vars(&vars(&[
            ("MEDIA_PROFILE", "production"),
            ("AUTH_ISSUER", "https://a.example.com, https://b.example.com"),
            ("AUTH_AUDIENCE", "media-api"),
            ("MEDIA_MASTER_KEYS", &keys),
            ("MEDIA_DATABASE_URL", "postgres://user:pw@db/media"),
            ("MEDIA_S3_BUCKET", "media"),
            ("MEDIA_S3_ENDPOINT", "http://garage:3900"),
            ("MEDIA_S3_ACCESS_KEY", "GK1"),
            ("MEDIA_S3_SECRET_KEY", "s3cr3t"),
        ]))
        .expect("valid production config");
        assert_eq!(config.auth.issuers.len(), 2);
        let StorageConfig::S3(s3) = &config.storage else { panic!("expected s3") };
        assert!(s3.path_style, "path style defaults on with a custom endpoint");
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t") && !debug.contains(":pw@") && !debug.contains(&keys), "{debug}");
        assert_eq!(config.database_url_for_logs(), "postgres://db/media");
    }

    #[test]
    fn auth_settings_are_checked_and_defaulted() {
        let config = Config::from_vars(&HashMap::new()).unwrap();
        assert_eq!(config.auth.algorithms, DEFAULT_ALGORITHMS.to_vec());
        assert_eq!((config.auth.audiences.as_slice(), config.auth.dev_issuer), (&[DEV_AUDIENCE.to_owned()][..], true));
        assert_eq!(config.auth.leeway, Duration::from_secs(60));
        for (name, value) in [
            ("AUTH_ALGORITHMS", "RS256,HS256"),
            ("AUTH_ALGORITHMS", "none"),
            ("AUTH_MODE", "sometimes"),
            ("AUTH_LEEWAY", "soon"),
            ("MEDIA_DEFAULT_TENANT", "../etc"),
        ] {
            let err = Config::from_vars(&vars(&[(name, value)])).unwrap_err();
            assert_eq!(err.var, name, "{err}");
        }
        let mismatched = vars(&[("AUTH_ISSUER", "a,b,c"), ("AUTH_JWKS_URL", "http://x/1,http://x/2")]);
        assert_eq!(Config::from_vars(&mismatched).unwrap_err().var, "AUTH_JWKS_URL");
        let orphan = vars(&[("AUTH_JWKS_URL", "http://x/1")]);
        assert_eq!(Config::from_vars(&orphan).unwrap_err().var, "AUTH_JWKS_URL");
        let nobody = vars(&[("AUTH_DEV_ISSUER", "false")]);
        assert_eq!(Config::from_vars(&nobody).unwrap_err().var, "AUTH_ISSUER", "no issuer at all is refused");
        let jan = Config::from_vars(&vars(&[("AUTH_ENABLED", "false")])).unwrap();
        assert_eq!(jan.auth.mode, AuthMode::Disabled, "AUTH_ENABLED=false is jan's way to disable auth");
        let production = Config::from_vars(&vars(&[("MEDIA_PROFILE", "production"), ("AUTH_DEV_ISSUER", "true")]));
        assert!(production.unwrap_err().to_string().contains("AUTH_DEV_ISSUER"));
    }

    #[test]
    fn half_a_credential_pair_is_refused() {
        let err = Config::from_vars(&vars(&[("MEDIA_S3_BUCKET", "b"), ("MEDIA_S3_ACCESS_KEY_ID", "GK1")])).unwrap_err();
        assert_eq!(err.var, "MEDIA_S3_ACCESS_KEY");
    }

    #[test]
    fn durations_and_sizes_parse_like_go_and_humans_write_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5 minutes"), None);
        assert_eq!(parse_size("20MiB"), Some(20 * MIB));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("abc"), None);
    }

    #[test]
    fn presign_ttl_above_the_cap_is_refused() {
        let err = Config::from_vars(&vars(&[("MEDIA_S3_PRESIGN_TTL", "2h")])).unwrap_err();
        assert_eq!(err.var, "MEDIA_S3_PRESIGN_TTL");
    }
}
