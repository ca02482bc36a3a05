//! The media use cases, and every rule about media, once. Handlers (`http::routes`) parse a request,
//! call one method of [`MediaService`] and render its answer; they never reach the database or the
//! blob store themselves.
//!
//! - [`upload`]: an upload from any source (raw body, multipart part, data URL, remote URL).
//! - [`direct`]: direct uploads — `prepare` a pending row and a presigned PUT, then verify it.
//! - [`read`]: finding a caller's media (one or many), presigning and opening its bytes.
//! - [`delete`]: deleting a media (uploader or admin), retried while a completion races it.
//! - [`resolve`]: finding `jan_*` IDs in any JSON payload and substituting URLs for them.
//! - [`links`]: the service's own signed blob links (filesystem backend, encrypted objects).
//! - [`sealed`]: encrypted objects (DESIGN §9): sealing while an upload streams, opening ranges.
//! - [`rekey`]: moving a stored object to a new DEK version, or sealing one stored in the clear.
//! - [`ingest`]: the pipeline every upload goes through (limit, sniff, hash, store, dedup) and its
//!   sources.
//!
//! Errors are [`MediaError`]. Admission (rate limits, upload slots, deadlines) is the HTTP layer's:
//! use cases that move a whole upload take the slot the caller was admitted with as a `hold`, kept
//! until the work ends even when the request is gone.

pub mod delete;
pub mod direct;
pub mod error;
pub mod ingest;
pub mod links;
pub mod read;
pub mod rekey;
pub mod resolve;
pub mod sealed;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

pub use error::MediaError;

use crate::config::Config;
use crate::db::media::MediaRepo;
use crate::storage::links::LinkSigner;
use crate::storage::BlobStore;
use ingest::pipeline::Pipeline;
use ingest::remote::RemoteFetcher;

/// The settings the use cases apply.
#[derive(Debug, Clone, Copy)]
pub struct MediaSettings {
    /// Largest upload in bytes (`MEDIA_MAX_BYTES`).
    pub max_bytes: u64,
    /// Default validity of presigned URLs (`MEDIA_S3_PRESIGN_TTL`).
    pub presign_ttl: Duration,
    /// Cap on any presigned URL's validity (`MEDIA_PRESIGN_MAX_TTL`).
    pub presign_max_ttl: Duration,
}

impl MediaSettings {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self { max_bytes: config.max_bytes, presign_ttl: config.presign_ttl, presign_max_ttl: config.presign_max_ttl }
    }
}

/// The media use cases (cheap to clone).
#[derive(Clone)]
pub struct MediaService {
    repo: MediaRepo,
    blobs: Arc<dyn BlobStore>,
    links: Option<Arc<LinkSigner>>,
    pipeline: Pipeline,
    remote: RemoteFetcher,
    settings: MediaSettings,
    /// `media_presigns_total`, looked up once (the recorder is installed before services are built).
    presigns: metrics::Counter,
}

impl MediaService {
    /// The use cases over the pipeline's rows and blob store, signing links with `links` (the
    /// filesystem backend's), fetching `remote_url`s with `remote`. Metrics go to the recorder
    /// installed before this is called (none: not counted).
    pub fn new(
        pipeline: Pipeline,
        links: Option<Arc<LinkSigner>>,
        remote: RemoteFetcher,
        settings: MediaSettings,
    ) -> Self {
        let (repo, blobs) = (pipeline.repo().clone(), pipeline.blobs().clone());
        let presigns = metrics::counter!(crate::telemetry::metrics::names::PRESIGNS);
        Self { repo, blobs, links, pipeline, remote, settings, presigns }
    }

    /// The settings applied.
    pub fn settings(&self) -> &MediaSettings {
        &self.settings
    }

    /// Waits (at most `grace`) for detached uploads to finish (see [`Pipeline::drain`]).
    pub async fn drain(&self, grace: Duration) -> usize {
        self.pipeline.drain(grace).await
    }
}
