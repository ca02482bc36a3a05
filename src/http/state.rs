//! [`AppState`]: what every handler, extractor and middleware shares — the media use cases and the
//! service's parts as `services.rs` assembled them (tests and probes reach those), plus the HTTP
//! layer's own (admission limits, metrics rendering).

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use super::admission::Limits;
use super::routes::health::ReadinessCache;
use super::routes::metrics::ScrapeState;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::crypto::keyring::Keyring;
use crate::db::media::MediaRepo;
use crate::db::notify::CacheGate;
use crate::db::tenant_keys::TenantKeys;
use crate::db::Database;
use crate::media::ingest::pipeline::Pipeline;
use crate::media::MediaService;
use crate::storage::BlobStore;

/// What the handlers share: a cheap handle (one reference count) on [`Shared`], cloned by every
/// extractor and middleware of every request.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The service's parts.
pub struct Shared {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Metadata database.
    pub db: Database,
    /// Blob storage.
    pub blobs: Arc<dyn BlobStore>,
    /// Master keys (KEKs) that wrap the tenant keys.
    pub keyring: Arc<Keyring>,
    /// Tenant keys (wrapped in the database, cached unwrapped).
    pub keys: Arc<TenantKeys>,
    /// Encrypted media rows.
    pub media: MediaRepo,
    /// Bearer token checks and principals.
    pub auth: Arc<Authenticator>,
    /// The upload pipeline (checks, blob store, encrypted rows, audit).
    pub pipeline: Pipeline,
    /// The media use cases: what handlers call.
    pub service: MediaService,
    /// Whether caches are in use (closed while the cache invalidation listener is down).
    pub cache_gate: CacheGate,
    /// Rate limits and the upload concurrency cap.
    pub limits: Arc<Limits>,
    /// The Prometheus recorder's handle (renders `/metrics`).
    pub metrics: PrometheusHandle,
    /// Scrape-time gauge bookkeeping.
    pub scrape: ScrapeState,
    /// `/readyz`'s last result and the check in flight.
    pub readiness: ReadinessCache,
}
