//! Blob storage settings: S3 (`MEDIA_S3_*`) or a local directory (`MEDIA_FS_*`), the key prefix,
//! the accepted content types, object encryption (`MEDIA_OBJECT_ENCRYPTION`) and the key of the
//! service's own signed links (`MEDIA_LINK_SIGNING_KEY`).

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

use super::env::{parse_bool, Env, MIB};
use super::ops::CaBundle;
use super::ConfigError;
use crate::domain::mime::{may_be_allowed, DEFAULT_ALLOWED};
use crate::domain::storage_key::check_storage_key;

/// The smallest part S3 accepts in a multipart upload (except the last one).
pub const S3_MIN_PART_SIZE: u64 = 5 * MIB;
/// The largest part S3 takes.
pub const S3_MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// The most parts a multipart upload has: each owns two of S3's 10 000 part numbers, one for its
/// first request and one for the whole part sent after a live request (`storage::s3::upload`).
pub const S3_MAX_UPLOAD_PARTS: u64 = 5_000;

/// Checks that the largest upload (`max_bytes`, plus what object encryption adds, under 0.1 %)
/// fits in [`S3_MAX_UPLOAD_PARTS`] parts of `part_size`.
pub(super) fn check_part_count(max_bytes: u64, part_size: u64) -> Result<(), super::ConfigError> {
    let largest = max_bytes.saturating_add(max_bytes / 1024).saturating_add(MIB);
    if largest.div_ceil(part_size) <= S3_MAX_UPLOAD_PARTS {
        return Ok(());
    }
    let wanted = largest.div_ceil(S3_MAX_UPLOAD_PARTS).div_ceil(MIB);
    let advice = match wanted * MIB <= S3_MAX_PART_SIZE {
        true => format!("set it to at least {wanted}MiB"),
        false => "no part size is large enough: lower MEDIA_MAX_BYTES".to_owned(),
    };
    Err(super::ConfigError::new(
        "MEDIA_S3_PART_SIZE",
        format!(
            "is too small for MEDIA_MAX_BYTES ({max_bytes} bytes): an upload has at most {S3_MAX_UPLOAD_PARTS} \
             parts; {advice}"
        ),
    ))
}

/// How long S3 may take to answer by default (`MEDIA_S3_READ_TIMEOUT`).
pub const DEFAULT_S3_READ_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// How long S3 may take to answer a request once it is sent (`MEDIA_S3_READ_TIMEOUT`, default
    /// 60s, 1s – 10m): an attempt left unanswered longer fails and is retried; a part sent while it
    /// filled is sent again whole. Requests whose body comes from a client get the upload timeout
    /// on top.
    pub read_timeout: Duration,
    /// Whether a body of unknown length above one part (a chunked upload, a form without a
    /// `Content-Length`) goes up as one `PutObject` sent with `Transfer-Encoding: chunked`
    /// (`MEDIA_S3_CHUNKED_PUT`, default `auto`).
    pub chunked_put: ChunkedPut,
    /// Extra trusted roots (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

/// `MEDIA_S3_CHUNKED_PUT`: whether a body of unknown length is sent as one `PutObject` without a
/// `Content-Length` instead of a multipart upload. Garage and Ceph take such a request; AWS S3
/// and MinIO refuse it (411 Length Required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkedPut {
    /// `auto`: the first such upload asks the store with a one-byte request to a key beside its
    /// own, deleted at once; its answer holds for the life of the process, unless a chunked
    /// `PutObject` is refused later (then multipart uploads).
    Auto,
    /// `true`: always (the store is known to take it).
    Always,
    /// `false`: never; such bodies go up as multipart uploads.
    Never,
}

/// Local filesystem blob storage settings (embedded default).
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Root directory of the blobs (`MEDIA_FS_ROOT`, default `<data dir>/blobs`).
    pub root: PathBuf,
}

/// Which blob store holds the bytes.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// S3 or an S3-compatible server.
    S3(Box<S3Config>),
    /// A local directory, links signed by the service.
    Filesystem(FsConfig),
}

pub(super) fn storage_config(env: &Env<'_>, data_dir: &std::path::Path) -> Result<StorageConfig, ConfigError> {
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
    if !(S3_MIN_PART_SIZE..=S3_MAX_PART_SIZE).contains(&part_size) {
        return Err(ConfigError::new(
            "MEDIA_S3_PART_SIZE",
            "must be between 5 MiB and 5 GiB (the S3 limits; each upload holds MEDIA_S3_UPLOAD_CONCURRENCY buffers of it)",
        ));
    }
    let upload_concurrency = env.parse::<usize>("MEDIA_S3_UPLOAD_CONCURRENCY", "a whole number")?.unwrap_or(2);
    if !(1..=16).contains(&upload_concurrency) {
        return Err(ConfigError::new("MEDIA_S3_UPLOAD_CONCURRENCY", "must be between 1 and 16"));
    }
    let read_timeout = env.duration("MEDIA_S3_READ_TIMEOUT")?.unwrap_or(DEFAULT_S3_READ_TIMEOUT);
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&read_timeout) {
        return Err(ConfigError::new("MEDIA_S3_READ_TIMEOUT", "must be between 1s and 10m"));
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
        read_timeout,
        chunked_put: chunked_put(env)?,
        ca: None,
    })))
}

fn chunked_put(env: &Env<'_>) -> Result<ChunkedPut, ConfigError> {
    match env.get("MEDIA_S3_CHUNKED_PUT") {
        None => Ok(ChunkedPut::Auto),
        Some(value) if value.eq_ignore_ascii_case("auto") => Ok(ChunkedPut::Auto),
        Some(value) => match parse_bool(&value) {
            Some(true) => Ok(ChunkedPut::Always),
            Some(false) => Ok(ChunkedPut::Never),
            None => {
                Err(ConfigError::new("MEDIA_S3_CHUNKED_PUT", format!("expected auto, true or false, got {value:?}")))
            }
        },
    }
}

pub(super) fn storage_prefix(env: &Env<'_>) -> Result<String, ConfigError> {
    let Some(prefix) = env.get("MEDIA_STORAGE_PREFIX") else { return Ok(String::new()) };
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    check_storage_key(&format!("{prefix}x"))
        .map_err(|why| ConfigError::new("MEDIA_STORAGE_PREFIX", format!("invalid object key: {why}")))?;
    Ok(prefix)
}

pub(super) fn allowed_types(env: &Env<'_>) -> Result<Vec<String>, ConfigError> {
    let types = env.list("MEDIA_ALLOWED_TYPES");
    if types.is_empty() {
        return Ok(DEFAULT_ALLOWED.iter().map(|t| (*t).to_owned()).collect());
    }
    for name in &types {
        if !may_be_allowed(name) {
            return Err(ConfigError::new(
                "MEDIA_ALLOWED_TYPES",
                format!("{name:?} cannot be allowed: give MIME types the bytes can be sniffed as, such as image/png"),
            ));
        }
    }
    Ok(types)
}

/// The variables that may hold the link signing key, the first set one wins:
/// `MEDIA_LINK_SIGNING_KEY`, or the name it had when only the filesystem backend signed links.
pub(super) const LINK_KEY_VARS: [&str; 2] = ["MEDIA_LINK_SIGNING_KEY", "MEDIA_FS_SIGNING_KEY"];

/// The HMAC key of the service's own signed links, when one is given, and the variable it came from.
pub(super) fn link_signing_key(env: &Env<'_>) -> Option<(&'static str, SecretString)> {
    LINK_KEY_VARS.iter().find_map(|var| env.secret(var).map(|key| (*var, key)))
}

/// `MEDIA_OBJECT_ENCRYPTION` (`on`/`off`): by default off on S3 — a drop-in for the Go service keeps
/// handing out plain S3 presigned URLs — and on for the embedded filesystem store, whose links are
/// the service's own anyway.
pub(super) fn object_encryption(env: &Env<'_>, storage: &StorageConfig) -> Result<bool, ConfigError> {
    let default = matches!(storage, StorageConfig::Filesystem(_));
    Ok(env.bool("MEDIA_OBJECT_ENCRYPTION")?.unwrap_or(default))
}
