//! Blob storage: where the bytes of media live.
//!
//! [`BlobStore`] is object-safe and held as `Arc<dyn BlobStore>`, so the rest of the service does not
//! know which backend it talks to:
//! - [`s3::S3BlobStore`]: S3 or any S3-compatible server (Garage, MinIO, Ceph) through aws-sdk-s3.
//!   Uploads stream: one PUT below the part size, a multipart upload above it, aborted on any error.
//! - [`fs::FsBlobStore`]: a local directory for the embedded default. Its presigned URLs are
//!   HMAC-signed links to the service's own `/v1/blobs/…` route ([`links`]).
//!
//! Keys are chosen by the service (random), but every backend still validates them with
//! [`validate_key`] so no key can address anything outside the store.

pub mod fs;
pub mod links;
pub mod s3;
pub mod s3_presign;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::config::StorageConfig;
pub use crate::domain::storage_key::{check_storage_key, MAX_KEY_LEN};

/// A stream of body chunks; an `Err` item means the source failed and the write must not land.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object under that key.
    #[error("object not found")]
    NotFound,
    /// A key that could escape the store or is otherwise malformed.
    #[error("invalid object key: {0}")]
    InvalidKey(String),
    /// A byte range outside the object.
    #[error("requested range is not satisfiable for an object of {size} bytes")]
    InvalidRange {
        /// Size of the object.
        size: u64,
    },
    /// The body stream being stored failed (client gone, limit passed, …); nothing was stored.
    #[error("upload source failed: {0}")]
    Source(#[source] std::io::Error),
    /// The backend refused or failed an operation.
    #[error("{backend} {operation} failed: {message}")]
    Backend {
        /// `s3` or `fs`.
        backend: &'static str,
        /// What was being done (`put`, `get`, `presign`, …).
        operation: &'static str,
        /// The backend's own description (never contains credentials or signatures).
        message: String,
    },
}

impl StorageError {
    /// The stable code a client sees for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound | Self::InvalidKey(_) => "not_found",
            Self::InvalidRange { .. } => "range_not_satisfiable",
            Self::Source(_) => "upload_interrupted",
            Self::Backend { .. } => "storage_unavailable",
        }
    }

    pub(crate) fn backend(backend: &'static str, operation: &'static str, err: impl std::fmt::Display) -> Self {
        Self::Backend { backend, operation, message: err.to_string() }
    }
}

/// An inclusive byte range, as in an HTTP `Range: bytes=start-end` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive); `None` means to the end.
    pub end: Option<u64>,
}

impl ByteRange {
    /// Resolves the range against an object size: `(first, last)` inclusive, or `InvalidRange`.
    pub fn resolve(&self, size: u64) -> Result<(u64, u64), StorageError> {
        if self.start >= size || self.end.is_some_and(|end| end < self.start) {
            return Err(StorageError::InvalidRange { size });
        }
        let last = self.end.map_or(size - 1, |end| end.min(size - 1));
        Ok((self.start, last))
    }

    /// The value of an S3 / HTTP `Range` header for this range.
    pub fn header_value(&self) -> String {
        match self.end {
            Some(end) => format!("bytes={}-{}", self.start, end),
            None => format!("bytes={}-", self.start),
        }
    }
}

/// A stored object being read.
pub struct BlobObject {
    /// The bytes (the whole object or the requested range).
    pub body: ByteStream,
    /// Number of bytes `body` yields.
    pub content_length: u64,
    /// Size of the whole object.
    pub total_size: u64,
    /// `(first, last)` when a range was served.
    pub range: Option<(u64, u64)>,
}

impl std::fmt::Debug for BlobObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobObject")
            .field("content_length", &self.content_length)
            .field("total_size", &self.total_size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// What `head` reports about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Size in bytes.
    pub size: u64,
    /// Content type stored with the object, when the backend keeps one.
    pub content_type: Option<String>,
}

/// Options of a presigned download.
#[derive(Debug, Clone)]
pub struct PresignGet {
    /// How long the URL is valid.
    pub ttl: Duration,
    /// `Content-Type` the response is forced to carry.
    pub content_type: String,
    /// `Content-Disposition` the response is forced to carry.
    pub content_disposition: String,
}

/// Options of a presigned upload.
#[derive(Debug, Clone)]
pub struct PresignPut {
    /// How long the URL is valid.
    pub ttl: Duration,
    /// `Content-Type` the upload must declare (signed).
    pub content_type: String,
    /// Exact `Content-Length` the upload must have (signed), when known.
    pub content_length: Option<u64>,
}

/// A presigned request a client can make without credentials.
#[derive(Debug, Clone)]
pub struct PresignedRequest {
    /// The URL, signature included (never logged).
    pub url: String,
    /// `GET` or `PUT`.
    pub method: &'static str,
    /// Headers the client must send with it (signed ones).
    pub headers: Vec<(String, String)>,
    /// When the URL stops working.
    pub expires_at: DateTime<Utc>,
}

/// Object storage, as the rest of the service sees it.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// `s3` or `fs`, for logs and readiness output.
    fn backend(&self) -> &'static str;

    /// Stores the stream under `key` and returns the number of bytes written. The object appears
    /// only when the stream ended cleanly; on any error (or if the future is dropped) nothing is left.
    async fn put(&self, key: &str, content_type: &str, body: ByteStream) -> Result<u64, StorageError>;

    /// [`BlobStore::put`] of a body of unknown length known to hold at most `at_most` bytes (the
    /// upload limit; the body fails past it). A store may use the bound to send a body of unknown
    /// length in one request when it fits one.
    async fn put_at_most(
        &self,
        key: &str,
        content_type: &str,
        at_most: u64,
        body: ByteStream,
    ) -> Result<u64, StorageError> {
        let _ = at_most;
        self.put(key, content_type, body).await
    }

    /// [`BlobStore::put`] of a body whose length is known in advance (a `Content-Length`, or an
    /// object being copied). A store may use it to stream the body in one request instead of
    /// buffering parts; a body that ends early or runs long fails, leaving nothing.
    async fn put_sized(
        &self,
        key: &str,
        content_type: &str,
        length: u64,
        body: ByteStream,
    ) -> Result<u64, StorageError> {
        self.put(key, content_type, exact_length(body, length)).await
    }

    /// [`BlobStore::put`] of a body that is probably `expected` bytes long but may not be: a
    /// multipart form's file, whose length is guessed from the form's `Content-Length`. A store
    /// may announce the guess and stream the body in one request, then make a wrong guess good: a
    /// body that ends short is followed in that request by bytes of `after` (what the client sent
    /// after the body, so nothing is written that the client did not send) and cut back to its
    /// own length; one that runs longer, by at most a part, has the rest appended. Either way the
    /// object holds the body's bytes exactly, and the count of them is returned. `after` is read
    /// only when the body ends short; it ending first fails the upload. On an error, an object
    /// may be left under `key`: the caller deletes it (the upload pipeline journals every key).
    async fn put_expecting(
        &self,
        key: &str,
        content_type: &str,
        expected: u64,
        body: ByteStream,
        after: ByteStream,
    ) -> Result<u64, StorageError> {
        let _ = (expected, after);
        self.put(key, content_type, body).await
    }

    /// Reads an object, or a byte range of it, as a stream.
    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<BlobObject, StorageError>;

    /// Size (and type, when kept) of an object.
    async fn head(&self, key: &str) -> Result<BlobMeta, StorageError>;

    /// Deletes an object; deleting a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// A URL that downloads the object with forced response headers until `ttl` passes.
    async fn presign_get(&self, key: &str, options: &PresignGet) -> Result<PresignedRequest, StorageError>;

    /// Whether an upload URL without a length would accept any size (S3: up to 5 GiB until it
    /// expires), so callers must give one; the filesystem's links enforce `MEDIA_MAX_BYTES` themselves.
    fn unsized_puts_unbounded(&self) -> bool {
        true
    }

    /// A URL that uploads to `key`, bound to a content type and (optionally) a length.
    async fn presign_put(&self, key: &str, options: &PresignPut) -> Result<PresignedRequest, StorageError>;

    /// Readiness: can the store be reached and used?
    async fn check(&self) -> Result<(), StorageError>;

    /// Cleans up writes abandoned for longer than `older_than` — what a crash, a killed process or
    /// an unfinished direct upload leaves: open multipart uploads under `prefix` (S3), temporary
    /// files (filesystem), and objects under `<prefix>staging/` (both). Returns how many were
    /// removed.
    async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<u64, StorageError>;

    /// The keys of the objects under `prefix` last written more than `older_than` ago (what
    /// `reconcile` compares with the rows and the journal). Holds every such key in memory.
    async fn list_older_than(&self, prefix: &str, older_than: Duration) -> Result<Vec<String>, StorageError>;
}

/// `body`, failing (as a source error) when it runs past `length` or ends before it.
pub fn exact_length(body: ByteStream, length: u64) -> ByteStream {
    use futures::StreamExt;
    let error = |kind, message: &str| std::io::Error::new(kind, message.to_owned());
    futures::stream::unfold((body, 0u64, false), move |(mut body, seen, done)| async move {
        if done {
            return None;
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                let seen = seen + chunk.len() as u64;
                if seen > length {
                    let err = error(std::io::ErrorKind::InvalidData, "the body is longer than announced");
                    return Some((Err(err), (body, seen, true)));
                }
                Some((Ok(chunk), (body, seen, false)))
            }
            Some(Err(err)) => Some((Err(err), (body, seen, true))),
            None if seen < length => {
                let err = error(std::io::ErrorKind::UnexpectedEof, "the body ended before its announced length");
                Some((Err(err), (body, seen, true)))
            }
            None => None,
        }
    })
    .boxed()
}

/// Accepts keys made of `/`-separated segments of `[A-Za-z0-9._-]` (see [`check_storage_key`]).
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    check_storage_key(key).map_err(|why| StorageError::InvalidKey(why.to_owned()))
}

/// `attachment`/`inline` disposition with an RFC 6266-safe filename: an ASCII fallback (quotes,
/// backslashes and controls replaced, one `_` per other character) plus the exact name
/// percent-encoded in `filename*`. Built byte by byte into one buffer: it is part of every
/// presign and download.
pub fn content_disposition(disposition: &str, filename: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let fallback = |c: char| match u8::try_from(c) {
        Ok(b) if (b.is_ascii_graphic() && b != b'"' && b != b'\\') || b == b' ' => b,
        _ => b'_',
    };
    let mut out = Vec::with_capacity(disposition.len() + 32 + filename.len() * 4);
    out.extend_from_slice(disposition.as_bytes());
    out.extend_from_slice(b"; filename=\"");
    if filename.is_ascii() {
        out.extend(filename.bytes().map(|b| fallback(char::from(b))));
    } else {
        out.extend(filename.chars().map(fallback));
    }
    out.extend_from_slice(b"\"; filename*=UTF-8''");
    for b in filename.bytes() {
        if ATTR_CHAR[usize::from(b)] {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    String::from_utf8(out).expect("the disposition as given, then ASCII")
}

/// The bytes RFC 5987's `attr-char` leaves unencoded.
const ATTR_CHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'!' | b'#' | b'$' | b'&' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

/// Builds the configured blob store. The filesystem backend needs `links`, the signer of the
/// service's own blob links.
pub async fn from_config(
    config: &StorageConfig,
    links: Option<Arc<links::LinkSigner>>,
) -> Result<Arc<dyn BlobStore>, StorageError> {
    match config {
        StorageConfig::S3(s3_config) => Ok(Arc::new(s3::S3BlobStore::new(s3_config).await?)),
        StorageConfig::Filesystem(fs_config) => {
            let links = links.ok_or_else(|| StorageError::backend("fs", "configure", "no link signer"))?;
            Ok(Arc::new(fs::FsBlobStore::open(&fs_config.root, links).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_the_root_are_refused() {
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/", "a\0b", "a\\b", "é", "a b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "t/ab12/obj.bin", "tenant-1/2026/x_y.z"] {
            assert!(validate_key(good).is_ok(), "{good:?} refused");
        }
        assert!(validate_key(&"a".repeat(MAX_KEY_LEN + 1)).is_err());
    }

    #[test]
    fn ranges_resolve_against_the_object_size() {
        let r = |start, end| ByteRange { start, end };
        assert_eq!(r(0, Some(9)).resolve(100).unwrap(), (0, 9));
        assert_eq!(r(90, None).resolve(100).unwrap(), (90, 99));
        assert_eq!(r(90, Some(500)).resolve(100).unwrap(), (90, 99));
        assert!(r(100, None).resolve(100).is_err());
        assert!(r(5, Some(4)).resolve(100).is_err());
        assert!(r(0, None).resolve(0).is_err());
    }

    #[test]
    fn content_disposition_cannot_be_broken_out_of() {
        let header = content_disposition("attachment", "a\"b\r\n.html; x=1 ü.png");
        assert!(!header.contains('\r') && !header.contains('\n'));
        assert!(header.starts_with("attachment; filename=\"a_b__.html; x=1 _.png\"; filename*=UTF-8''"));
        assert!(header.ends_with("a%22b%0D%0A.html%3B%20x%3D1%20%C3%BC.png"), "{header}");
    }

    /// The header as first written, char by char: the byte-wise one must build the same.
    fn content_disposition_reference(disposition: &str, filename: &str) -> String {
        let mut out = format!("{disposition}; filename=\"");
        out.extend(filename.chars().map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        }));
        out.push_str("\"; filename*=UTF-8''");
        for b in filename.bytes() {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[test]
    fn content_disposition_is_the_char_by_char_header() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let alphabet: Vec<char> = (0u8..128).map(char::from).chain("éü€😀\u{7f}\u{80}\u{a0}ÿ".chars()).collect();
        let mut names = vec![String::new(), "jan_0sj67cz0qc8rxtgbn980mvdrhf.png".to_owned(), "a\"b\\c".to_owned()];
        names.extend(
            (0..2000).map(|_| (0..rng.gen_range(1..40)).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()),
        );
        for name in &names {
            for disposition in ["inline", "attachment"] {
                assert_eq!(
                    content_disposition(disposition, name),
                    content_disposition_reference(disposition, name),
                    "{name:?}"
                );
            }
        }
    }
}
