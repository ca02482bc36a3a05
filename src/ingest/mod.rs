//! The ingestion pipeline: every upload source is turned into a [`ByteStream`] and pushed through
//! the same checks before it reaches the blob store.
//!
//! This module holds the pieces shared by all sources; [`limit`] enforces the size limit while the
//! bytes stream, so an oversized body is cut at the byte that passes the limit and is never stored.

pub mod limit;

pub use crate::storage::ByteStream;
