//! media-api: a media upload and data-protection service.
//!
//! Clients upload media with a Bearer token; the bytes stream through a size limit and content
//! sniffing into a blob store (S3 or a local directory) and the client gets an opaque `jan_*` ID back.
//! Backend services turn IDs into short-lived presigned URLs. Sensitive columns of the metadata rows
//! are encrypted per tenant (envelope encryption), and keys rotate while the service runs. The HTTP
//! contract and environment names are those of the jan-server media-api (v1).
//!
//! # Layout
//!
//! - [`cli`]: the command line (`serve` and the admin commands); `main.rs` only calls it.
//! - [`config`]: the typed configuration, read from the environment and validated once.
//! - [`app`]: [`app::Application`] (build, bind, serve, graceful shutdown) and the shared
//!   [`app::AppState`].
//! - [`auth`]: Bearer JWTs checked against the issuers' JWKS, principals and permissions, the axum
//!   extractor handlers use, and the dev profile's local token issuer.
//! - [`http`]: the router, one module per resource, and the one HTTP error type
//!   ([`http::error::ApiError`]); the accept loop (plain or TLS, graceful drain), admission
//!   (rate limits, upload cap, deadlines), the access log and the generated OpenAPI document.
//! - [`ingest`]: the streaming upload pipeline every source goes through (size limit, type
//!   sniffing, hashing, storing, dedup), upload sources (raw, data URL, SSRF-safe remote fetch) and
//!   the `jan_*` IDs.
//! - [`storage`]: the object-safe [`storage::BlobStore`] and its S3 and filesystem backends.
//! - [`db`]: Postgres and SQLite pools and migrations, the tenant key store, the encrypted media
//!   repository and the audit log.
//! - [`crypto`]: the key hierarchy: master keyring, wrapped tenant keys, field cipher, blind index,
//!   and the dev profile's generated key files.
//! - [`admin`]: one file per command of the binary (serve, migrate, keys, rotate-keys, tenant,
//!   audit, token, sweep, healthcheck).
//! - [`telemetry`]: log output with secret redaction, and the Prometheus metrics.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod http;
pub mod ingest;
pub mod storage;
pub mod telemetry;
