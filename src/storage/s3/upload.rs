//! Writing objects: a body of announced length streamed into one `PutObject` ([`SizedBody`]), a
//! body that ends inside the first part as one `PutObject`, anything larger as a multipart upload
//! with at most `upload_concurrency` parts in memory, aborted by [`MultipartGuard`] on any error or
//! cancellation so no part is left billed and invisible in the bucket.
//!
//! A [`Part`] holds the body's chunks as they came (the server's read buffers, the multipart
//! reader's slices) when they are at least 16 KiB long, and copies shorter ones together, so a
//! client sending tiny chunks cannot make a part hold a handle (and a pinned read buffer) per
//! byte. With unsigned payloads a part
//! streams them to S3 one by one; with `MEDIA_S3_SIGN_PAYLOAD` (SigV4 must hash the part before
//! sending it) they are joined into one buffer first. Either way the request body can be sent
//! again — the SDK retries a part after a transient error (a 5xx, `SlowDown`, a reset connection)
//! — so a part's chunks are kept until its request has answered.
//!
//! The memory bound counts bytes: the next part is filled once the parts whose requests have not
//! answered hold at most `upload_concurrency - 1` parts' worth of bytes ([`Held`]), so an upload
//! holds at most `upload_concurrency` parts, the one being filled included.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::body::SdkBody;
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

/// Bytes of an upload's parts whose requests have not answered yet, and a wake-up when one did.
#[derive(Default)]
struct Held {
    bytes: AtomicUsize,
    released: tokio::sync::Notify,
}

impl Held {
    fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.released.notify_one();
    }

    fn get(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }
}

/// Chunks at least this long are kept as they came; shorter ones are copied together.
const KEEP_MIN: usize = 16 * 1024;
/// The buffer short chunks are copied into.
const SMALL_BUFFER: usize = 64 * 1024;

/// The chunks of one part (or of a whole small body), in order, `len` bytes in all.
///
/// A chunk of [`KEEP_MIN`] bytes or more is kept as it came (no copy); shorter ones are copied
/// into a shared buffer. A client sending its body in tiny chunks (one byte each, say) would
/// otherwise make a part hold a handle per byte — and pin the connection's read buffer each is a
/// slice of — many times the part's size; this way a part of `n` bytes holds at most about
/// `2 n / KEEP_MIN` handles and its memory stays close to `n`.
#[derive(Default)]
pub(super) struct Part {
    chunks: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl Part {
    /// Bytes in the part.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        if chunk.len() >= KEEP_MIN {
            self.flush_small();
            self.chunks.push(chunk);
            return;
        }
        if self.small.capacity() - self.small.len() < chunk.len() {
            self.flush_small();
            self.small.reserve(SMALL_BUFFER);
        }
        self.small.extend_from_slice(&chunk);
    }

    /// Moves what the small buffer holds into the chunk list.
    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push(self.small.split().freeze());
        }
    }

    /// The part as one buffer (a copy unless it is a single chunk).
    pub(super) fn joined(mut self) -> Bytes {
        self.flush_small();
        if self.chunks.len() == 1 {
            return self.chunks.pop().unwrap_or_default();
        }
        let mut joined = BytesMut::with_capacity(self.len);
        for chunk in self.chunks {
            joined.extend_from_slice(&chunk);
        }
        joined.freeze()
    }

    /// The part as a request body the SDK can send again: its chunks streamed, or one buffer when
    /// the payload is signed (the signer reads the body before it is sent). The chunks live as long
    /// as the body (every attempt sends them).
    fn body(mut self, sign_payload: bool) -> S3Body {
        if sign_payload {
            return S3Body::from(self.joined());
        }
        self.flush_small();
        let len = self.len as u64;
        let chunks: Arc<[Bytes]> = self.chunks.into();
        S3Body::new(SdkBody::retryable(move || {
            let chunks = chunks.clone();
            let stream = futures::stream::iter(0..chunks.len()).map(move |i| Ok(chunks[i].clone()));
            SdkBody::from_body_1_x(SizedBody::new(stream.boxed(), len))
        }))
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
        let held = Arc::new(Held::default());
        let budget = (self.upload_concurrency - 1) * self.part_size;
        let mut total = 0u64;
        let mut next_part = Some(first_part);
        let mut part_number = 0i32;
        while let Some(part) = next_part.take() {
            part_number += 1;
            total += part.len() as u64;
            held.add(part.len());
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                part,
                held.clone(),
            ));
            // Fill the next part only once the parts not answered yet hold at most `budget` bytes
            // (see the module docs).
            loop {
                while let Some(joined) = in_flight.try_join_next() {
                    completed.push(join_part(Some(joined))?);
                }
                if held.get() <= budget {
                    break;
                }
                tokio::select! {
                    joined = in_flight.join_next() => completed.push(join_part(joined)?),
                    () = held.released.notified() => {}
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
            held.add(last.len());
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                last,
                held.clone(),
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
    held: Arc<Held>,
) -> Result<CompletedPart, StorageError> {
    let length = part.len();
    let request = client
        .upload_part()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(target.upload_id)
        .part_number(number)
        .content_length(length as i64)
        .body(part.body(target.sign_payload))
        .customize();
    let request = if target.sign_payload { request } else { request.disable_payload_signing() };
    let output = request.send().await;
    // The request, and with it the part's chunks, is gone once it has answered.
    held.release(length);
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
    async fn a_part_sends_its_chunks_in_order_streamed_or_joined_and_again_for_a_retry() {
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
            let body = part().body(sign_payload).into_inner();
            // What the SDK does before a retry: a fresh copy of the body, read from the start.
            let again = body.try_clone().expect("the SDK can send a part again");
            for (attempt, body) in [body, again].into_iter().enumerate() {
                let sent = S3Body::new(body).collect().await.expect("the body is read whole").into_bytes();
                assert_eq!(sent, data, "sign_payload {sign_payload}, attempt {attempt}: the part's bytes in order");
            }
        }
        assert!(Part::default().joined().is_empty());
    }

    #[test]
    fn a_part_fed_tiny_chunks_holds_few_handles_and_every_byte_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let whole = Bytes::from(data.clone());
        let mut part = Part::default();
        // One byte at a time, with a large chunk now and then.
        let mut at = 0;
        while at < data.len() {
            let n = if at % 50_000 == 0 { KEEP_MIN } else { 1 };
            let end = (at + n).min(data.len());
            part.push(whole.slice(at..end));
            at = end;
        }
        assert_eq!(part.len(), data.len());
        part.flush_small();
        let handles = part.chunks.len();
        assert!(handles <= 2 * data.len() / KEEP_MIN + 2, "{handles} handles for {} bytes", data.len());
        let large = part.chunks.iter().filter(|c| c.len() == KEEP_MIN).count();
        assert_eq!(large, 6, "chunks of KEEP_MIN bytes are kept as they came");
        assert_eq!(part.joined(), data, "every byte once, in order");
    }
}
