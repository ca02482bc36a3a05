//! Part buffers of a multipart upload (and of a body that ends inside its first part): one
//! contiguous buffer of `part_size` bytes per part, taken from a small pool and given back once
//! the part's request has answered, so an upload reuses the same few buffers from its first part
//! to its last.
//!
//! The body's chunks (slices of the server's read buffer, or of the multipart reader's) are copied
//! in and released at once. Holding them instead (no copy) kept every read buffer a chunk was cut
//! from alive until its part had answered, so the server kept allocating fresh ones, and the
//! allocator's per-thread arenas kept what was freed out of order: a process that had taken
//! chunked and multipart uploads stayed 10–20 MiB above one that had taken raw ones. A copy costs a
//! `memcpy` per byte; a reused buffer costs no allocation and no page fault after its first part.
//!
//! A part's bytes leave it as *segments*: [`Bytes`] views of its buffer, cut from what was copied in
//! ([`Part::cut`]), so a part can be sent while it is still being filled (a live part, see
//! `fill`) and sent again whole from the same memory ([`Part::body`]). A segment is cut only
//! from at least `part_size / SEGMENTS` new bytes (or at the part's end, or by [`Part::cut_any`],
//! which `fill` calls at most once a second), so a client sending one byte at a time cannot make a
//! part hold millions of views.
//!
//! The buffer returns to the pool when the part is dropped; the next part reclaims it
//! ([`BytesMut::try_reclaim`]) only when no segment of it is left (a request still holding one
//! gets its bytes untouched, and the next part a new buffer). The pool keeps at most `keep` idle
//! buffers (one upload's worth); buffers beyond that are freed.

use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_smithy_types::body::SdkBody;
use bytes::{Bytes, BytesMut};

/// A part is cut into at most about this many segments.
const SEGMENTS: usize = 64;

/// Idle part buffers, each with a capacity of `part_size` bytes.
#[derive(Debug)]
pub(super) struct PartBuffers {
    idle: Mutex<Vec<BytesMut>>,
    part_size: usize,
    keep: usize,
}

impl PartBuffers {
    /// A pool of buffers of `part_size` bytes keeping at most `keep` of them idle.
    pub(super) fn new(part_size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(Vec::with_capacity(keep)), part_size, keep })
    }

    /// An empty part: an idle buffer no segment holds any more, or a new one.
    pub(super) fn part(self: &Arc<Self>) -> Part {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let buf = idle
            .and_then(|mut buf| buf.try_reclaim(self.part_size).then_some(buf))
            .unwrap_or_else(|| BytesMut::with_capacity(self.part_size));
        Part { buf, segments: Vec::new(), cut: 0, pool: self.clone() }
    }

    /// Idle buffers.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn give_back(&self, mut buf: BytesMut) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }
}

/// The bytes of one part, in a pooled buffer that goes back to its pool when dropped.
#[derive(Debug)]
pub(super) struct Part {
    /// The bytes copied in and not cut yet, then the room left: a view of the part's buffer.
    buf: BytesMut,
    /// The bytes cut so far, in order: views of the same buffer.
    segments: Vec<Bytes>,
    /// Bytes in `segments`.
    cut: usize,
    pool: Arc<PartBuffers>,
}

impl Part {
    /// Bytes in the part.
    pub(super) fn len(&self) -> usize {
        self.cut + self.buf.len()
    }

    /// Bytes the part can still take.
    pub(super) fn room(&self) -> usize {
        self.pool.part_size - self.len()
    }

    /// Bytes copied in and not cut yet.
    pub(super) fn uncut(&self) -> usize {
        self.buf.len()
    }

    /// Appends the first `room()` bytes of `data` at most; returns how many it took.
    pub(super) fn fill_from(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// The bytes copied in since the last cut, as a segment, once there are enough of them
    /// (`part_size / SEGMENTS`) or the part is full; `None` before that.
    pub(super) fn cut(&mut self) -> Option<Bytes> {
        let enough = self.buf.len() >= (self.pool.part_size / SEGMENTS).max(1) || self.room() == 0;
        (enough && !self.buf.is_empty()).then(|| self.cut_all())
    }

    /// The bytes copied in since the last cut, as a segment, however few; `None` if there are none.
    pub(super) fn cut_any(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.cut_all())
    }

    fn cut_all(&mut self) -> Bytes {
        let segment = self.buf.split().freeze();
        self.cut += segment.len();
        self.segments.push(segment.clone());
        segment
    }

    /// The whole part as a request body the SDK can send again (a retry reads it from the start):
    /// views of the buffer, no copy. The part must outlive the request for the pool to reuse its
    /// buffer.
    pub(super) fn body(&mut self) -> S3Body {
        if !self.buf.is_empty() {
            self.cut_all();
        }
        match self.segments.as_slice() {
            [] => S3Body::from(Bytes::new()),
            [one] => S3Body::from(one.clone()),
            many => {
                let segments: Arc<[Bytes]> = many.into();
                S3Body::new(SdkBody::retryable(move || {
                    SdkBody::from_body_1_x(Segments { segments: segments.clone(), next: 0 })
                }))
            }
        }
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.segments.clear();
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

/// A request body sending segments in order.
struct Segments {
    segments: Arc<[Bytes]>,
    next: usize,
}

impl http_body::Body for Segments {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let segment = this.segments.get(this.next).cloned();
        this.next += 1;
        std::task::Poll::Ready(segment.map(|segment| Ok(http_body::Frame::data(segment))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.segments.len()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let rest = self.segments.get(self.next..).unwrap_or_default();
        http_body::SizeHint::with_exact(rest.iter().map(|s| s.len() as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(body: S3Body) -> Bytes {
        body.collect().await.expect("read whole").into_bytes()
    }

    #[test]
    fn a_part_takes_bytes_up_to_its_size_in_order() {
        let pool = PartBuffers::new(10, 1);
        let mut part = pool.part();
        assert_eq!(part.fill_from(b"abcd"), 4);
        assert_eq!(part.fill_from(b""), 0);
        assert_eq!(part.fill_from(b"efghijklmn"), 6, "only what fits");
        assert_eq!((part.len(), part.room()), (10, 0));
        assert_eq!(part.fill_from(b"x"), 0, "a full part takes nothing");
        assert_eq!(part.cut().expect("a full part is cut"), &b"abcdefghij"[..]);
        assert_eq!(part.len(), 10, "cut bytes still count");
    }

    #[test]
    fn segments_are_cut_from_enough_new_bytes_or_at_the_parts_end() {
        let pool = PartBuffers::new(SEGMENTS * 4, 1); // a segment is at least 4 bytes
        let mut part = pool.part();
        part.fill_from(b"abc");
        assert_eq!(part.cut(), None, "three bytes are not enough");
        part.fill_from(b"d");
        assert_eq!(part.cut().expect("four are"), &b"abcd"[..]);
        assert_eq!(part.cut(), None, "nothing new");
        let rest = vec![b'z'; SEGMENTS * 4 - 5];
        part.fill_from(&rest);
        assert_eq!(part.cut().expect("enough").len(), rest.len());
        part.fill_from(b"!");
        assert_eq!(part.cut().expect("the part is full"), &b"!"[..]);
        assert_eq!(part.room(), 0);
        assert_eq!(part.cut_any(), None, "nothing left to cut");
    }

    #[tokio::test]
    async fn the_whole_part_is_a_body_sent_again_from_the_start_with_every_byte_in_order() {
        let pool = PartBuffers::new(1000, 1);
        for cuts in [vec![], vec![1000], vec![10, 500, 999], vec![0]] {
            let mut part = pool.part();
            let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
            let mut from = 0;
            for &to in &cuts {
                part.fill_from(&data[from..to]);
                part.cut_any();
                from = to;
            }
            part.fill_from(&data[from..]);
            let body = part.body().into_inner();
            let again = body.try_clone().expect("the SDK can send the part again");
            assert_eq!(read(S3Body::new(body)).await, data, "cuts {cuts:?}");
            assert_eq!(read(S3Body::new(again)).await, data, "cuts {cuts:?}: a retry sends the same bytes");
        }
    }

    #[tokio::test]
    async fn a_buffer_is_reused_once_no_segment_holds_it_and_never_while_one_does() {
        let pool = PartBuffers::new(1 << 16, 1);
        let mut part = pool.part();
        part.fill_from(&[7u8; 1 << 16]);
        let segment = part.cut().expect("full");
        let address = segment.as_ptr();
        drop(part);
        assert_eq!(pool.idle(), 1);
        // A request still holds the segment: the next part must not write over it.
        let mut next = pool.part();
        next.fill_from(&[9u8; 100]);
        let other = next.body().into_inner().bytes().expect("in memory").as_ptr();
        assert_ne!(other, address, "a new buffer");
        assert!(segment.iter().all(|&b| b == 7), "the segment's bytes are untouched");
        drop((next, segment));
        let mut reused = pool.part();
        assert_eq!(reused.len(), 0, "a reused buffer starts empty");
        reused.fill_from(b"new");
        let body = reused.body();
        assert_eq!(body.into_inner().bytes().expect("in memory").as_ptr(), other, "the same memory, reclaimed");
    }

    #[test]
    fn the_pool_keeps_at_most_its_share_of_idle_buffers() {
        let pool = PartBuffers::new(64, 2);
        let parts: Vec<Part> = (0..5).map(|_| pool.part()).collect();
        assert_eq!(pool.idle(), 0);
        drop(parts);
        assert_eq!(pool.idle(), 2, "three of the five buffers were freed");
        let (a, b, c) = (pool.part(), pool.part(), pool.part());
        assert_eq!(pool.idle(), 0);
        drop((a, b, c));
        assert_eq!(pool.idle(), 2);
    }
}
