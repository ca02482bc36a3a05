//! Writing objects: a body of announced length streamed into one `PutObject` ([`SizedBody`]), a
//! body of at most one part as one `PutObject`, anything larger as a multipart upload
//! with at most `upload_concurrency` parts in memory, aborted by [`MultipartGuard`] on any error or
//! cancellation so no part is left billed and invisible in the bucket.
//!
//! A part is one pooled buffer the body's chunks are copied into ([`super::part`]). Its request
//! body can be sent again — the SDK retries a part after a transient error (a 5xx, `SlowDown`, a
//! reset connection) — so the buffer is kept until its request has answered, then reused.
//!
//! The memory bound counts bytes: the next part is filled once the parts whose requests have not
//! answered hold at most `upload_concurrency - 1` parts' worth of bytes ([`Held`]), so an upload
//! holds at most `upload_concurrency` parts, the one being filled included. (A request S3 answered
//! early, before its body was sent, can keep its buffer a moment after it counts as released:
//! hyper drops the body when it stops writing it.)

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use tokio::task::JoinSet;

use aws_sdk_s3::error::DisplayErrorContext;

use super::part::Part;
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

/// Reads from `body` until `part` is full or the body ends; returns whether it ended. A chunk
/// crossing the part's end is split; its rest stays in `carry`, and a chunk copied whole is
/// released at once. A full part looks one chunk ahead, so a body ending exactly at a part's end
/// says so (a body of exactly one part goes up as one `PutObject`, not a multipart upload).
pub(super) async fn fill_part(body: &mut ByteStream, part: &mut Part, carry: &mut Bytes) -> Result<bool, StorageError> {
    loop {
        let taken = part.fill_from(carry);
        if taken == carry.len() {
            *carry = Bytes::new();
        } else {
            carry.advance(taken);
        }
        if part.room() == 0 && !carry.is_empty() {
            return Ok(false);
        }
        match body.next().await {
            Some(chunk) => *carry = chunk.map_err(StorageError::Source)?,
            None => return Ok(true),
        }
    }
}

impl S3BlobStore {
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
            let mut part = self.buffers.part();
            let ended = fill_part(body, &mut part, carry).await?;
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
        .body(S3Body::from(part.into_bytes()))
        .customize();
    let request = if target.sign_payload { request } else { request.disable_payload_signing() };
    let output = request.send().await;
    // The request, and with it the part's buffer, is gone once it has answered.
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
    use super::super::part::PartBuffers;
    use super::*;

    #[tokio::test]
    async fn parts_are_filled_across_chunks_in_order_and_their_body_can_be_sent_again() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let whole = Bytes::from(data.clone());
        // Chunks of 1 byte, of more than a part, and in between.
        let cuts = [0, 1, 2, 3000, 3007, 9000, 9999, 10_000];
        let chunks: Vec<std::io::Result<Bytes>> = cuts.windows(2).map(|w| Ok(whole.slice(w[0]..w[1]))).collect();
        let mut body: ByteStream = futures::stream::iter(chunks).boxed();
        let pool = PartBuffers::new(1024, 2);
        let (mut carry, mut sent, mut parts) = (Bytes::new(), Vec::new(), 0);
        loop {
            let mut part = pool.part();
            let ended = fill_part(&mut body, &mut part, &mut carry).await.expect("the body reads");
            assert!(ended || part.len() == 1024, "only the last part is short");
            parts += 1;
            // What the SDK does before a retry: a fresh copy of the body, read from the start.
            let first = S3Body::from(part.into_bytes()).into_inner();
            let again = first.try_clone().expect("the SDK can send a part again");
            let again = S3Body::new(again).collect().await.expect("read whole").into_bytes();
            let first = S3Body::new(first).collect().await.expect("read whole").into_bytes();
            assert_eq!(first, again, "a retry sends the same bytes");
            sent.extend_from_slice(&first);
            if ended {
                break;
            }
        }
        assert_eq!(parts, 10, "ten parts of at most 1024 bytes");
        assert_eq!(sent, data, "every byte once, in order");
        assert!(carry.is_empty());
        assert_eq!(pool.part().len(), 0);
    }

    #[tokio::test]
    async fn a_body_ending_exactly_at_a_parts_end_says_so_with_that_part() {
        let pool = PartBuffers::new(1024, 2);
        for cuts in [vec![0, 1024], vec![0, 1000, 1024], vec![0, 1024, 1024, 2048]] {
            let whole = Bytes::from(vec![5u8; *cuts.last().expect("cuts")]);
            let chunks: Vec<std::io::Result<Bytes>> = cuts.windows(2).map(|w| Ok(whole.slice(w[0]..w[1]))).collect();
            let mut body: ByteStream = futures::stream::iter(chunks).boxed();
            let mut carry = Bytes::new();
            let mut fills = Vec::new();
            loop {
                let mut part = pool.part();
                let ended = fill_part(&mut body, &mut part, &mut carry).await.expect("the body reads");
                fills.push((part.len(), ended));
                if ended {
                    break;
                }
            }
            let parts = whole.len() / 1024;
            let expected: Vec<(usize, bool)> = (1..=parts).map(|n| (1024, n == parts)).collect();
            assert_eq!(fills, expected, "chunks {cuts:?}: full parts, the last one saying the body ended");
        }
    }
}
