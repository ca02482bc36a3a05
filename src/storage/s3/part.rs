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
//! A full part becomes [`Bytes`] that own the buffer ([`Part::into_bytes`]); the SDK clones them
//! for a retry, and the buffer returns to the pool when the last clone is dropped. The pool keeps
//! at most `keep` idle buffers (one upload's worth); buffers beyond that are freed.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Idle part buffers, each with a capacity of `part_size` bytes.
#[derive(Debug)]
pub(super) struct PartBuffers {
    idle: Mutex<Vec<Vec<u8>>>,
    part_size: usize,
    keep: usize,
}

impl PartBuffers {
    /// A pool of buffers of `part_size` bytes keeping at most `keep` of them idle.
    pub(super) fn new(part_size: usize, keep: usize) -> Arc<Self> {
        Arc::new(Self { idle: Mutex::new(Vec::with_capacity(keep)), part_size, keep })
    }

    /// An empty part: an idle buffer, or a new one.
    pub(super) fn part(self: &Arc<Self>) -> Part {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let buf = idle.unwrap_or_else(|| Vec::with_capacity(self.part_size));
        Part { buf, pool: self.clone() }
    }

    /// Idle buffers.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != self.part_size {
            return;
        }
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
    buf: Vec<u8>,
    pool: Arc<PartBuffers>,
}

impl Part {
    /// Bytes in the part.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the part can still take.
    pub(super) fn room(&self) -> usize {
        self.pool.part_size - self.buf.len()
    }

    /// Appends the first `room()` bytes of `data` at most; returns how many it took.
    pub(super) fn fill_from(&mut self, data: &[u8]) -> usize {
        let take = data.len().min(self.room());
        self.buf.extend_from_slice(&data[..take]);
        take
    }

    /// The part as bytes that own its buffer: clones share it, and the last one dropped gives it
    /// back to the pool.
    pub(super) fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for Part {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_takes_bytes_up_to_its_size_in_order() {
        let pool = PartBuffers::new(10, 1);
        let mut part = pool.part();
        assert_eq!(part.fill_from(b"abcd"), 4);
        assert_eq!(part.fill_from(b""), 0);
        assert_eq!(part.fill_from(b"efghijklmn"), 6, "only what fits");
        assert_eq!((part.len(), part.room()), (10, 0));
        assert_eq!(part.fill_from(b"x"), 0, "a full part takes nothing");
        assert_eq!(part.into_bytes(), &b"abcdefghij"[..]);
    }

    #[test]
    fn a_buffer_returns_to_the_pool_once_every_clone_of_its_bytes_is_gone_and_is_reused_empty() {
        let pool = PartBuffers::new(1 << 16, 1);
        let mut part = pool.part();
        part.fill_from(&[7u8; 1000]);
        let bytes = part.into_bytes();
        let address = bytes.as_ptr();
        let retry = bytes.clone();
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a clone (a retry) still reads the buffer");
        assert_eq!(retry.len(), 1000);
        drop(retry);
        assert_eq!(pool.idle(), 1, "the last clone gave the buffer back");
        let mut again = pool.part();
        assert_eq!(again.len(), 0, "a reused buffer starts empty");
        again.fill_from(b"new");
        assert_eq!(again.into_bytes().as_ptr(), address, "the same memory, not a new allocation");
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
