//! Key material: the files the dev profile generates on first start.
//!
//! In the dev profile the service creates the keys it needs under the keys directory (`./keys`,
//! git-ignored) so `cargo run` works with no configuration; the production profile never gets here
//! because configuration validation demands explicit keys.

pub mod dev_keys;
