//! One streamed `PutObject`: a body sent from its source as it comes, without part buffers — of
//! announced length (`put_sized`: a `Content-Length` upload, a copy), or of unknown length below a
//! bound, sent with `Transfer-Encoding: chunked` (`put_at_most`: a chunked upload, a form without a
//! `Content-Length`).
//!
//! A chunked `PutObject` is what a direct PUT of unknown length is; it is as fast, and holds one
//! part buffer only while the first part decides whether the body is small. Not every store takes
//! it: Garage and Ceph do, AWS S3 and MinIO answer 411 Length Required. `MEDIA_S3_CHUNKED_PUT`
//! says so ([`ChunkedPut`]); with `auto` the first upload that would use it asks the store first, with
//! a one-byte chunked `PutObject` to a key beside its own (`<key>.chunked-put-probe`, deleted at
//! once, so a late answer never lands on the upload's object), and the answer holds for the life
//! of the process, unless a chunked `PutObject` is later refused for what it is (a store changed
//! behind a running fleet): then uploads go up in parts from the next one on. A store that cannot
//! be asked (down, timing out, answering something else) is asked again by an upload
//! [`ASK_AGAIN_AFTER`] later; meanwhile bodies go up as multipart uploads. Every question counts in
//! `media_s3_chunked_put_questions_total` by `answer`.
//!
//! An interrupted chunked body is never a complete request: the body ends only with its last
//! chunk, which is sent only after the source ended cleanly, so a client that dies, runs past
//! the limit or misses its deadline leaves the store a cut request, which it refuses (the upload
//! pipeline deletes the key anyway).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::Bytes;
use futures::StreamExt;

use super::fill::{fill_part, Live};
use super::sized::SizedBody;
use super::upload::{sending_config, streaming_config, time_to_answer};
use super::{sdk_error, S3BlobStore, BACKEND, MAX_STREAMED_PUT};
use crate::config::ChunkedPut;
use crate::storage::{validate_key, ByteStream, StorageError};

/// What is known of the store's taking chunked `PutObject`s (see the module docs).
#[derive(Debug)]
pub(super) struct ChunkedPuts {
    setting: ChunkedPut,
    /// With `auto`: [`UNKNOWN`], [`TAKEN`] or [`REFUSED`].
    known: AtomicU8,
    /// With `auto` and no verdict: no question before this (set when one is asked, and again when
    /// it comes back undecided), so one question is out at a time and a store that is down is not
    /// asked by every upload.
    quiet_until: Mutex<Option<tokio::time::Instant>>,
}

/// How long after a question the store left undecided the next one may be asked.
pub(super) const ASK_AGAIN_AFTER: Duration = Duration::from_secs(30);

const UNKNOWN: u8 = 0;
const TAKEN: u8 = 1;
const REFUSED: u8 = 2;

impl ChunkedPuts {
    pub(super) fn new(setting: ChunkedPut) -> Self {
        Self { setting, known: AtomicU8::new(UNKNOWN), quiet_until: Mutex::default() }
    }

    /// Whether this upload asks the question now: not while another's question is out (for up to
    /// [`ASK_AGAIN_AFTER`]), nor within that of an undecided one. Uploads that do not ask go up
    /// in parts.
    fn claim_question(&self) -> bool {
        let mut quiet = self.quiet_until.lock().unwrap_or_else(PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        if quiet.is_some_and(|until| now < until) {
            return false;
        }
        *quiet = Some(now + ASK_AGAIN_AFTER);
        true
    }

    /// Records a question's `answer` (taken, refused, or none to go by).
    fn answered(&self, answer: Option<bool>) {
        let label = match answer {
            Some(true) => "taken",
            Some(false) => "refused",
            None => "undecided",
        };
        metrics::counter!(crate::telemetry::metrics::names::S3_CHUNKED_PUT_QUESTIONS, "answer" => label).increment(1);
        let mut quiet = self.quiet_until.lock().unwrap_or_else(PoisonError::into_inner);
        *quiet = answer.is_none().then(|| tokio::time::Instant::now() + ASK_AGAIN_AFTER);
        if let Some(taken) = answer {
            // The first verdict stands (uploads asking at once may answer both ways).
            let verdict = if taken { TAKEN } else { REFUSED };
            let _ = self.known.compare_exchange(UNKNOWN, verdict, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// The store refused a chunked `PutObject` (any 4xx: the question's one byte was taken, so the
    /// request's kind at its size, or something in front of the store, is refused): with `auto`,
    /// uploads of unknown length go up in parts from now on, whatever the question found.
    fn refused(&self, status: u16, code: Option<&str>) {
        if self.setting == ChunkedPut::Auto && self.known.swap(REFUSED, Ordering::Relaxed) != REFUSED {
            tracing::warn!(
                status,
                code = code.unwrap_or("-"),
                "the store refused a chunked PutObject (MEDIA_S3_CHUNKED_PUT=auto): \
                 uploads of unknown length go up as multipart uploads from now on"
            );
        }
    }

    /// Whether chunked puts may be used at all: not when they are off, or known to be refused.
    fn may(&self) -> bool {
        match self.setting {
            ChunkedPut::Never => false,
            ChunkedPut::Always => true,
            ChunkedPut::Auto => self.known.load(Ordering::Relaxed) != REFUSED,
        }
    }
}

/// The least a chunk of a chunked `PutObject` holds (its last one excepted). A store decodes a
/// chunked body a chunk at a time: Garage spent 6–18 % more CPU per GiB on the 16–64 KiB chunks a
/// client's body comes in than on a body of announced length (docs/performance.md, session 26).
const FRAME: usize = 1 << 20;

/// `body` in chunks of at least [`FRAME`] bytes: smaller ones are copied together (one buffer
/// of `FRAME` at a time), larger ones pass as they are. A failure drops what was gathered (the
/// request is cut anyway).
fn framed(body: ByteStream) -> ByteStream {
    futures::stream::unfold(Some(body), |body| async move {
        let mut body = body?;
        let mut frame = bytes::BytesMut::new();
        loop {
            match body.next().await {
                Some(Ok(chunk)) if frame.is_empty() && chunk.len() >= FRAME => return Some((Ok(chunk), Some(body))),
                Some(Ok(chunk)) => {
                    if frame.is_empty() {
                        frame.reserve(FRAME.max(chunk.len()));
                    }
                    frame.extend_from_slice(&chunk);
                    if frame.len() >= FRAME {
                        return Some((Ok(frame.freeze()), Some(body)));
                    }
                }
                Some(Err(err)) => return Some((Err(err), None)),
                None if frame.is_empty() => return None,
                None => return Some((Ok(frame.freeze()), None)),
            }
        }
    })
    .fuse()
    .boxed()
}

/// Whether a store's error answer (`status`, S3 error `code`) to a chunked `PutObject` refuses
/// the request's kind: 411 Length Required (AWS, MinIO), 501 Not Implemented, or a 400 saying
/// the length is missing or the encoding not implemented. Anything else (a transient failure, a
/// 400 for another reason) is no verdict.
fn refuses_chunked(status: Option<u16>, code: Option<&str>) -> bool {
    match (status, code) {
        (Some(411 | 501), _) => true,
        (Some(400), Some(code)) => matches!(code, "MissingContentLength" | "NotImplemented"),
        _ => false,
    }
}

/// [`refuses_chunked`] of an SDK error, and the store's error code.
fn refusal<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> (bool, Option<&str>) {
    let status = err.raw_response().map(|r| r.status().as_u16());
    (refuses_chunked(status, err.code()), err.code())
}

impl S3BlobStore {
    /// A `PutObject` of `body` streamed as it comes, in a [`SizedBody`] (exact or bounded): given
    /// up on when the store stops taking bytes or answering for what a part's request may take.
    pub(super) async fn put_streamed(
        &self,
        key: &str,
        content_type: &str,
        body: SizedBody,
    ) -> Result<u64, StorageError> {
        let (failure, sent, ended, stall) =
            (body.failure.clone(), body.sent.clone(), body.ended.clone(), body.stall.clone());
        let exact = body.exact_length();
        let request = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type);
        let request = match exact {
            Some(length) => request.content_length(length as i64),
            None => request,
        };
        let request = request
            .body(S3Body::from_body_1_x(body))
            .customize()
            .config_override(streaming_config(self.read_timeout))
            .disable_payload_signing();
        // A store that stops taking the body (or answering once it has it) is given up on after
        // what a part's request may take, not the longest upload time: the client is told at once.
        let waited = time_to_answer(self.read_timeout, self.part_size as u64);
        let result = tokio::select! {
            biased;
            result = request.send() => result,
            () = stall.exceeded(waited) => {
                // Had S3 every byte, it may still store the object: delete it, in the background
                // (a stalled store may take its time to answer; the client is told now). One that
                // lands after this delete is the caller's to remove (the upload pipeline keeps such
                // a key journaled for the sweeper; the reconcile pass finds any other).
                // (hyper does not ask a body of announced length again after its last byte.)
                let had_every_byte =
                    ended.load(Ordering::Relaxed) || exact.is_some_and(|length| sent.load(Ordering::Relaxed) == length);
                if had_every_byte {
                    let (client, bucket, key) = (self.client.clone(), self.bucket.clone(), key.to_owned());
                    tokio::spawn(async move { client.delete_object().bucket(bucket).key(key).send().await });
                }
                let stage = if had_every_byte { "answer" } else { "body" };
                metrics::counter!(crate::telemetry::metrics::names::S3_PUT_STALLS, "stage" => stage).increment(1);
                let why = format!("S3 took no further byte of the upload, nor answered, for {} s", waited.as_secs());
                return Err(StorageError::backend(BACKEND, "put", why));
            }
        };
        // The source's own error (client gone, limit, deadline) says more than the SDK's wrapper.
        let failed = failure.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(err) = failed {
            if result.is_ok() {
                use crate::storage::BlobStore;
                self.delete(key).await?;
            }
            return Err(StorageError::Source(err));
        }
        if let (Err(err), None) = (&result, exact) {
            // Not a store's timeout of an idle body (`RequestTimeout`): a slow client causes that,
            // and must not turn chunked puts off for everyone.
            let status = err.raw_response().map(|r| r.status().as_u16()).filter(|s| (400..500).contains(s));
            if let (Some(status), false) = (status, err.code() == Some("RequestTimeout")) {
                self.chunked.refused(status, err.code());
            }
        }
        result.map_err(sdk_error("put"))?;
        if exact.is_none() && !ended.load(Ordering::Relaxed) {
            // A chunked request has no length the store could check: an answer before its last
            // chunk (a middlebox answering early) may have stored a cut object.
            use crate::storage::BlobStore;
            self.delete(key).await?;
            return Err(StorageError::backend(BACKEND, "put", "S3 answered before the whole body was sent"));
        }
        Ok(sent.load(Ordering::Relaxed))
    }

    /// `BlobStore::put_at_most`: a body of unknown length, at most `at_most` bytes. Its first part
    /// is read first: a body that ends within it goes up as one `PutObject` of that length; a
    /// longer one as one chunked `PutObject` when the store takes those (see the module docs),
    /// else as a multipart upload.
    pub(super) async fn put_unknown_length(
        &self,
        key: &str,
        content_type: &str,
        at_most: u64,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        use crate::storage::BlobStore;
        let worth_it = !self.sign_payload && at_most > self.part_size as u64 && at_most <= MAX_STREAMED_PUT;
        if !(worth_it && self.chunked.may()) {
            return self.put(key, content_type, body).await;
        }
        validate_key(key)?;
        let mut first = self.buffers.part();
        let mut carry = Bytes::new();
        if fill_part(&mut body, &mut first, &mut carry, &mut Live::Never, None).await? {
            return self.put_single(key, content_type, first).await;
        }
        if !self.takes_chunked_puts(key).await {
            return self.put_multipart(key, content_type, first, body, carry).await;
        }
        // The first part's bytes go out as one chunk, a view of its buffer (which the pool takes
        // back once the request let go of it).
        let head = first.cut_any().unwrap_or_default();
        drop(first);
        let body = futures::stream::iter([Ok(head), Ok(carry)]).chain(framed(body)).boxed();
        self.put_streamed(key, content_type, SizedBody::at_most(body, at_most)).await
    }

    /// Whether the store takes a chunked `PutObject`; with `auto`, asked once (see the module docs).
    async fn takes_chunked_puts(&self, key: &str) -> bool {
        if self.chunked.setting == ChunkedPut::Always {
            return true;
        }
        match self.chunked.known.load(Ordering::Relaxed) {
            TAKEN => return true,
            REFUSED => return false,
            _ if !self.chunked.claim_question() => return false,
            _ => {}
        }
        // A key of its own beside the upload's, deleted at once: a question answered late can
        // never land on the upload's object.
        let probe = format!("{key}.chunked-put-probe");
        let one = futures::stream::iter([Ok(Bytes::from_static(b"\0"))]).boxed();
        let request = self.client.put_object().bucket(&self.bucket).key(&probe);
        let request = request.body(S3Body::from_body_1_x(SizedBody::at_most(one, 1))).customize();
        let answer =
            request.config_override(sending_config(self.read_timeout, 1)).disable_payload_signing().send().await;
        let (found, code) = match &answer {
            Ok(_) => (Some(true), None),
            Err(err) => match refusal(err) {
                (true, code) => (Some(false), code),
                (false, code) => (None, code),
            },
        };
        self.chunked.answered(found);
        if found != Some(false) {
            // Whatever the answer, the probe's byte may be stored: it goes, in the background (a
            // store that did not answer may stall the delete too; the upload does not wait for it,
            // and the reconcile pass removes the key under the prefix if this delete fails).
            let (client, bucket) = (self.client.clone(), self.bucket.clone());
            tokio::spawn(async move { client.delete_object().bucket(bucket).key(probe).send().await });
        }
        match found {
            Some(taken) => {
                tracing::info!(
                    taken,
                    code = code.unwrap_or("-"),
                    "asked the store whether it takes a PutObject without a Content-Length (MEDIA_S3_CHUNKED_PUT=auto): \
                     uploads of unknown length go up as {}",
                    if taken { "one chunked PutObject" } else { "multipart uploads" }
                );
            }
            None => {
                let err = answer.err().map(|e| sdk_error::<_>("put")(e).to_string()).unwrap_or_default();
                tracing::warn!(
                    error = %err,
                    "could not ask the store about chunked PutObjects; uploads go up in parts for {} s, then it is asked again",
                    ASK_AGAIN_AFTER.as_secs()
                );
            }
        }
        found == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_chunks_are_gathered_into_frames_and_large_ones_pass_whole() {
        let sizes = [FRAME, 1, 70_000, FRAME, 5, FRAME - 1, 300_000, 3 * FRAME, 10];
        let data: Vec<u8> = (0..sizes.iter().sum::<usize>()).map(|i| (i % 251) as u8).collect();
        let mut at = 0;
        let chunks: Vec<std::io::Result<Bytes>> = sizes
            .iter()
            .map(|&n| {
                at += n;
                Ok(Bytes::copy_from_slice(&data[at - n..at]))
            })
            .collect();
        let frames: Vec<Bytes> = framed(futures::stream::iter(chunks).boxed()).map(|f| f.unwrap()).collect().await;
        let lengths: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert_eq!(lengths, [FRAME, 1 + 70_000 + FRAME, 5 + FRAME - 1, 300_000 + 3 * FRAME, 10]);
        assert_eq!(frames.concat(), data, "every byte, in order");
        let failing = futures::stream::iter([Ok(Bytes::from_static(b"abc")), Err(std::io::Error::other("gone"))]);
        let items: Vec<std::io::Result<Bytes>> = framed(failing.boxed()).collect().await;
        assert!(matches!(items.as_slice(), [Err(_)]), "the failure, and nothing after it");
    }

    #[test]
    fn a_refusal_of_the_request_s_kind_is_a_verdict_and_a_transient_failure_is_not() {
        let refused = [(411, None), (501, None), (411, Some("X")), (400, Some("MissingContentLength"))];
        for (status, code) in refused.into_iter().chain([(400, Some("NotImplemented"))]) {
            assert!(refuses_chunked(Some(status), code), "{status} {code:?}");
        }
        let transient = [(None, None), (Some(400), None), (Some(400), Some("InvalidRequest")), (Some(403), None)];
        for (status, code) in transient.into_iter().chain([(Some(500), None), (Some(503), Some("SlowDown"))]) {
            assert!(!refuses_chunked(status, code), "{status:?} {code:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_undecided_question_is_asked_again_only_after_a_while_and_a_verdict_stands_until_refused() {
        let never = ChunkedPuts::new(ChunkedPut::Never);
        assert!(!never.may());
        never.refused(411, None);
        assert_eq!(never.known.load(Ordering::Relaxed), UNKNOWN, "only auto learns");
        let auto = ChunkedPuts::new(ChunkedPut::Auto);
        assert!(auto.may() && auto.claim_question(), "unknown: asked");
        assert!(!auto.claim_question(), "one question out at a time");
        tokio::time::advance(Duration::from_secs(2)).await;
        auto.answered(None);
        assert!(auto.may() && !auto.claim_question(), "undecided: not asked again at once");
        tokio::time::advance(ASK_AGAIN_AFTER - Duration::from_millis(1)).await;
        assert!(!auto.claim_question(), "nor just before the wait after the answer is over");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(auto.claim_question(), "asked again after it");
        auto.answered(Some(true));
        auto.answered(Some(false));
        assert_eq!(auto.known.load(Ordering::Relaxed), TAKEN, "the first verdict stands");
        assert!(auto.claim_question() && auto.may(), "a verdict leaves no wait behind");
        auto.refused(413, None);
        assert!(!auto.may(), "a refused chunked PutObject turns them off");
        let always = ChunkedPuts::new(ChunkedPut::Always);
        always.refused(411, Some("MissingContentLength"));
        assert!(always.may(), "told to, it goes on (the refusal is the client's 503)");
    }
}
