//! What an operator tunes to keep the service healthy under load: listeners, rate limits, upload
//! slots, deadlines, CORS, TLS and extra trusted roots.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::env::{redact_url, Env, MIB};
use super::ConfigError;

/// The longest `MEDIA_UPLOAD_TIMEOUT`: well below the hour after which the sweeper treats an
/// unfinished write as abandoned, so it never deletes an upload still running.
pub const MAX_UPLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `MEDIA_UPLOAD_MIN_RATE` when unset: 1 KiB/s, far below any real network, far above a trickle.
const DEFAULT_UPLOAD_MIN_RATE: u64 = 1024;

/// The largest `MEDIA_UPLOAD_MIN_RATE`: above it a mistyped unit would refuse ordinary uploads.
const MAX_UPLOAD_MIN_RATE: u64 = 16 << 20;

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
    /// Longest wait for the next byte of an upload's body (`MEDIA_UPLOAD_IDLE_TIMEOUT`, default 30s):
    /// a client that stalls is answered 408 and frees its upload slots.
    pub upload_idle_timeout: Duration,
    /// The fewest bytes per second an upload's body may bring, counted over windows of twice the
    /// idle timeout spent waiting for it (`MEDIA_UPLOAD_MIN_RATE`, default 1 KiB, 0 = none, at most
    /// 16 MiB): a client that trickles bytes is answered 408 and frees its upload slots.
    pub upload_min_rate: u64,
    /// Largest request head (`MEDIA_MAX_HEADER_BYTES`, default 64 KiB, at least 8 KiB); 431 past it.
    pub max_header_bytes: usize,
    /// Connections served at once (`MEDIA_MAX_CONNECTIONS`, default 1024); more wait in the backlog.
    pub max_connections: usize,
    /// Connections one client network (an IPv4 address, an IPv6 /64) may hold open at once
    /// (`MEDIA_MAX_CONNECTIONS_PER_IP`, default 64, 0 = no cap); one more is closed as soon as it is
    /// accepted. Keyed by the TCP peer: behind a proxy every connection is the proxy's.
    pub max_connections_per_ip: usize,
    /// How long a connection may go without a complete request head: from its accept, or from the
    /// end of its previous response (an idle keep-alive connection), to the last byte of the next
    /// head; also the TLS handshake's limit (`MEDIA_KEEPALIVE_TIMEOUT`, default 15s, 1s to 5m).
    pub keepalive_timeout: Duration,
    /// How long a client may accept no byte of a response before it is disconnected
    /// (`MEDIA_SEND_TIMEOUT`, default 30s, 1s to 10m).
    pub send_timeout: Duration,
    /// Per-client-IP limit of `/readyz` (`MEDIA_RATE_LIMIT_READYZ_RPS` 10, `_BURST` 20).
    pub readyz_rate: RateLimit,
    /// Origins allowed by CORS (`CORS_ALLOWED_ORIGINS`; none by default, `*` for any).
    pub cors_allowed_origins: Vec<String>,
    /// HTTPS on the main listener.
    pub tls: Option<TlsConfig>,
    /// Extra trusted roots for outbound TLS (`MEDIA_CA_FILE`): S3, JWKS, remote fetch, Postgres.
    pub ca: Option<CaBundle>,
    /// Limits shared by every replica through Redis (`MEDIA_REDIS_URL`); `None`: each replica
    /// limits on its own.
    pub redis: Option<RedisConfig>,
}

/// The Redis that holds the shared limits (`MEDIA_REDIS_URL`, `MEDIA_REDIS_TIMEOUT`).
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS, rustls).
    pub url: SecretString,
    /// Longest wait for one limit check (`MEDIA_REDIS_TIMEOUT`, default 100ms, 1ms to 5s); past
    /// it the check falls back to the replica's own limits.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(self.url.expose_secret()))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisConfig {
    /// The URL with any password removed, for log lines.
    pub fn url_for_logs(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

fn redis_config(env: &Env<'_>) -> Result<Option<RedisConfig>, ConfigError> {
    let Some(url) = env.get("MEDIA_REDIS_URL").filter(|u| !u.trim().is_empty()) else { return Ok(None) };
    let parsed = Url::parse(&url).ok().filter(|u| matches!(u.scheme(), "redis" | "rediss") && u.host().is_some());
    if parsed.is_none() {
        return Err(ConfigError::new(
            "MEDIA_REDIS_URL",
            format!("expected redis://host:port or rediss://host:port, got {:?}", redact_url(&url)),
        ));
    }
    let timeout = env.duration("MEDIA_REDIS_TIMEOUT")?.unwrap_or(Duration::from_millis(100));
    if !(Duration::from_millis(1)..=Duration::from_secs(5)).contains(&timeout) {
        return Err(ConfigError::new("MEDIA_REDIS_TIMEOUT", "must be between 1ms and 5s"));
    }
    Ok(Some(RedisConfig { url: SecretString::from(url), timeout }))
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

pub(super) fn rate_limit(
    env: &Env<'_>,
    rps: &str,
    burst: &str,
    defaults: (u32, u32),
) -> Result<RateLimit, ConfigError> {
    let expected = "a whole number (0 turns the limit off)";
    let rps = env.parse(rps, expected)?.unwrap_or(defaults.0);
    let burst = env.parse(burst, expected)?.unwrap_or(if rps == 0 { 0 } else { defaults.1.max(rps) });
    Ok(RateLimit { rps, burst })
}

pub(super) fn ops_config(env: &Env<'_>) -> Result<OpsConfig, ConfigError> {
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
    let upload_idle_timeout =
        env.duration("MEDIA_UPLOAD_IDLE_TIMEOUT")?.unwrap_or(upload_timeout.min(Duration::from_secs(30)));
    if upload_idle_timeout > upload_timeout {
        return Err(ConfigError::new("MEDIA_UPLOAD_IDLE_TIMEOUT", "must not be longer than MEDIA_UPLOAD_TIMEOUT"));
    }
    let upload_min_rate = env.size("MEDIA_UPLOAD_MIN_RATE")?.unwrap_or(DEFAULT_UPLOAD_MIN_RATE);
    if upload_min_rate > MAX_UPLOAD_MIN_RATE {
        return Err(ConfigError::new(
            "MEDIA_UPLOAD_MIN_RATE",
            "must be at most 16MiB (bytes per second; 0 turns the minimum off)",
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
    let max_connections_per_ip: usize =
        env.parse("MEDIA_MAX_CONNECTIONS_PER_IP", "a whole number (0 turns the cap off)")?.unwrap_or(64);
    let keepalive_timeout = env.duration("MEDIA_KEEPALIVE_TIMEOUT")?.unwrap_or(Duration::from_secs(15));
    if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&keepalive_timeout) {
        return Err(ConfigError::new("MEDIA_KEEPALIVE_TIMEOUT", "must be between 1s and 5m"));
    }
    let send_timeout = env.duration("MEDIA_SEND_TIMEOUT")?.unwrap_or(Duration::from_secs(30));
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&send_timeout) {
        return Err(ConfigError::new("MEDIA_SEND_TIMEOUT", "must be between 1s and 10m"));
    }
    Ok(OpsConfig {
        metrics_addr: env.parse("MEDIA_METRICS_ADDR", "an address such as 0.0.0.0:9090")?,
        principal_rate: rate_limit(env, "MEDIA_RATE_LIMIT_RPS", "MEDIA_RATE_LIMIT_BURST", (100, 200))?,
        ip_rate: rate_limit(env, "MEDIA_RATE_LIMIT_IP_RPS", "MEDIA_RATE_LIMIT_IP_BURST", (20, 40))?,
        max_concurrent_uploads,
        max_uploads_per_caller,
        request_timeout: at_least_a_second("MEDIA_REQUEST_TIMEOUT", request_timeout)?,
        upload_timeout: at_least_a_second("MEDIA_UPLOAD_TIMEOUT", upload_timeout)?,
        upload_idle_timeout: at_least_a_second("MEDIA_UPLOAD_IDLE_TIMEOUT", upload_idle_timeout)?,
        upload_min_rate,
        max_header_bytes: max_header_bytes as usize,
        max_connections,
        max_connections_per_ip,
        keepalive_timeout,
        send_timeout,
        readyz_rate: rate_limit(env, "MEDIA_RATE_LIMIT_READYZ_RPS", "MEDIA_RATE_LIMIT_READYZ_BURST", (10, 20))?,
        cors_allowed_origins,
        tls,
        ca: env.get("MEDIA_CA_FILE").map(PathBuf::from).map(CaBundle::read).transpose()?,
        redis: redis_config(env)?,
    })
}
