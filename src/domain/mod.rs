//! Value types and rules that validate themselves, shared by every layer above: tenant ids, media
//! ids, object keys, MIME types and the allowlist's limits, the link key, the master-key format and
//! the network a client address counts as.
//! It imports nothing from the crate, so the configuration can check values with the same code the
//! service later relies on, once, at start-up.

pub mod link_key;
pub mod master_keys;
pub mod media_id;
pub mod mime;
pub mod network;
pub mod storage_key;
pub mod tenant;
