//! Writing objects: a body of announced length streamed into one `PutObject` ([`SizedBody`]), a
//! body that ends inside the first part as one `PutObject`, anything larger as a multipart upload
//! with at most `upload_concurrency` parts in flight, aborted by [`MultipartGuard`] on any error or
//! cancellation so no part is left billed and invisible in the bucket.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Reads from `body` until `buffer` holds a full part or the body ends; returns whether it ended.
    pub(super) async fn fill_part(
        &self,
        body: &mut ByteStream,
        buffer: &mut BytesMut,
        carry: &mut Bytes,
    ) -> Result<bool, StorageError> {
        loop {
            if !carry.is_empty() {
                let take = carry.len().min(self.part_size - buffer.len());
                if buffer.len() + take > buffer.capacity() {
                    // Grow once to a whole part instead of doubling through 2, 4, … MiB copies.
                    buffer.reserve(self.part_size - buffer.len());
                }
                buffer.extend_from_slice(&carry.split_to(take));
            }
            if buffer.len() == self.part_size {
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
        first_part: Bytes,
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
        first_part: Bytes,
        body: &mut ByteStream,
        carry: &mut Bytes,
    ) -> Result<u64, StorageError> {
        let mut in_flight: JoinSet<Result<PartDone, StorageError>> = JoinSet::new();
        let mut completed = Vec::new();
        // Part buffers come back from finished uploads and are refilled: an upload allocates at most
        // `upload_concurrency` of them, so large uploads do not churn the allocator with part-sized blocks.
        let mut spare: Vec<BytesMut> = Vec::with_capacity(self.upload_concurrency);
        let mut total = 0u64;
        let mut next_part = Some(first_part);
        let mut part_number = 0i32;
        while let Some(part) = next_part.take() {
            part_number += 1;
            total += part.len() as u64;
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                part,
            ));
            // Fill the next part only once a slot is free: at most `upload_concurrency` part
            // buffers exist at any time (the ones in flight and the one filling).
            while in_flight.len() >= self.upload_concurrency {
                completed.push(join_part(in_flight.join_next().await, &mut spare)?);
            }
            let mut buffer = spare.pop().unwrap_or_else(|| BytesMut::with_capacity(self.part_size));
            let ended = self.fill_part(body, &mut buffer, carry).await?;
            if !buffer.is_empty() {
                next_part = Some(buffer.freeze());
            }
            if ended {
                break;
            }
        }
        if let Some(last) = next_part {
            part_number += 1;
            total += last.len() as u64;
            in_flight.spawn(upload_part(
                self.client.clone(),
                upload_target(upload, self.sign_payload),
                part_number,
                last,
            ));
        }
        while !in_flight.is_empty() {
            completed.push(join_part(in_flight.join_next().await, &mut spare)?);
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

/// A finished part, and its buffer back when nothing else holds it (to fill the next part).
type PartDone = (CompletedPart, Option<BytesMut>);

async fn upload_part(client: Client, target: UploadTarget, number: i32, data: Bytes) -> Result<PartDone, StorageError> {
    let length = data.len() as i64;
    let request = client
        .upload_part()
        .bucket(target.bucket)
        .key(target.key)
        .upload_id(target.upload_id)
        .part_number(number)
        .content_length(length)
        .body(S3Body::from(data.clone()))
        .customize();
    let request = if target.sign_payload { request } else { request.disable_payload_signing() };
    let output = request.send().await.map_err(sdk_error("upload part"))?;
    let part = CompletedPart::builder().set_e_tag(output.e_tag().map(str::to_owned)).part_number(number).build();
    Ok((part, data.try_into_mut().ok()))
}

/// The part of a finished upload task; its buffer, when returned, goes to `spare`.
fn join_part(
    joined: Option<Result<Result<PartDone, StorageError>, tokio::task::JoinError>>,
    spare: &mut Vec<BytesMut>,
) -> Result<CompletedPart, StorageError> {
    match joined {
        Some(Ok(Ok((part, buffer)))) => {
            if let Some(mut buffer) = buffer {
                buffer.clear();
                spare.push(buffer);
            }
            Ok(part)
        }
        Some(Ok(Err(err))) => Err(err),
        Some(Err(join_error)) => Err(StorageError::backend(BACKEND, "upload part", join_error)),
        None => Err(StorageError::backend(BACKEND, "upload part", "no part upload was running")),
    }
}
