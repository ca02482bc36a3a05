//! Writing objects: a body of announced length streamed into one `PutObject` ([`SizedBody`]), a
//! body that ends inside the first part as one `PutObject`, anything larger as a multipart upload
//! with at most `upload_concurrency` parts in flight, aborted by [`MultipartGuard`] on any error or
//! cancellation so no part is left billed and invisible in the bucket.
//!
//! A [`Part`] holds the body's chunks as they came (the server's read buffers, the multipart
//! parser's slices): they are never copied into a part buffer, and with unsigned payloads a part
//! streams them to S3 one by one (a [`SizedBody`] of the part's length), releasing each once it is
//! sent — so a part in flight shrinks while it uploads instead of holding a whole part buffer to
//! its end, and no part-sized block is allocated per part. With `MEDIA_S3_SIGN_PAYLOAD` (SigV4 must
//! hash the part before sending it) the chunks are joined into one buffer first.
//!
//! The memory bound counts bytes, not requests: the next part is filled once the parts in flight
//! hold at most `upload_concurrency - 1` parts' worth of bytes not yet sent ([`Unsent`]), so an
//! upload holds at most `upload_concurrency` parts as before. A part whose bytes are all sent and
//! that only waits for the server's answer holds nothing, and up to [`REQUESTS_PER_PART`] ×
//! `upload_concurrency` such requests overlap — the wait for each part's answer was what kept
//! chunked and multipart uploads below the speed of one streamed PUT.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinSet;

use aws_sdk_s3::error::DisplayErrorContext;

use super::{sdk_error, S3BlobStore, BACKEND};
use crate::storage::{ByteStream, StorageError};

/// A body of announced length streamed into one request: it counts what it passes, fails when the
/// source does or when the source runs past `length`, and keeps the source's error for the caller.
/// `Sync` (which the SDK requires) through a mutex only ever reached through `&mut`.
pub(super) struct SizedBody {
    inner: Mutex<ByteStream>,
    length: u64,
    /// Bytes passed so far.
    pub(super) sent: Arc<AtomicU64>,
    /// The source's error, when it failed.
    pub(super) failure: Arc<Mutex<Option<std::io::Error>>>,
}

impl SizedBody {
    pub(super) fn new(inner: ByteStream, length: u64) -> Self {
        Self { inner: Mutex::new(inner), length, sent: Arc::default(), failure: Arc::default() }
    }

    fn fail(&self, err: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
        let message = err.to_string();
        *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(err);
        message.into()
    }
}

impl http_body::Body for SizedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let inner = this.inner.get_mut().unwrap_or_else(PoisonError::into_inner);
        match futures::ready!(inner.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                let sent = this.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if sent > this.length {
                    let err = std::io::Error::new(std::io::ErrorKind::InvalidData, "the body is longer than announced");
                    return std::task::Poll::Ready(Some(Err(this.fail(err))));
                }
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
            }
            Some(Err(err)) => std::task::Poll::Ready(Some(Err(this.fail(err)))),
            None if this.sent.load(Ordering::Relaxed) < this.length => {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the body ended before its announced length",
                );
                std::task::Poll::Ready(Some(Err(this.fail(err))))
            }
            None => std::task::Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

/// Part requests in flight per part of `upload_concurrency` (most of them only wait for an answer).
const REQUESTS_PER_PART: usize = 4;

/// Bytes of an upload's parts in flight not yet handed to the connection, and a wake-up when some
/// were.
#[derive(Default)]
struct Unsent {
    bytes: AtomicUsize,
    sent: tokio::sync::Notify,
}

impl Unsent {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn sent(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.sent.notify_one();
    }

    fn get(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// The chunks of one part (or of a whole small body), in order, `len` bytes in all.
#[derive(Default)]
pub(super) struct Part {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Part {
    /// Bytes in the part.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// The part as one buffer (a copy unless it is a single chunk).
    pub(super) fn joined(mut self) -> Bytes {
        if self.chunks.len() == 1 {
            return self.chunks.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.len);
        for chunk in self.chunks {
            joined.extend_from_slice(&chunk);
        }
        joined.freeze()
    }

    /// The part as a request body: its chunks streamed (each released once sent, counted in
    /// `sent` and taken off `unsent`), or one buffer when the payload is signed (the signer reads
    /// the body before it is sent).
    fn body(self, sign_payload: bool, unsent: Arc<Unsent>, sent: Arc<AtomicUsize>) -> S3Body {
        if sign_payload {
            return S3Body::from(self.joined());
        }
        let len = self.len as u64;
        let chunks = futures::stream::iter(self.chunks).map(move |chunk| {
            sent.fetch_add(chunk.len(), Ordering::AcqRel);
            unsent.sent(chunk.len());
            Ok(chunk)
        });
        S3Body::from_body_1_x(SizedBody::new(chunks.boxed(), len))
    }
}

/// Removes a multipart upload unless it was completed. Dropping the guard (an error path, or the
/// upload future being cancelled) spawns the abort so no orphaned upload stays in the bucket.
pub(super) struct MultipartGuard {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    done: bool,
}

impl MultipartGuard {
    async fn abort(mut self) {
        self.done = true;
        abort_upload(&self.client, &self.bucket, &self.key, &self.upload_id).await;
    }
}

impl Drop for MultipartGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (client, bucket, key, upload_id) =
            (self.client.clone(), self.bucket.clone(), self.key.clone(), self.upload_id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { abort_upload(&client, &bucket, &key, &upload_id).await });
        }
    }
}

pub(super) async fn abort_upload(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let result = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(upload_id).send().await;
    if let Err(err) = result {
        tracing::warn!(key, error = %DisplayErrorContext(&err), "could not abort multipart upload");
    }
}

impl S3BlobStore {
    /// Reads from `body` until `part` holds a full part or the body ends; returns whether it ended.
    /// A chunk crossing the part's end is split (no copy); its rest stays in `carry`.
    pub(super) async fn fill_part(
        &self,
        body: &mut ByteStream,
        part: &mut Part,
        carry: &mut Bytes,
    ) -> Result<bool, StorageError> {
        loop {
            if !carry.is_empty() {
                let take = carry.len().min(self.part_size - part.len());
                part.push(carry.split_to(take));
            }
            if part.len() == self.part_size {
                return Ok(false);
            }
            match body.next().await {
                Some(chunk) => *carry = chunk.map_err(StorageError::Source)?,
                None => return Ok(true),
            }
        }
    }

    /// A `PutObject` of `length` bytes of `body`.
    pub(super) fn put_object(
        &self,
        key: &str,
        content_type: &str,
        length: u64,
        body: S3Body,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        let request = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type);
        request.content_length(length as i64).body(body)
    }

    pub(super) async fn put_single(&self, key: &str, content_type: &str, data: Bytes) -> Result<u64, StorageError> {
        let length = data.len() as u64;
        let request = self.put_object(key, content_type, length, S3Body::from(data)).customize();
        let request = if self.sign_payload { request } else { request.disable_payload_signing() };
        request.send().await.map_err(sdk_error("put"))?;
        Ok(length)
    }

    pub(super) async fn put_multipart(
        &self,
        key: &str,
        content_type: &str,
        first_part: Part,
        mut body: ByteStream,
        mut carry: Bytes,
    ) -> Result<u64, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(sdk_error("create multipart upload"))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::backend(BACKEND, "create multipart upload", "no upload id returned"))?;
        let guard = MultipartGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
            done: false,
        };
        match self.upload_parts(&guard, first_part, &mut body, &mut carry).await {
            Ok(total) => {
                let mut guard = guard;
                guard.done = true;
                Ok(total)
            }
            Err(err) => {
                guard.abort().await;
                Err(err)
            }
        }
    }

    pub(super) async fn upload_parts(
        &self,
        upload: &MultipartGuard,
        first_part: Part,
        body: &mut ByteStream,
        carry: &mut Bytes,
    ) -> Result<u64, StorageError> {
        let mut in_flight: JoinSet<Result<CompletedPart, StorageError>> = JoinSet::new();
        let mut completed = Vec::new();
        let unsent = Arc::new(Unsent::default());
        let budget = (self.upload_concurrency - 1) * self.part_size;
        let max_requests = self.upload_concurrency * REQUESTS_PER_PART;
        let mut total = 0u64;
        let mut next_part = Some(first_part);
        let mut part_number = 0i32;
        while let Some(part) = next_part.take() {
            part_number += 1;
            total += part.len() as u64;
            unsent.add(part.len());
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                part,
                unsent.clone(),
            ));
            // Fill the next part only once the parts in flight hold at most `budget` unsent bytes
            // (see the module docs) and a request slot is free.
            loop {
                while let Some(joined) = in_flight.try_join_next() {
                    completed.push(join_part(Some(joined))?);
                }
                if in_flight.len() < max_requests && unsent.get() <= budget {
                    break;
                }
                tokio::select! {
                    joined = in_flight.join_next() => completed.push(join_part(joined)?),
                    () = unsent.sent.notified() => {}
                }
            }
            let mut part = Part::default();
            let ended = self.fill_part(body, &mut part, carry).await?;
            if part.len() > 0 {
                next_part = Some(part);
            }
            if ended {
                break;
            }
        }
        if let Some(last) = next_part {
            part_number += 1;
            total += last.len() as u64;
            unsent.add(last.len());
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                last,
                unsent.clone(),
            ));
        }
        while !in_flight.is_empty() {
            completed.push(join_part(in_flight.join_next().await)?);
        }
        completed.sort_by_key(|part| part.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed)).build())
            .send()
            .await
            .map_err(sdk_error("complete multipart upload"))?;
        Ok(total)
    }
}

/// Bucket, key and upload id of a multipart upload, owned so part tasks can be spawned.
struct UploadTarget {
    bucket: String,
    key: String,
    upload_id: String,
    sign_payload: bool,
}

fn upload_target(upload: &MultipartGuard, sign_payload: bool) -> UploadTarget {
    UploadTarget {
        bucket: upload.bucket.clone(),
        key: upload.key.clone(),
        upload_id: upload.upload_id.clone(),
        sign_payload,
    }
}

async fn upload_part(
    client: Client,
    target: UploadTarget,
    number: i32,
    part: Part,
    unsent: Arc<Unsent>,
) -> Result<CompletedPart, StorageError> {
    let length = part.len();
    let sent = Arc::new(AtomicUsize::new(0));
    let body = part.body(target.sign_payload, unsent.clone(), sent.clone());
    let request = client
        .upload_part()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(target.upload_id)
        .part_number(number)
        .content_length(length as i64)
        .body(body)
        .customize();
    let request = if target.sign_payload { request } else { request.disable_payload_signing() };
    let output = request.send().await;
    // What the body did not hand over (a signed part, a failed request) is released now.
    unsent.sent(length - sent.load(Ordering::Acquire));
    let output = output.map_err(sdk_error("upload part"))?;
    let part = CompletedPart::builder().set_e_tag(output.e_tag().map(str::to_owned)).part_number(number).build();
    Ok(part)
}

/// The part of a finished upload task.
fn join_part(
    joined: Option<Result<Result<CompletedPart, StorageError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, StorageError> {
    match joined {
        Some(Ok(Ok(part))) => Ok(part),
        Some(Ok(Err(err))) => Err(err),
        Some(Err(join_error)) => Err(StorageError::backend(BACKEND, "upload part", join_error)),
        None => Err(StorageError::backend(BACKEND, "upload part", "no part upload was running")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_part_sends_its_chunks_in_order_streamed_or_joined() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let whole = Bytes::from(data.clone());
        let part = || {
            let mut part = Part::default();
            for (start, end) in [(0, 1), (1, 65_537), (65_537, 65_544), (65_544, 100_000)] {
                part.push(whole.slice(start..end));
            }
            part
        };
        assert_eq!(part().len(), data.len());
        assert_eq!(part().joined(), data, "joined in order");
        for sign_payload in [false, true] {
            let (unsent, sent) = (Arc::new(Unsent::default()), Arc::new(AtomicUsize::new(0)));
            unsent.add(data.len());
            let sent_bytes = part()
                .body(sign_payload, unsent.clone(), sent.clone())
                .collect()
                .await
                .expect("the body is read whole")
                .into_bytes();
            assert_eq!(sent_bytes, data, "sign_payload {sign_payload}: the request carries the part's bytes in order");
            let streamed = if sign_payload { 0 } else { data.len() };
            assert_eq!(sent.load(Ordering::Acquire), streamed, "sign_payload {sign_payload}: bytes counted as sent");
            assert_eq!(unsent.get(), data.len() - streamed, "a streamed part releases its bytes as they go");
        }
        assert!(Part::default().joined().is_empty());
    }
}
