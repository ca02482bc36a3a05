//! Encrypted objects (DESIGN §9) as the use cases move them: the stream adapters between plaintext
//! and the sealed segments of [`crate::crypto::object`], and the reads that fetch only the segments
//! a range needs.
//!
//! - [`Sealing`]: the cipher of a new object under the tenant's current DEK; [`Sealing::seal`] turns
//!   a plaintext stream into the stored form while it flows, one segment at a time (the pipeline
//!   limits, sniffs and hashes the plaintext before it, in the same pass).
//! - [`open`]: a stored object's plaintext, whole or a range: the ranged GET of the segments that
//!   hold it (one GET with the header when the range starts in the first segment, else the header and
//!   the segments side by side), each segment opened only once it authenticated. The first segment
//!   is opened before the answer is handed back, so an object tampered there (or cut, padded, or
//!   under another key) is an error status; a segment failing later ends the body with an error,
//!   which aborts the response instead of ending it cleanly.
//!
//! The key context is the tenant and the storage key: the rows of a dedup group share both, so they
//! share the object; an object copied under another key or tenant does not open.
//!
//! Memory is flat: at most one segment of plaintext and one sealed segment per stream, whatever the
//! chunk sizes coming in. Both streams are fused: polled after their end (or their error) they stay
//! ended.

use bytes::{Bytes, BytesMut};
use futures::{stream, StreamExt};

use super::ingest::ByteStream;
use super::MediaError;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::object::{self, ObjectCipher, ObjectHeader, Opener, Sealer, Span, HEADER_LEN, SEGMENT_LEN};
use crate::crypto::CryptoError;
use crate::db::tenant_keys::TenantKeys;
use crate::storage::{BlobObject, BlobStore, ByteRange, StorageError};
use crate::telemetry::metrics::names;

/// What a stored encrypted object is: where it lives and what opening it takes.
#[derive(Debug, Clone, Copy)]
pub struct SealedObject<'a> {
    /// The tenant whose keys sealed it.
    pub tenant: &'a str,
    /// Its storage key.
    pub key: &'a str,
    /// The DEK version its row (or link) names; the header must name the same.
    pub dek_version: u32,
    /// Its plaintext size.
    pub size: u64,
}

/// The error a stream of an object that failed to authenticate ends with.
#[derive(Debug, thiserror::Error)]
#[error("the stored object failed its integrity check")]
pub struct Tampered;

fn tampered() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, Tampered)
}

fn is_tampered(err: &std::io::Error) -> bool {
    err.get_ref().is_some_and(|inner| inner.is::<Tampered>())
}

/// The HKDF context of an object's key.
fn context<'a>(tenant: &'a str, key: &'a str) -> [&'a [u8]; 2] {
    [tenant.as_bytes(), key.as_bytes()]
}

/// A new object's cipher, and the DEK version it is derived from.
pub struct Sealing {
    cipher: ObjectCipher,
    /// The DEK version the object is sealed under (recorded on its row).
    pub dek_version: u32,
}

impl Sealing {
    /// The cipher of a new object of `tenant` under `key`, from the tenant's current DEK.
    pub async fn new(keys: &TenantKeys, tenant: &str, key: &str) -> Result<Self, MediaError> {
        let dek = keys.current(tenant, KeyPurpose::Dek).await?;
        Ok(Self { cipher: ObjectCipher::new_object(&dek, &context(tenant, key)), dek_version: dek.version })
    }

    /// The cipher of a new object of `tenant` under `key`, from the tenant's DEK `version` (a
    /// moved object, `media::rekey`; the rows' write checks that it is the current one).
    pub async fn under(keys: &TenantKeys, tenant: &str, key: &str, version: u32) -> Result<Self, MediaError> {
        let dek = keys.version(tenant, KeyPurpose::Dek, version).await?;
        Ok(Self { cipher: ObjectCipher::new_object(&dek, &context(tenant, key)), dek_version: version })
    }

    /// `body` sealed while it streams: the header, then each segment once it is complete (an
    /// incoming chunk is taken a segment at a time, so no chunk is ever held twice). An error of
    /// `body` is passed on and ends the stream.
    pub fn seal(self, body: ByteStream) -> ByteStream {
        struct State {
            body: ByteStream,
            sealer: Option<Sealer>,
            chunk: Bytes,
            out: Vec<u8>,
        }
        let state = State { body, sealer: Some(Sealer::new(self.cipher)), chunk: Bytes::new(), out: Vec::new() };
        stream::unfold(state, |mut state| async move {
            loop {
                let sealer = state.sealer.as_mut()?;
                let result = if !state.chunk.is_empty() {
                    let piece = state.chunk.split_to(state.chunk.len().min(SEGMENT_LEN as usize));
                    sealer.push(&piece, &mut state.out).map_err(std::io::Error::other)
                } else {
                    match state.body.next().await {
                        Some(Ok(chunk)) => {
                            state.chunk = chunk;
                            Ok(())
                        }
                        Some(Err(err)) => Err(err),
                        None => state.sealer.take()?.finish(&mut state.out).map_err(std::io::Error::other),
                    }
                };
                if let Err(err) = result {
                    state.sealer = None;
                    return Some((Err(err), state));
                }
                if !state.out.is_empty() {
                    let out = Bytes::from(std::mem::take(&mut state.out));
                    return Some((Ok(out), state));
                }
            }
        })
        .fuse()
        .boxed()
    }
}

/// Opens `range` of a stored encrypted object (all of it when `None`); see the module docs. Sizes
/// and the served range are the plaintext's.
pub async fn open(
    blobs: &dyn BlobStore,
    keys: &TenantKeys,
    object: SealedObject<'_>,
    range: Option<ByteRange>,
) -> Result<BlobObject, MediaError> {
    let (first, last) = match range {
        Some(range) => range.resolve(object.size).map_err(|_| StorageError::InvalidRange { size: object.size })?,
        None => (0, object.size.saturating_sub(1)),
    };
    let end = if object.size == 0 { 0 } else { last + 1 };
    let span = object::span(first..end, object.size).map_err(integrity)?;
    let (header, body) = fetch(blobs, object, &span).await?;
    let header = ObjectHeader::parse(&header).map_err(integrity)?;
    if header.dek_version != object.dek_version {
        return Err(integrity(CryptoError::KeyMismatch));
    }
    let dek = keys.version(object.tenant, KeyPurpose::Dek, object.dek_version).await?;
    let cipher = ObjectCipher::existing(&dek, &context(object.tenant, object.key), &header).map_err(integrity)?;
    let length = end - first;
    let mut plain = opened(body, Opener::new(cipher, &span), span.skip, length);
    // The first piece is opened now: a failure there is still an error status.
    let head = match plain.next().await {
        Some(Ok(piece)) => Some(piece),
        Some(Err(err)) if is_tampered(&err) => return Err(integrity(CryptoError::Integrity)),
        Some(Err(err)) => return Err(StorageError::backend(blobs.backend(), "get", err).into()),
        None => None,
    };
    let body = stream::iter(head.map(Ok)).chain(plain).boxed();
    Ok(BlobObject { body, content_length: length, total_size: object.size, range: range.map(|_| (first, last)) })
}

fn integrity(err: CryptoError) -> MediaError {
    tracing::error!(error = %err, "a stored object failed its integrity check");
    metrics::counter!(names::OBJECT_INTEGRITY_FAILURES).increment(1);
    MediaError::ObjectIntegrity
}

/// Fetches the header and the stored bytes of `span`: one GET when they are contiguous (the span
/// starts at the first segment), else two side by side. The object's stored size must be the one
/// its plaintext size gives (a cut or padded object is refused before a byte is served).
async fn fetch(
    blobs: &dyn BlobStore,
    object: SealedObject<'_>,
    span: &Span,
) -> Result<(Bytes, ByteStream), MediaError> {
    let whole = object::sealed_len(object.size);
    let ranged = |start: u64, end: u64| blobs.get(object.key, Some(ByteRange { start, end: Some(end - 1) }));
    let check = |total: u64, length: u64, wanted: u64| match total == whole && length == wanted {
        true => Ok(()),
        false => Err(integrity(CryptoError::Integrity)),
    };
    if span.sealed.start == HEADER_LEN {
        let stored = ranged(0, span.sealed.end).await.map_err(not_served)?;
        check(stored.total_size, stored.content_length, span.sealed.end)?;
        let mut body = stored.body;
        let header = read_exactly(&mut body, HEADER_LEN as usize).await?;
        return Ok((header, body));
    }
    let (header, stored) =
        futures::try_join!(ranged(0, HEADER_LEN), ranged(span.sealed.start, span.sealed.end)).map_err(not_served)?;
    check(header.total_size, header.content_length, HEADER_LEN)?;
    check(stored.total_size, stored.content_length, span.sealed.end - span.sealed.start)?;
    let mut header_body = header.body;
    Ok((read_exactly(&mut header_body, HEADER_LEN as usize).await?, stored.body))
}

/// A range the store refuses lies outside what the row says the object holds: the object is not
/// what it should be.
fn not_served(err: StorageError) -> MediaError {
    match err {
        StorageError::InvalidRange { .. } => integrity(CryptoError::Integrity),
        other => other.into(),
    }
}

/// The first `length` bytes of `body`; what follows them in the chunk that held the last of them is
/// put back in front of the rest of `body`.
async fn read_exactly(body: &mut ByteStream, length: usize) -> Result<Bytes, MediaError> {
    let mut out = BytesMut::with_capacity(length);
    while out.len() < length {
        match body.next().await {
            Some(Ok(chunk)) => out.extend_from_slice(&chunk),
            Some(Err(err)) => return Err(StorageError::backend("blob", "get", err).into()),
            None => return Err(integrity(CryptoError::Integrity)),
        }
    }
    let rest = out.split_off(length);
    if !rest.is_empty() {
        // Put back what followed the header: the body goes on with it.
        let taken = std::mem::replace(body, stream::empty().boxed());
        *body = stream::iter([Ok(rest.freeze())]).chain(taken).boxed();
    }
    Ok(out.freeze())
}

/// The plaintext of the segments `body` holds: `skip` bytes dropped at the start, `length` kept.
/// A segment failing its check ends the stream with an error, after the plaintext of the segments
/// before it — also those that came in the same chunk — so how the store's bytes happen to be
/// chunked never changes what the client receives.
fn opened(body: ByteStream, opener: Opener, skip: u64, length: u64) -> ByteStream {
    struct State {
        body: ByteStream,
        opener: Option<Opener>,
        skip: u64,
        left: u64,
        /// The error to answer once the plaintext before it went out.
        failure: Option<std::io::Error>,
    }
    let state = State { body, opener: Some(opener), skip, left: length, failure: None };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(err) = state.failure.take() {
                return Some((Err(err), state));
            }
            let opener = state.opener.as_mut()?;
            let mut out = Vec::new();
            let result = match state.body.next().await {
                // A segment completed is handed over in the opener's own buffer (no copy into `out`).
                // On an error, `out` still holds the segments of the chunk that authenticated.
                Some(Ok(chunk)) => opener.push(&chunk, &mut out).map_err(|_| tampered()),
                Some(Err(err)) => Err(err),
                None => state.opener.take().map_or(Ok(()), |o| o.finish(&mut out)).map_err(|_| tampered()),
            };
            if let Err(err) = result {
                state.opener = None;
                if is_tampered(&err) {
                    tracing::error!(
                        "a stored object failed its integrity check while streaming: the response is aborted"
                    );
                    metrics::counter!(names::OBJECT_INTEGRITY_FAILURES).increment(1);
                }
                state.failure = Some(err);
            }
            let mut piece = Bytes::from(out);
            let skipped = state.skip.min(piece.len() as u64);
            state.skip -= skipped;
            let _ = piece.split_to(skipped as usize);
            piece.truncate(state.left.min(piece.len() as u64) as usize);
            state.left -= piece.len() as u64;
            if !piece.is_empty() {
                return Some((Ok(piece), state));
            }
        }
    })
    .fuse()
    .boxed()
}

#[cfg(test)]
mod tests;
