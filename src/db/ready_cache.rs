//! A short-lived, in-process cache of decrypted *ready* media rows, so the hot read paths
//! (presign, resolve, download) of an ID read again within seconds skip the database round trip
//! and the row decryption. LLM chat clients resend the whole conversation every turn, so the same
//! IDs are resolved over and over.
//!
//! Bounded in time (`MEDIA_RECORD_CACHE_TTL`, default 5 s; 0 turns it off) and size
//! ([`MAX_ENTRIES`]). Keyed by `(tenant, id)`, so tenant isolation is the database's. Deleting a
//! media or shredding a tenant in this process drops its entries at once; in *another* process
//! (a second replica, `media-api tenant shred`, `media-api sweep`) the change is seen here within
//! the TTL — a presigned URL issued in that window points at an object that is already gone
//! (S3 answers 404), and the decrypted fields (filename, storage key) stay in this process's
//! memory at most that long after a shred. Operators who cannot accept that set the TTL to 0.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::media::{MediaStatus, StoredMedia};

/// Most entries held; past it expired entries are dropped, and if that is not enough, all.
pub const MAX_ENTRIES: usize = 100_000;

/// The cache (see the module docs).
#[derive(Debug)]
pub struct ReadyCache {
    ttl: Duration,
    entries: Mutex<HashMap<(String, String), (Instant, StoredMedia)>>,
}

impl ReadyCache {
    /// A cache keeping entries for `ttl`; `None` when `ttl` is zero (caching off).
    pub fn new(ttl: Duration) -> Option<Self> {
        (!ttl.is_zero()).then(|| Self { ttl, entries: Mutex::new(HashMap::new()) })
    }

    /// The cached row, when present and fresh.
    pub fn get(&self, tenant: &str, id: &str) -> Option<StoredMedia> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, media) = entries.get(&(tenant.to_owned(), id.to_owned()))?;
        (at.elapsed() < self.ttl).then(|| media.clone())
    }

    /// Remembers a row read from the database (ready rows only: a pending one changes on completion).
    pub fn put(&self, media: &StoredMedia) {
        if media.record.status != MediaStatus::Ready {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        let key = (media.record.tenant_id.clone(), media.record.id.clone());
        entries.insert(key, (Instant::now(), media.clone()));
    }

    /// Forgets one row (deleted, or changed).
    pub fn forget(&self, tenant: &str, id: &str) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).remove(&(tenant.to_owned(), id.to_owned()));
    }

    /// Forgets every row of a tenant (shredded).
    pub fn forget_tenant(&self, tenant: &str) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).retain(|(t, _), _| t != tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::media::MediaRecord;

    fn media(tenant: &str, id: &str, status: MediaStatus) -> StoredMedia {
        let record = MediaRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            status,
            mime: "image/png".into(),
            size: 1,
            filename: None,
            uploader: "u".into(),
            user_hint: None,
            storage_key: format!("m/{id}"),
            sha256: Some([0; 32]),
            metadata: None,
            retention_until: None,
        };
        StoredMedia { record, dek_version: 1, created_at: chrono::Utc::now() }
    }

    #[test]
    fn ready_rows_are_served_until_their_ttl_and_by_tenant_only() {
        let cache = ReadyCache::new(Duration::from_millis(50)).expect("on");
        cache.put(&media("a", "jan_1", MediaStatus::Ready));
        cache.put(&media("a", "jan_2", MediaStatus::Pending));
        assert_eq!(cache.get("a", "jan_1").map(|m| m.record.storage_key), Some("m/jan_1".into()));
        assert!(cache.get("b", "jan_1").is_none(), "another tenant never sees it");
        assert!(cache.get("a", "jan_2").is_none(), "pending rows are not cached");
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get("a", "jan_1").is_none(), "expired");
    }

    #[test]
    fn forgetting_drops_a_row_or_a_whole_tenant() {
        let cache = ReadyCache::new(Duration::from_secs(60)).expect("on");
        for (tenant, id) in [("a", "jan_1"), ("a", "jan_2"), ("b", "jan_3")] {
            cache.put(&media(tenant, id, MediaStatus::Ready));
        }
        cache.forget("a", "jan_1");
        assert!(cache.get("a", "jan_1").is_none() && cache.get("a", "jan_2").is_some());
        cache.forget_tenant("a");
        assert!(cache.get("a", "jan_2").is_none() && cache.get("b", "jan_3").is_some());
        assert!(ReadyCache::new(Duration::ZERO).is_none(), "a zero TTL turns caching off");
    }
}
