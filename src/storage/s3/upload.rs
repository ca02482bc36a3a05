//! Writing objects: a body of announced length streamed into one `PutObject` ([`SizedBody`]), a
//! body of at most one part as one `PutObject`, anything larger as a multipart upload
//! with at most `upload_concurrency` parts in memory, aborted by [`MultipartGuard`] on any error or
//! cancellation so no part is left billed and invisible in the bucket.
//!
//! A part is one pooled buffer the body's chunks are copied into ([`super::part`]). The first part
//! is sent whole once full (the upload is only created once the body is known to be longer). A
//! later part is sent whole once full too, unless S3 runs out of work first: as soon as no other
//! part's request is in flight, the part goes *live* ([`super::fill`]): its request starts at once,
//! announcing a full part, and takes each segment as it is cut, so S3 is not left waiting while a
//! part fills (with two buffers, two whole parts sent side by side finished together and S3 then
//! idled while the next one filled). A live request that fails, that is cut short because the body
//! ended inside its part (the last part, shorter than announced), or that S3 leaves unanswered, is
//! followed by the whole part from the same buffer, which the SDK sends again after a transient
//! error (a 5xx, `SlowDown`, a reset connection). The buffer is kept until the part's request has
//! answered, then reused. A signed payload (`MEDIA_S3_SIGN_PAYLOAD`, which SigV4 hashes before
//! sending) sends every part whole.
//!
//! Each part owns two part numbers: `2k - 1` for its first request, `2k` for the whole part sent
//! after a live request ([`PartNumbers`]). A store need not order two requests of one part number
//! as they were sent: Garage registers a part when its first block arrives, so a cut live request
//! still on its way (through a proxy, say) could register after the whole part that followed it,
//! and the upload's completion then found an unfinished part (`InvalidPart`). Under its own number
//! the cut request can never shadow the part. S3 takes any ascending list of part numbers, gaps
//! included; an upload has at most [`crate::config::S3_MAX_UPLOAD_PARTS`] parts. (The SDK's own
//! retry of a whole part after a reset connection reuses its number; a first attempt the store
//! registers after that retry could still shadow it: rarer, as that needs a connection reset, and
//! left as it is.)
//!
//! A part whose request fails for good (after the SDK's attempts) fails the upload at once, even
//! while the next part is still filling from a slow client ([`Held::fail`]); the upload is aborted.
//!
//! The memory bound counts bytes: the next part is filled once the parts whose requests have not
//! answered hold at most `upload_concurrency - 1` parts' worth of bytes ([`Held`]; a live part
//! counts as full), so an upload holds at most `upload_concurrency` parts, the one being filled
//! included. (A request S3 answered early, before its body was sent, can keep its buffer a moment
//! after it counts as released: hyper drops the body when it stops writing it; so can a live
//! request dropped for a whole resend, whose connection task notices a moment later. The pool then
//! hands out a new buffer rather than the one still read: briefly one buffer more.)

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinSet;

use aws_sdk_s3::error::DisplayErrorContext;

use super::fill::{fill_part, Held, Live, PART_FAILED};
use super::part::Part;
use super::sized::SizedBody;
use super::{sdk_error, S3BlobStore, BACKEND};
use crate::storage::{ByteStream, StorageError};

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
    /// Keeps the upload when `result` is a success (the work completed it), else aborts it.
    pub(super) async fn settle<T>(mut self, result: Result<T, StorageError>) -> Result<T, StorageError> {
        self.done = true;
        if result.is_err() {
            abort_upload(&self.client, &self.bucket, &self.key, &self.upload_id).await;
        }
        result
    }

    /// The upload's key and id.
    pub(super) fn target(&self) -> (&str, &str) {
        (&self.key, &self.upload_id)
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

/// The slowest S3 is expected to take a request's body: a request sending `n` MiB gets `n` seconds
/// more than `MEDIA_S3_READ_TIMEOUT` (the SDK's read timeout runs from the request's first byte to
/// the answer's head, so it covers sending the body too).
const SEND_SECONDS_PER_MIB: u64 = 1;

/// How long a request sending `bytes` of body may take before it is given up: `read_timeout` for
/// S3 to answer, plus the time to send the bytes at the slowest expected rate.
pub(super) fn time_to_answer(read_timeout: Duration, bytes: u64) -> Duration {
    read_timeout + Duration::from_secs(bytes.div_ceil(crate::config::MIB) * SEND_SECONDS_PER_MIB)
}

fn timeouts(read_timeout: Duration) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(read_timeout)
        .build()
}

/// The settings of a request sending `bytes` of body held in memory (a part, a small object).
pub(super) fn sending_config(read_timeout: Duration, bytes: u64) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(timeouts(time_to_answer(read_timeout, bytes)))
}

/// The settings of a request whose body comes from the client as it sends it. The client's read
/// timeout covers the whole request, body included, and a slow client is bounded by its upload
/// timeout upstream (at most `MAX_UPLOAD_TIMEOUT`), so such a request gets the longest one on top
/// of S3's own `read_timeout` (`MEDIA_S3_READ_TIMEOUT`). The SDK's stalled-stream protection for
/// uploads is off: it failed the request when the body gave nothing for 5 s, but a client may pause
/// up to MEDIA_UPLOAD_IDLE_TIMEOUT (30 s by default), which admission enforces.
pub(super) fn streaming_config(read_timeout: Duration) -> aws_sdk_s3::config::Builder {
    use aws_sdk_s3::config::StalledStreamProtectionConfig;
    aws_sdk_s3::config::Builder::default()
        .timeout_config(timeouts(crate::config::MAX_UPLOAD_TIMEOUT + read_timeout))
        .stalled_stream_protection(StalledStreamProtectionConfig::enabled().upload_enabled(false).build())
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

    /// A `PutObject` of one part's bytes (a body that ended inside its first part).
    pub(super) async fn put_single(&self, key: &str, content_type: &str, mut part: Part) -> Result<u64, StorageError> {
        let length = part.len() as u64;
        let request = self.put_object(key, content_type, length, part.body()).customize();
        let request = request.config_override(sending_config(self.read_timeout, length));
        let request = if self.sign_payload { request } else { request.disable_payload_signing() };
        request.send().await.map_err(sdk_error("put"))?;
        drop(part);
        Ok(length)
    }

    /// Creates a multipart upload of `key`, aborted when its guard is dropped unfinished.
    pub(super) async fn create_upload(&self, key: &str, content_type: &str) -> Result<MultipartGuard, StorageError> {
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
        Ok(MultipartGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            upload_id: upload_id.to_owned(),
            done: false,
        })
    }

    pub(super) async fn put_multipart(
        &self,
        key: &str,
        content_type: &str,
        first_part: Part,
        mut body: ByteStream,
        mut carry: Bytes,
    ) -> Result<u64, StorageError> {
        let upload = self.create_upload(key, content_type).await?;
        let result = self.upload_parts(&upload, first_part, &mut body, &mut carry).await;
        upload.settle(result).await
    }

    /// Completes `upload` with `parts`.
    pub(super) async fn complete_upload(
        &self,
        upload: &MultipartGuard,
        mut parts: Vec<CompletedPart>,
    ) -> Result<(), StorageError> {
        parts.sort_by_key(|part| part.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&upload.bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(sdk_error("complete multipart upload"))?;
        Ok(())
    }

    /// The parts after the first: each sent whole once full, or live while it fills once S3 has
    /// nothing else to do (see the module docs).
    pub(super) async fn upload_parts(
        &self,
        upload: &MultipartGuard,
        first_part: Part,
        body: &mut ByteStream,
        carry: &mut Bytes,
    ) -> Result<u64, StorageError> {
        let mut parts = Parts { in_flight: JoinSet::new(), completed: Vec::new(), held: Arc::default(), number: 0 };
        let budget = (self.upload_concurrency - 1) * self.part_size;
        let mut total = first_part.len() as u64;
        let first_len = first_part.len();
        parts.spawn(self, upload, Sending::Whole(first_part), first_len);
        loop {
            // Fill the next part only once the parts not answered yet hold at most `budget` bytes
            // (see the module docs).
            parts.wait_until_held_at_most(budget).await?;
            let mut part = self.buffers.part();
            let held = parts.held.clone();
            let mut filled = None;
            let mut start = || {
                let (segments, live) = futures::channel::mpsc::unbounded();
                let (part_filled, when_filled) = tokio::sync::oneshot::channel();
                let live = Sending::Live { segments: live.boxed(), filled: when_filled, size: self.part_size };
                parts.spawn(self, upload, live, self.part_size);
                filled = Some(part_filled);
                segments
            };
            // A signed payload is hashed before it is sent: such parts go whole.
            let mut live = match self.sign_payload {
                true => Live::Never,
                false => Live::WhenIdle { held: &held, start: &mut start },
            };
            let ended = match fill_part(body, &mut part, carry, &mut live, Some(&held)).await {
                // Another part failed for good: its error is the upload's.
                Err(StorageError::Backend { message, .. }) if message == PART_FAILED => {
                    drop(live);
                    let stopped = || StorageError::backend(BACKEND, "upload part", PART_FAILED);
                    return Err(parts.failure().await.unwrap_or_else(stopped));
                }
                filled => filled?,
            };
            // Ends a live body: whole if the part is full, cut short (and so sent whole) if not.
            drop(live.started());
            total += part.len() as u64;
            match filled {
                Some(filled) => drop(filled.send(part)),
                None => {
                    let length = part.len();
                    parts.spawn(self, upload, Sending::Whole(part), length);
                }
            }
            if ended {
                break;
            }
        }
        let completed = parts.finish().await?;
        self.complete_upload(upload, completed).await?;
        Ok(total)
    }
}

/// The part requests of one multipart upload.
struct Parts {
    in_flight: JoinSet<Result<CompletedPart, StorageError>>,
    completed: Vec<CompletedPart>,
    held: Arc<Held>,
    /// Parts started so far.
    number: i32,
}

/// The S3 part numbers of part `k` (from 1): its first request's, and the whole part's sent after
/// a live request (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
struct PartNumbers {
    first: i32,
    resend: i32,
}

impl PartNumbers {
    fn of(k: i32) -> Self {
        Self { first: 2 * k - 1, resend: 2 * k }
    }
}

impl Parts {
    /// Starts the next part's request; `counted` bytes of buffers are held until it answers.
    fn spawn(&mut self, store: &S3BlobStore, upload: &MultipartGuard, sending: Sending, counted: usize) {
        self.number += 1;
        let numbers = PartNumbers::of(self.number);
        if numbers.resend > MAX_PART_NUMBER {
            // Config validation keeps MEDIA_MAX_BYTES within the parts an upload may have.
            let err = StorageError::backend(BACKEND, "upload part", "the upload has more parts than S3 takes");
            self.in_flight.spawn(async move { Err(err) });
            self.held.fail();
            return;
        }
        self.held.add(counted);
        let target = UploadTarget {
            client: store.client.clone(),
            bucket: upload.bucket.clone(),
            key: upload.key.clone(),
            upload_id: upload.upload_id.clone(),
            sign_payload: store.sign_payload,
            read_timeout: store.read_timeout,
            numbers,
        };
        let held = self.held.clone();
        self.in_flight.spawn(async move {
            let result = match sending {
                Sending::Whole(part) => send_whole(&target, part, target.numbers.first).await,
                Sending::Live { segments, filled, size } => send_live(&target, segments, filled, size).await,
            };
            // A part that failed fails the upload: the fill stops at once (`fill_part`).
            if result.is_err() {
                held.fail();
            }
            // The request, and with it the part's buffer, is gone once it has answered.
            held.release(counted);
            result
        });
    }

    /// Collects answered parts until the parts not answered yet hold at most `budget` bytes.
    async fn wait_until_held_at_most(&mut self, budget: usize) -> Result<(), StorageError> {
        loop {
            while let Some(joined) = self.in_flight.try_join_next() {
                self.completed.push(join_part(Some(joined))?);
            }
            if self.held.get() <= budget {
                return Ok(());
            }
            tokio::select! {
                joined = self.in_flight.join_next() => self.completed.push(join_part(joined)?),
                () = self.held.released() => {}
            }
        }
    }

    /// The error of the first part that failed, waiting for it if none has yet.
    async fn failure(mut self) -> Option<StorageError> {
        while let Some(joined) = self.in_flight.join_next().await {
            if let Err(err) = join_part(Some(joined)) {
                return Some(err);
            }
        }
        None
    }

    /// Every part, once all have answered.
    async fn finish(mut self) -> Result<Vec<CompletedPart>, StorageError> {
        while !self.in_flight.is_empty() {
            self.completed.push(join_part(self.in_flight.join_next().await)?);
        }
        Ok(self.completed)
    }
}

/// How a part's request gets its body.
enum Sending {
    /// The part, full or the last one, sent whole.
    Whole(Part),
    /// The part sent while it fills: its segments as they are cut, for a request announcing a full
    /// part of `size` bytes; then the part itself, once full or once the body ended inside it.
    Live { segments: ByteStream, filled: tokio::sync::oneshot::Receiver<Part>, size: usize },
}

/// Where a part goes: the client, the multipart upload and the part's number, owned so part tasks
/// can be spawned.
struct UploadTarget {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    sign_payload: bool,
    /// `MEDIA_S3_READ_TIMEOUT`: with [`time_to_answer`], how long a whole part's request may take,
    /// and how long S3 may take to answer a live part once the part has all its bytes, before the
    /// part is sent whole instead.
    read_timeout: Duration,
    numbers: PartNumbers,
}

/// The largest part number an upload uses: two per part (S3 takes up to 10 000).
const MAX_PART_NUMBER: i32 = 2 * crate::config::S3_MAX_UPLOAD_PARTS as i32;

impl UploadTarget {
    fn request(
        &self,
        number: i32,
        length: usize,
    ) -> aws_sdk_s3::operation::upload_part::builders::UploadPartFluentBuilder {
        self.client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(length as i64)
    }
}

/// What the completion lists for part `number`.
fn completed(number: i32, output: &aws_sdk_s3::operation::upload_part::UploadPartOutput) -> CompletedPart {
    CompletedPart::builder().set_e_tag(output.e_tag().map(str::to_owned)).part_number(number).build()
}

/// Sends the whole part as part `number`; the SDK sends it again after a transient error.
async fn send_whole(target: &UploadTarget, mut part: Part, number: i32) -> Result<CompletedPart, StorageError> {
    let request = target.request(number, part.len()).body(part.body()).customize();
    let request = request.config_override(sending_config(target.read_timeout, part.len() as u64));
    let request = if target.sign_payload { request } else { request.disable_payload_signing() };
    let output = request.send().await.map_err(sdk_error("upload part"))?;
    drop(part);
    Ok(completed(number, &output))
}

/// Sends a part as it fills. A request that fails (the SDK cannot send a streamed body again), that
/// is cut short because the body ended inside the part (the last part, shorter than the request
/// announced), or that S3 leaves unanswered for [`time_to_answer`] after the part is filled
/// (the request is dropped, which closes its connection) is followed by the whole part, from the
/// same buffer, under the part's second number (see the module docs). A body that failed ends the
/// part's request and the upload with it.
async fn send_live(
    target: &UploadTarget,
    segments: ByteStream,
    mut filled: tokio::sync::oneshot::Receiver<Part>,
    size: usize,
) -> Result<CompletedPart, StorageError> {
    let body = S3Body::from_body_1_x(SizedBody::new(segments, size as u64));
    let request = target.request(target.numbers.first, size).body(body).customize();
    let request = request.config_override(streaming_config(target.read_timeout));
    let mut send = Box::pin(request.disable_payload_signing().send());
    let (mut part, mut filler_gone) = (None, false);
    let mut answer_by = tokio::time::Instant::now();
    let answer = loop {
        tokio::select! {
            biased;
            answer = &mut send => break Some(answer),
            handed = &mut filled, if part.is_none() && !filler_gone => match handed {
                Ok(filled) => {
                    part = Some(filled);
                    // Bytes of the part may still be on their way to S3.
                    answer_by = tokio::time::Instant::now() + time_to_answer(target.read_timeout, size as u64);
                }
                Err(_) => filler_gone = true,
            },
            () = tokio::time::sleep_until(answer_by), if part.is_some() => break None,
        }
    };
    drop(send);
    let (error, reason) = match answer {
        Some(Ok(output)) => return Ok(completed(target.numbers.first, &output)),
        Some(Err(err)) => (sdk_error("upload part")(err), "failed"),
        None => (StorageError::backend(BACKEND, "upload part", "no answer"), "unanswered"),
    };
    let part = match part {
        Some(part) => part,
        None if !filler_gone => match filled.await {
            Ok(part) => part,
            Err(_) => return Err(error),
        },
        None => return Err(error),
    };
    let reason = if part.len() < size { "short" } else { reason };
    if reason != "short" {
        tracing::debug!(part = target.numbers.resend / 2, %error, reason, "sending the part again whole");
    }
    metrics::counter!(crate::telemetry::metrics::names::S3_PART_RESENDS, "reason" => reason).increment(1);
    send_whole(target, part, target.numbers.resend).await
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
