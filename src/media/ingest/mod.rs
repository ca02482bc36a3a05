//! The ingestion pipeline: every upload source is turned into a [`ByteStream`] and pushed through
//! the same checks before it reaches the blob store.
//!
//! - [`pipeline`]: the one pass over the bytes — size limit, type sniffing, hashing, storing,
//!   dedup, the encrypted row — and the verification of direct uploads.
//! - [`upload`]: what the client says about an upload (types, name, hint, length).
//! - [`limit`]: the size limit enforced while the bytes stream (cut at the byte that passes it).
//! - [`sniff`]: the allowlist and the agreement of declared types with the sniffed one.
//! - [`sources`]: raw bodies, filenames from headers, data URLs.
//! - [`remote`]: `remote_url` fetches that refuse every non-public address.

pub mod limit;
pub mod pipeline;
pub mod remote;
pub mod sniff;
pub mod sources;
pub mod upload;

pub use crate::storage::ByteStream;
