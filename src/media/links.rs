//! The service's own signed blob links — the filesystem backend's stand-in for S3 presigned URLs,
//! and the links of encrypted objects on any backend: a link is checked (signature, expiry) before
//! anything is read or written, a link to an encrypted object is served decrypted, and an upload
//! through one is held to the type, length and size limit it was signed for.

use futures::StreamExt;

use super::ingest::limit::{is_limit_exceeded, limit_stream};
use super::ingest::ByteStream;
use super::sealed::{self, SealedObject};
use super::{MediaError, MediaService};
use crate::storage::links::{LinkError, LinkQuery};
use crate::storage::{BlobObject, ByteRange, StorageError};

/// What a client declared about the body it sends to an upload link.
#[derive(Debug, Clone, Copy)]
pub struct LinkUpload<'a> {
    /// The request's `Content-Type`.
    pub content_type: &'a str,
    /// The request's `Content-Length`, when it parses.
    pub content_length: Option<u64>,
}

impl MediaService {
    /// Whether this service signs its own links (filesystem backend); otherwise the routes do not exist.
    pub fn serves_links(&self) -> bool {
        self.links.is_some()
    }

    /// Checks a link's signature and expiry for `method` on `key`.
    pub fn verify_link(&self, method: &str, key: &str, link: &LinkQuery) -> Result<(), MediaError> {
        let Some(links) = &self.links else { return Err(MediaError::NotFound) };
        links.verify(method, key, link, chrono::Utc::now()).map_err(forbidden)
    }

    /// The object behind a verified download link, decrypted while it streams when the link names
    /// an encrypted object.
    pub async fn open_linked(
        &self,
        key: &str,
        link: &LinkQuery,
        range: Option<ByteRange>,
    ) -> Result<BlobObject, MediaError> {
        let Some(links) = &self.links else { return Err(MediaError::NotFound) };
        let linked = links.linked_object(key, link).map_err(forbidden)?;
        let Some(linked) = linked else {
            return Ok(self.blobs.get(key, range).await?);
        };
        let object = SealedObject { tenant: &linked.tenant, key, dek_version: linked.dek_version, size: linked.size };
        sealed::open(self.blobs.as_ref(), self.repo.keys(), object, range).await
    }

    /// Stores the body sent to a verified upload link, held to what the link was signed for.
    pub async fn accept_linked(
        &self,
        key: &str,
        link: &LinkQuery,
        declared: LinkUpload<'_>,
        body: ByteStream,
    ) -> Result<(), MediaError> {
        let forbidden = |message: String| MediaError::Forbidden { code: "invalid_signature", message };
        if declared.content_type != link.content_type {
            return Err(forbidden(format!(
                "this link is for Content-Type {:?}, the request declares {:?}",
                link.content_type, declared.content_type
            )));
        }
        if let Some(bound) = link.content_length {
            if declared.content_length != Some(bound) {
                return Err(forbidden(format!("this link is for a body of exactly {bound} bytes")));
            }
        }
        let max = self.settings.max_bytes;
        let limit = link.content_length.unwrap_or(max).min(max);
        if declared.content_length.is_some_and(|length| length > limit) {
            return Err(MediaError::TooLarge { limit });
        }
        let stream = limit_stream(body.boxed(), limit);
        let written = match self.blobs.put(key, &link.content_type, stream).await {
            Err(StorageError::Source(err)) if is_limit_exceeded(&err).is_some() => {
                return Err(MediaError::TooLarge { limit })
            }
            other => other?,
        };
        if link.content_length.is_some_and(|bound| bound != written) {
            self.blobs.delete(key).await?;
            return Err(MediaError::invalid("length_mismatch", "the body ended before the signed length"));
        }
        Ok(())
    }
}

/// A link that does not verify, as the client sees it.
fn forbidden(err: LinkError) -> MediaError {
    let code = match err {
        LinkError::Expired => "link_expired",
        LinkError::BadSignature => "invalid_signature",
    };
    MediaError::Forbidden { code, message: err.to_string() }
}
