//! [`MediaError`]: the one error type of the media use cases (and of the ingest pipeline under
//! them). Each variant is a refusal a client can act on or a dependency failure; the HTTP layer maps
//! them to a status and a stable code in one place (`http::error`).

use super::ingest::sniff::TypeError;
use crate::db::DbError;
use crate::storage::StorageError;

/// Why a media use case refused or failed. Nothing is stored or changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// More than `MEDIA_MAX_BYTES`.
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Not an accepted type, or a declared type disagrees with the bytes.
    #[error(transparent)]
    Type(#[from] TypeError),
    /// The request itself is malformed (bad data URL, multipart without `file`, unknown source…).
    #[error("{message}")]
    Invalid {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The body stopped before its end (client gone, truncated multipart, lying `Content-Length`).
    #[error("the upload body could not be read to its end")]
    Interrupted(#[source] std::io::Error),
    /// A `remote_url` that must not be fetched.
    #[error("{0}")]
    RemoteBlocked(String),
    /// The remote server failed or answered an error.
    #[error("{0}")]
    RemoteFailed(String),
    /// No media with this ID in the caller's tenant (or not an ID at all): all answer the same.
    #[error("not found")]
    NotFound,
    /// A media ID named in a request (resolve) that the caller's tenant does not have.
    #[error("media {id} was not found")]
    MediaNotFound {
        /// The ID as the caller sent it.
        id: String,
    },
    /// The caller may not do this to this media (not its uploader, no `media:admin`).
    #[error("{message}")]
    Forbidden {
        /// Stable code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The media changed under the request (a delete racing a completion); retrying may work.
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// A declared type (of a prepared upload) that is not accepted.
    #[error("{declared} is not an accepted type")]
    UnacceptedType {
        /// The type as declared.
        declared: String,
    },
    /// A stored encrypted object did not authenticate (tampered, cut, padded, moved, or under a key
    /// that is gone): nothing of it is served.
    #[error("the stored object failed its integrity check and was not returned")]
    ObjectIntegrity,
    /// An encrypted object's link was asked for, but this service signs no links (encryption was
    /// turned off on S3 and no `MEDIA_LINK_SIGNING_KEY` is set).
    #[error("this media is stored encrypted and can only be downloaded through the service (GET /v1/media/{{id}}): no link signing key is configured")]
    NoLinks,
    /// The blob store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] DbError),
}

impl MediaError {
    /// A malformed request.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { code, message: message.into() }
    }

    /// The stable code a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::Empty => "empty",
            Self::Type(TypeError::Unsupported { .. }) | Self::UnacceptedType { .. } => "unsupported_type",
            Self::Type(TypeError::Mismatch { .. }) => "type_mismatch",
            Self::Invalid { code, .. } | Self::Forbidden { code, .. } | Self::Conflict { code, .. } => code,
            Self::Interrupted(err) if is_timeout(err) => "upload_timeout",
            Self::Interrupted(_) => "upload_interrupted",
            Self::RemoteBlocked(_) => "remote_fetch_blocked",
            Self::RemoteFailed(_) => "remote_fetch_failed",
            Self::NotFound | Self::MediaNotFound { .. } => "not_found",
            Self::ObjectIntegrity => "data_integrity",
            Self::NoLinks => "links_unavailable",
            Self::Storage(err) => err.code(),
            Self::Database(err) => err.code(),
        }
    }
}

/// Whether an upload's read error is (or wraps) the upload deadline's timeout.
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(error) = current {
        if error.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return true;
        }
        current = error.source();
    }
    false
}
