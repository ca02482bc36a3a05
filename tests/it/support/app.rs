//! Shared test helpers: a fresh database per test, the S3 settings `scripts/test` exports, and
//! `spawn_app`, which starts the service on port 0 against either backend pair.

use std::collections::HashMap;
use std::sync::Once;

use bytes::Bytes;
use futures::StreamExt;
use media_api::app::Application;
use media_api::config::Config;
use media_api::http::state::AppState;
use media_api::storage::ByteStream;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which database and blob store the app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// Real PostgreSQL and Garage: the production pair.
    PostgresS3,
    /// SQLite file and local directory: the embedded default.
    SqliteFs,
}

pub const STACKS: [Stack; 2] = [Stack::PostgresS3, Stack::SqliteFs];

/// The S3 server `scripts/test` started.
pub struct S3Env {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test, which starts Garage and PostgreSQL for them")
    })
}

pub fn s3_env() -> S3Env {
    S3Env {
        endpoint: required("MEDIA_TEST_S3_ENDPOINT"),
        region: std::env::var("MEDIA_TEST_S3_REGION").unwrap_or_else(|_| "garage".into()),
        bucket: required("MEDIA_TEST_S3_BUCKET"),
        access_key: required("MEDIA_TEST_S3_ACCESS_KEY"),
        secret_key: required("MEDIA_TEST_S3_SECRET_KEY"),
    }
}

/// The S3 client of the test bucket, for what the service itself does not expose (listings).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let env = s3_env();
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(env.region))
        .endpoint_url(env.endpoint)
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(env.access_key, env.secret_key, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// Creates an empty database `mediatest_<random>` on the test server and returns its URL.
/// (`scripts/test` drops leftovers of earlier runs.)
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = format!("mediatest_{}", random_hex(8));
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
    let mut url = url::Url::parse(&admin).expect("DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}

/// The environment a test app starts with, before the test's own overrides.
pub async fn base_vars(stack: Stack, dir: &std::path::Path) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("MEDIA_API_HOST", "127.0.0.1".to_owned()),
        ("MEDIA_API_PORT", "0".to_owned()),
        ("MEDIA_DATA_DIR", dir.join("data").display().to_string()),
        ("MEDIA_KEYS_DIR", dir.join("keys").display().to_string()),
        ("SHUTDOWN_TIMEOUT", "5s".to_owned()),
        ("LOG_LEVEL", "warn".to_owned()),
        // Tests fire requests faster than any client should; the limits have their own tests.
        ("MEDIA_RATE_LIMIT_RPS", "0".to_owned()),
        ("MEDIA_RATE_LIMIT_IP_RPS", "0".to_owned()),
        ("MEDIA_RATE_LIMIT_READYZ_RPS", "0".to_owned()),
        // Some tests open hundreds of connections at once from 127.0.0.1.
        ("MEDIA_MAX_CONNECTIONS_PER_IP", "0".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if stack == Stack::PostgresS3 {
        let s3 = s3_env();
        vars.insert("MEDIA_DATABASE_URL".into(), fresh_postgres_url().await);
        vars.insert("MEDIA_S3_ENDPOINT".into(), s3.endpoint);
        vars.insert("MEDIA_S3_REGION".into(), s3.region);
        vars.insert("MEDIA_S3_BUCKET".into(), s3.bucket);
        vars.insert("MEDIA_S3_ACCESS_KEY".into(), s3.access_key);
        vars.insert("MEDIA_S3_SECRET_KEY".into(), s3.secret_key);
    }
    vars
}

/// A running service on a free port.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub metrics_port: Option<u16>,
    pub state: AppState,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    pub server: JoinHandle<std::io::Result<()>>,
    pub dir: tempfile::TempDir,
}

pub async fn spawn_app(stack: Stack) -> TestApp {
    spawn_app_with(stack, &[]).await
}

pub async fn spawn_app_with(stack: Stack, overrides: &[(&str, &str)]) -> TestApp {
    static LOGS: Once = Once::new();
    LOGS.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            media_api::telemetry::init(
                media_api::config::LogFormat::Pretty,
                "debug",
                media_api::telemetry::LogTarget::Stderr,
            );
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut vars = base_vars(stack, dir.path()).await;
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), (*value).to_owned());
    }
    let config = Config::from_vars(&vars).expect("test configuration is valid");
    let app = Application::build(config).await.expect("the app starts");
    let port = app.port();
    let metrics_port = app.metrics_port();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        metrics_port,
        state,
        http: reqwest::Client::builder().no_proxy().build().expect("http client"),
        shutdown: Some(tx),
        server,
        dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Sends the stop signal (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so payloads are not trivially compressible.
pub fn payload(len: usize, seed: u64) -> Bytes {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Streams `data` in chunks of irregular sizes (so part boundaries fall inside chunks).
pub fn chunked(data: Bytes) -> ByteStream {
    let sizes = [1usize, 65_536, 1_000_003, 7, 300_000];
    let mut chunks = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while offset < data.len() {
        let end = (offset + sizes[i % sizes.len()]).min(data.len());
        chunks.push(Ok(data.slice(offset..end)));
        offset = end;
        i += 1;
    }
    futures::stream::iter(chunks).boxed()
}

/// Reads a stream to its end.
pub async fn collect(mut body: ByteStream) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("body chunk"));
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
