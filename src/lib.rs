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
//! Layers, imports pointing down only (`docs/architecture.md` has the picture and where each kind of
//! change goes):
//!
//! - [`cli`], [`admin`], [`app`]: the binary's commands (`Opts` + `run` each) and
//!   [`app::Application`] (bind, serve, graceful drain).
//! - [`services`]: the one place the service's parts are assembled, for `serve` and every command.
//! - [`http`]: the router, [`http::state::AppState`], the principal extractor, admission (rate
//!   limits, upload slots, deadlines), the one HTTP error type ([`http::error::ApiError`]), the
//!   accept loop (plain or TLS), the OpenAPI document, and `routes/`, one file per resource.
//! - [`media`]: the use cases ([`media::MediaService`]) and their [`media::MediaError`]; the ingest
//!   pipeline every upload goes through (size limit, type sniffing, hashing, storing, dedup) and its
//!   sources (raw, data URL, SSRF-safe remote fetch).
//! - [`jobs`]: long work shared by the server and the CLI: sweep, rotate, shred, removal.
//! - [`auth`]: Bearer JWTs checked against the issuers' JWKS, principals and permissions, and the
//!   dev profile's local token issuer.
//! - [`db`]: Postgres and SQLite pools and migrations, the tenant key store, the encrypted media
//!   repository, the audit log, the blob journal.
//! - [`storage`]: the object-safe [`storage::BlobStore`], its S3 and filesystem backends, signed links.
//! - [`crypto`]: the key hierarchy: master keyring, wrapped tenant keys, field cipher, blind index,
//!   and the dev profile's generated key files.
//! - [`telemetry`]: log output with secret redaction, and the Prometheus metrics.
//! - [`config`]: the typed configuration, read from the environment and validated once.
//! - [`domain`]: value rules every layer shares (tenant and media ids, object keys, MIME types, key
//!   formats); it imports nothing of the crate.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod domain;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzz_checks;
pub mod http;
pub mod jobs;
pub mod media;
pub mod services;
pub mod storage;
pub mod telemetry;
