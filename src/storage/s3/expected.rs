//! A body of guessed length (a multipart form's file, guessed from the form's `Content-Length`)
//! streamed into one `PutObject` announcing the guess, as a body of known length is (`sized`): one
//! request and no part buffers, where a multipart upload would cost S3 a request per part and a
//! completion (a few per cent of its throughput on Garage).
//!
//! The guess holds for the forms curl, browsers and the usual libraries send (the file is the last
//! part and the closing delimiter ends with a line break). When it does not, the object is rebuilt
//! after the `PutObject` by a multipart upload whose first part is copied from the object in place
//! (`UploadPartCopy`, which S3 and Garage serve without the bytes leaving the store):
//! - **short** (a part or an epilogue follows the file): the request is completed with as many
//!   bytes as the client sent after the file (`after`; the pipeline passes zeros in their place, so
//!   nothing the client chose beyond its file reaches the store, and a client cannot make the
//!   service write more than it sent, but for a sealed object's header and tags), and the object is
//!   rebuilt from its first bytes;
//! - **long** (a closing delimiter without its line break: at most two bytes more, with a tag when
//!   sealed): the rest of the body, at most [`TAIL_MAX`] bytes, is appended as a second part.
//!
//! The object is thus written twice under its key in those cases, both times before any row refers
//! to it. Once the call returns it holds the body's bytes exactly; on an error the caller removes
//! what is left (the pipeline deletes the key, which its journal holds for the sweeper).
//! Keys need no encoding in `x-amz-copy-source`: they are `[A-Za-z0-9._/-]` (`check_storage_key`).

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::CompletedPart;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::upload::{sending_config, MultipartGuard};
use super::{sdk_error, S3BlobStore, BACKEND};
use crate::storage::{BlobStore, ByteStream, StorageError};
use crate::telemetry::metrics::names;

/// What the body did with respect to the guess, once the request has taken its bytes.
#[derive(Default)]
enum Leftover {
    /// Not known yet (the request did not take every byte).
    #[default]
    Unknown,
    /// The body ended after this many bytes, before the guess.
    Short(u64),
    /// The body reached the guess: what its last chunk held past it, and the body, not read further.
    Reached { carry: Bytes, body: ByteStream },
}

/// Exactly `expected` bytes: those of `body`, then, if it ends first, those of `after`; what
/// happened is left in `leftover`. A failure of either source, or `after` ending too, ends it with
/// that error (the request fails as a client's failure).
fn announced(body: ByteStream, after: ByteStream, expected: u64, leftover: Arc<Mutex<Leftover>>) -> ByteStream {
    struct State {
        body: Option<ByteStream>,
        after: ByteStream,
        left: u64,
        taken: u64,
        leftover: Arc<Mutex<Leftover>>,
    }
    let state = State { body: Some(body), after, left: expected, taken: 0, leftover };
    futures::stream::unfold(state, |mut state| async move {
        if state.left == 0 {
            return None;
        }
        if let Some(body) = state.body.as_mut() {
            match body.next().await {
                Some(Ok(mut chunk)) => {
                    if chunk.len() as u64 >= state.left {
                        let carry = chunk.split_off(state.left as usize);
                        let body = state.body.take().unwrap_or_else(|| futures::stream::empty().boxed());
                        *state.leftover.lock().unwrap_or_else(PoisonError::into_inner) =
                            Leftover::Reached { carry, body };
                    }
                    state.left -= chunk.len() as u64;
                    state.taken += chunk.len() as u64;
                    return Some((Ok(chunk), state));
                }
                Some(Err(err)) => {
                    state.left = 0;
                    return Some((Err(err), state));
                }
                None => {
                    state.body = None;
                    *state.leftover.lock().unwrap_or_else(PoisonError::into_inner) = Leftover::Short(state.taken);
                }
            }
        }
        match state.after.next().await {
            Some(Ok(mut chunk)) => {
                chunk.truncate(state.left.min(chunk.len() as u64) as usize);
                state.left -= chunk.len() as u64;
                Some((Ok(chunk), state))
            }
            Some(Err(err)) => {
                state.left = 0;
                Some((Err(err), state))
            }
            None => {
                state.left = 0;
                let ended = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the request ended before its announced Content-Length",
                );
                Some((Err(ended), state))
            }
        }
    })
    .boxed()
}

/// The most a body may run past its guess: a form's file runs at most two bytes past it (a close
/// without its line break), sealed one tag more.
pub(super) const TAIL_MAX: usize = 64;

/// The rest of a body that reached its guess: `carry`, then what `body` still holds, at most
/// `max` bytes (a body running on past that fails as the source's fault).
async fn rest_of(carry: Bytes, mut body: ByteStream, max: usize) -> Result<Bytes, StorageError> {
    let mut rest = BytesMut::from(carry);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(StorageError::Source)?;
        if rest.len() + chunk.len() > max {
            let why = format!("the body runs more than {max} bytes past its expected length");
            return Err(StorageError::Source(std::io::Error::new(std::io::ErrorKind::InvalidData, why)));
        }
        rest.extend_from_slice(&chunk);
    }
    Ok(rest.freeze())
}

impl S3BlobStore {
    /// See [`crate::storage::BlobStore::put_expecting`] and the module docs.
    pub(super) async fn put_guessed(
        &self,
        key: &str,
        content_type: &str,
        expected: u64,
        body: ByteStream,
        after: ByteStream,
    ) -> Result<u64, StorageError> {
        let leftover = Arc::new(Mutex::new(Leftover::Unknown));
        let sent = announced(body, after, expected, leftover.clone());
        self.put_sized(key, content_type, expected, sent).await?;
        let leftover = std::mem::take(&mut *leftover.lock().unwrap_or_else(PoisonError::into_inner));
        match leftover {
            Leftover::Short(kept) => self.rebuild(key, content_type, kept, Bytes::new(), "short").await,
            Leftover::Reached { carry, body } => {
                let tail = rest_of(carry, body, TAIL_MAX).await?;
                match tail.is_empty() {
                    true => Ok(expected),
                    false => self.rebuild(key, content_type, expected, tail, "long").await,
                }
            }
            // A request that succeeded took its every byte, so the body reached the guess or ended.
            Leftover::Unknown => Err(StorageError::backend(BACKEND, "put", "the request ended before its body")),
        }
    }

    /// Replaces the object at `key` with its first `kept` bytes followed by `tail`: a multipart
    /// upload of the same key whose part 1 is copied from the object in place.
    async fn rebuild(
        &self,
        key: &str,
        content_type: &str,
        kept: u64,
        tail: Bytes,
        reason: &'static str,
    ) -> Result<u64, StorageError> {
        metrics::counter!(names::S3_PUT_REBUILDS, "reason" => reason).increment(1);
        let total = kept + tail.len() as u64;
        let upload = self.create_upload(key, content_type).await?;
        let result = self.rebuilt_parts(&upload, kept, tail).await;
        upload.settle(result).await.map(|()| total)
    }

    async fn rebuilt_parts(&self, upload: &MultipartGuard, kept: u64, tail: Bytes) -> Result<(), StorageError> {
        let (key, upload_id) = upload.target();
        let copied = self
            .client
            .upload_part_copy()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(1)
            .copy_source(format!("{}/{key}", self.bucket))
            .copy_source_range(format!("bytes=0-{}", kept.saturating_sub(1)))
            .customize()
            // Some stores answer a copy once it is done: it gets the time sending its bytes would.
            .config_override(sending_config(self.read_timeout, kept))
            .send()
            .await
            .map_err(sdk_error("upload part copy"))?;
        let etag = copied.copy_part_result().and_then(|result| result.e_tag()).map(str::to_owned);
        let etag = etag.ok_or_else(|| StorageError::backend(BACKEND, "upload part copy", "no ETag returned"))?;
        let mut parts = vec![CompletedPart::builder().e_tag(etag).part_number(1).build()];
        if !tail.is_empty() {
            let length = tail.len() as u64;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(2)
                .content_length(length as i64)
                .body(S3Body::from(tail))
                .customize()
                .config_override(sending_config(self.read_timeout, length));
            let request = if self.sign_payload { request } else { request.disable_payload_signing() };
            let output = request.send().await.map_err(sdk_error("upload part"))?;
            parts.push(CompletedPart::builder().set_e_tag(output.e_tag().map(str::to_owned)).part_number(2).build());
        }
        self.complete_upload(upload, parts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(pieces: &[&'static [u8]]) -> ByteStream {
        futures::stream::iter(pieces.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>()).boxed()
    }

    async fn sent(body: ByteStream, after: ByteStream, expected: u64) -> (Vec<u8>, Option<String>, Leftover) {
        let leftover = Arc::new(Mutex::new(Leftover::Unknown));
        let mut stream = announced(body, after, expected, leftover.clone());
        let (mut out, mut failed) = (Vec::new(), None);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(err) => failed = Some(err.to_string()),
            }
        }
        let leftover = std::mem::take(&mut *leftover.lock().unwrap());
        (out, failed, leftover)
    }

    #[tokio::test]
    async fn a_body_of_the_guessed_length_is_sent_as_it_is_and_left_unread_past_it() {
        let (out, failed, leftover) = sent(chunks(&[b"abc", b"def"]), chunks(&[b"XYZ"]), 6).await;
        assert_eq!((out.as_slice(), failed), (&b"abcdef"[..], None));
        let Leftover::Reached { carry, body } = leftover else { panic!("the body reached the guess") };
        assert!(carry.is_empty());
        assert_eq!(rest_of(carry, body, 10).await.unwrap(), Bytes::new(), "and ended there");
    }

    #[tokio::test]
    async fn a_longer_body_stops_at_the_guess_and_keeps_the_rest_for_a_second_part() {
        let (out, failed, leftover) = sent(chunks(&[b"abcd", b"efgh", b"ij"]), chunks(&[]), 6).await;
        assert_eq!((out.as_slice(), failed), (&b"abcdef"[..], None));
        let Leftover::Reached { carry, body } = leftover else { panic!("the body reached the guess") };
        assert_eq!(rest_of(carry.clone(), chunks(&[b"ij"]), 4).await.unwrap(), "ghij");
        assert!(rest_of(carry, body, 3).await.is_err(), "past the bound the body fails");
    }

    #[tokio::test]
    async fn a_shorter_body_is_made_up_with_what_the_client_sent_after_it() {
        let (out, failed, leftover) = sent(chunks(&[b"abc"]), chunks(&[b"\r\n--", b"b--\r\n"]), 7).await;
        assert_eq!((out.as_slice(), failed), (&b"abc\r\n--b"[..7], None));
        assert!(matches!(leftover, Leftover::Short(3)));
    }

    #[tokio::test]
    async fn a_request_that_ends_before_its_length_fails_rather_than_being_padded() {
        let (out, failed, leftover) = sent(chunks(&[b"abc"]), chunks(&[b"--"]), 8).await;
        assert_eq!(out, b"abc--");
        assert!(failed.is_some_and(|why| why.contains("ended before")));
        assert!(matches!(leftover, Leftover::Short(3)));
    }

    #[tokio::test]
    async fn a_failing_body_fails_the_request() {
        let failing: ByteStream = futures::stream::iter([
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("client gone")),
            Ok(Bytes::from_static(b"cd")),
        ])
        .boxed();
        let (out, failed, _) = sent(failing, chunks(&[b"XXXX"]), 4).await;
        assert_eq!((out.as_slice(), failed.as_deref()), (&b"ab"[..], Some("client gone")));
    }
}
