//! Filling a multipart upload's parts from the body, and when a part's request starts: once the
//! part is filled (sent whole), or, when S3 would otherwise have nothing to do, at once, with the
//! part's bytes passed on as they come (a *live* part; `upload` sends it).
//!
//! A part goes live as soon as no other part's request is in flight ([`Live::WhenIdle`]): two whole
//! parts sent side by side finish together, and S3 then waited while the next part filled (5–8 ms
//! per two parts on one core; `scripts/trace-s3-parts`). A part filled while another request still
//! keeps S3 busy is sent whole, so a body ending inside it (the last part) costs nothing more; a live
//! part the body ends inside is cut short and sent again whole.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::StreamExt;

use super::part::Part;
use super::BACKEND;
use crate::storage::{ByteStream, StorageError};

/// What [`fill_part`] stops with when another part failed (the caller reports that part's error).
pub(super) const PART_FAILED: &str = "another part of the upload failed";

/// A live part's bytes not cut yet are cut once they are this old.
const LIVE_CUT_AFTER: Duration = Duration::from_secs(1);

/// Where a live part's segments go: the body of its request.
pub(super) type LiveSegments = futures::channel::mpsc::UnboundedSender<std::io::Result<Bytes>>;

/// Bytes of an upload's parts whose requests have not answered yet, and a wake-up when one did;
/// whether one failed, and a wake-up when it did.
#[derive(Default)]
pub(super) struct Held {
    bytes: AtomicUsize,
    released: tokio::sync::Notify,
    failed: AtomicBool,
    failure: tokio::sync::Notify,
}

impl Held {
    pub(super) fn add(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::AcqRel);
    }

    pub(super) fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::AcqRel);
        self.released.notify_one();
    }

    pub(super) fn get(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Waits for the next release.
    pub(super) async fn released(&self) {
        self.released.notified().await;
    }

    /// Marks the upload failed: a part's request failed for good.
    pub(super) fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.failure.notify_one();
    }

    pub(super) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Waits until a part's request failed for good.
    async fn failed(&self) {
        while !self.has_failed() {
            self.failure.notified().await;
        }
    }

    /// Waits until no part's request is in flight (every part holds at least one byte).
    async fn none(&self) {
        while self.get() > 0 {
            self.released.notified().await;
        }
    }
}

/// When the part being filled is sent.
pub(super) enum Live<'a> {
    /// Whole, once filled.
    Never,
    /// Live from the moment no other part's request is in flight: `start` starts the part's
    /// request and returns where its segments go.
    WhenIdle { held: &'a Held, start: &'a mut (dyn FnMut() -> LiveSegments + Send) },
    /// Live: its segments go here.
    Started(LiveSegments),
}

impl Live<'_> {
    /// Where the part's segments went, if it went live.
    pub(super) fn started(self) -> Option<LiveSegments> {
        match self {
            Live::Started(segments) => Some(segments),
            _ => None,
        }
    }
}

/// Reads from `body` until `part` is full or the body ends; returns whether it ended. A chunk
/// crossing the part's end is split; its rest stays in `carry`, and a chunk copied whole is
/// released at once. A full part looks one chunk ahead, so a body ending exactly at a part's end
/// says so (a body of exactly one part goes up as one `PutObject`, not a multipart upload), and a
/// part after one that did not end gets at least one byte.
///
/// A live part's segments are passed on as they are cut (see [`Live`]); a body ending inside the
/// part passes on nothing more (its request is cut short).
///
/// With `parts`, the fill stops as soon as one of them failed for good ([`Held::fail`]), with
/// [`PART_FAILED`]: a slow client is told at once, not once it has sent the rest of the part.
pub(super) async fn fill_part(
    body: &mut ByteStream,
    part: &mut Part,
    carry: &mut Bytes,
    live: &mut Live<'_>,
    parts: Option<&Held>,
) -> Result<bool, StorageError> {
    let mut last_cut = tokio::time::Instant::now();
    let mut cut_now = false;
    loop {
        if parts.is_some_and(Held::has_failed) {
            return Err(StorageError::backend(BACKEND, "upload part", PART_FAILED));
        }
        let taken = part.fill_from(carry);
        if taken == carry.len() {
            *carry = Bytes::new();
        } else {
            carry.advance(taken);
        }
        let start = match live {
            // A full part waits only for its look-ahead chunk: it is sent whole.
            // Not for an upload that already failed (its last part's release made `held` 0).
            Live::WhenIdle { held, start } if held.get() == 0 && part.room() > 0 && !held.has_failed() => Some(start()),
            _ => None,
        };
        if let Some(segments) = start {
            *live = Live::Started(segments);
            cut_now = true;
        }
        if let Live::Started(segments) = live {
            // Enough new bytes; or what there is, once the part goes live, and a slow client's
            // bytes once a second (S3 drops a request whose body stays idle; AWS after about 20 s).
            let segment = match part.cut() {
                None if cut_now || last_cut.elapsed() >= LIVE_CUT_AFTER => part.cut_any(),
                cut => cut,
            };
            if let Some(segment) = segment {
                (last_cut, cut_now) = (tokio::time::Instant::now(), false);
                // A request that already failed takes nothing: its part is sent whole (`send_live`).
                let _ = segments.unbounded_send(Ok(segment));
            }
        }
        if part.room() == 0 && !carry.is_empty() {
            return Ok(false);
        }
        let next = {
            // S3 has run out of work: the part goes live (at the loop's top).
            let idle = match live {
                Live::WhenIdle { held, .. } if part.room() > 0 => Some(&**held),
                _ => None,
            };
            // Bytes not cut yet are cut once they are `LIVE_CUT_AFTER` old, even while the client
            // pauses.
            let due = match live {
                Live::Started(_) if part.uncut() > 0 => Some(last_cut + LIVE_CUT_AFTER),
                _ => None,
            };
            let failed = async {
                match parts {
                    Some(parts) => parts.failed().await,
                    None => std::future::pending().await,
                }
            };
            let idle = async {
                match idle {
                    Some(held) => held.none().await,
                    None => std::future::pending().await,
                }
            };
            let due = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                chunk = body.next() => Some(chunk),
                () = failed => return Err(StorageError::backend(BACKEND, "upload part", PART_FAILED)),
                () = idle => None,
                () = due => None,
            }
        };
        match next {
            // S3 has nothing left to do (the part goes live), or bytes are due to be cut: both at
            // the loop's top.
            None => {}
            Some(Some(chunk)) => *carry = chunk.map_err(StorageError::Source)?,
            Some(None) => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::primitives::ByteStream as S3Body;

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
            let ended =
                fill_part(&mut body, &mut part, &mut carry, &mut Live::Never, None).await.expect("the body reads");
            assert!(ended || part.len() == 1024, "only the last part is short");
            parts += 1;
            // What the SDK does before a retry: a fresh copy of the body, read from the start.
            let first = part.body().into_inner();
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
                let ended =
                    fill_part(&mut body, &mut part, &mut carry, &mut Live::Never, None).await.expect("the body reads");
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

    #[tokio::test]
    async fn a_part_goes_live_once_no_other_request_is_in_flight_and_passes_on_every_byte_in_order() {
        let pool = PartBuffers::new(1024, 2); // segments of at least 16 bytes
        let held = Held::default();
        held.add(100); // another part's request, in flight
        let (a, b) = (Bytes::from(vec![1u8; 300]), Bytes::from(vec![2u8; 200]));
        let (go_on, gate) = tokio::sync::oneshot::channel::<()>();
        let rest = futures::stream::once(async move { gate.await.map(|()| Ok(b)).expect("gate") });
        let mut body: ByteStream = futures::stream::iter([Ok(a.clone())]).chain(rest).boxed();
        let (tell, mut told) = tokio::sync::oneshot::channel::<()>();
        let (mut tell, mut received) = (Some(tell), None);
        let mut start = || {
            let (segments, stream) = futures::channel::mpsc::unbounded();
            received = Some(stream);
            tell.take().expect("started once").send(()).expect("the test waits");
            segments
        };
        let (mut part, mut carry) = (pool.part(), Bytes::new());
        let mut live = Live::WhenIdle { held: &held, start: &mut start };
        let fill = fill_part(&mut body, &mut part, &mut carry, &mut live, None);
        let drive = async {
            // `join!` polls the fill first: the body has stopped after 300 bytes and the other
            // request is still in flight.
            assert!(told.try_recv().is_err(), "not live while another request keeps S3 busy");
            held.release(100);
            (&mut told).await.expect("live once nothing is in flight, though the body has stopped");
            go_on.send(()).expect("the fill still reads");
        };
        let (ended, ()) = tokio::join!(fill, drive);
        assert!(ended.expect("the body reads"), "the body ended inside the part");
        let segments = live.started().expect("the part went live");
        drop(segments);
        let passed: Vec<Bytes> = received.expect("started").map(|s| s.expect("segment")).collect().await;
        assert_eq!(passed.concat(), [a, Bytes::from(vec![2u8; 200])].concat(), "every byte, once, in order");
        assert_eq!(part.len(), 500);
        assert_eq!(S3Body::new(part.body().into_inner()).collect().await.expect("whole").into_bytes().len(), 500);
    }

    #[tokio::test]
    async fn a_part_filled_while_another_request_is_in_flight_is_not_live() {
        let pool = PartBuffers::new(1024, 2);
        let held = Held::default();
        held.add(1);
        let mut body: ByteStream = futures::stream::iter([Ok(Bytes::from(vec![3u8; 1500]))]).boxed();
        let mut start = || -> LiveSegments { panic!("a part filled while S3 is busy is sent whole") };
        let (mut part, mut carry) = (pool.part(), Bytes::new());
        let mut live = Live::WhenIdle { held: &held, start: &mut start };
        let ended = fill_part(&mut body, &mut part, &mut carry, &mut live, None).await.expect("reads");
        assert!(!ended && part.room() == 0 && carry.len() == 476, "a full part, the rest carried");
        assert!(live.started().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_parts_few_bytes_are_passed_on_within_a_second_while_the_client_pauses() {
        let pool = PartBuffers::new(1024, 2); // segments of at least 16 bytes
        let (segments, mut passed) = futures::channel::mpsc::unbounded();
        let mut live = Live::Started(segments);
        // Five bytes, then a client that sends nothing more.
        let mut body: ByteStream =
            futures::stream::iter([Ok(Bytes::from_static(b"hello"))]).chain(futures::stream::pending()).boxed();
        let (mut part, mut carry) = (pool.part(), Bytes::new());
        let began = tokio::time::Instant::now();
        tokio::select! {
            _ = fill_part(&mut body, &mut part, &mut carry, &mut live, None) => panic!("the body never ends"),
            () = tokio::time::sleep(5 * LIVE_CUT_AFTER) => panic!("the five bytes were never passed on"),
            segment = passed.next() => {
                assert_eq!(segment.expect("a segment").expect("bytes"), &b"hello"[..]);
                assert!(began.elapsed() >= LIVE_CUT_AFTER, "fewer bytes than a segment wait for their second");
            }
        }
    }

    #[tokio::test]
    async fn a_fill_stops_as_soon_as_another_part_failed_while_the_client_still_sends() {
        let pool = PartBuffers::new(1024, 2);
        let held = Held::default();
        held.add(1024); // part 1's request, in flight
                        // A client that sent 100 bytes of part 2 and then pauses.
        let mut body: ByteStream =
            futures::stream::iter([Ok(Bytes::from(vec![4u8; 100]))]).chain(futures::stream::pending()).boxed();
        let (mut part, mut carry) = (pool.part(), Bytes::new());
        let mut live = Live::Never;
        let fill = fill_part(&mut body, &mut part, &mut carry, &mut live, Some(&held));
        let fail = async {
            tokio::task::yield_now().await;
            held.fail();
            held.release(1024);
        };
        let both = async { tokio::join!(fill, fail) };
        let (stopped, ()) = tokio::time::timeout(Duration::from_secs(10), both).await.expect("the fill stopped");
        let err = stopped.expect_err("the fill stops without waiting for the rest of the part");
        assert!(err.to_string().contains(PART_FAILED), "{err}");
        assert_eq!(part.len(), 100, "it had taken what the client sent");
    }
}
