//! The repository's cache of decrypted *ready* rows: what a read may take from it, when a read's
//! result may go in (the gate is open and nothing was forgotten since the read began), and
//! forgetting (a delete here, or one another process announced).
//!
//! Rows are keyed by id alone (ids are unique across tenants: a unique index) and a hit is served
//! only when the row's tenant is the reader's, so a lookup allocates no key; the row is shared
//! (`Arc`) with the reader, who copies it only to own it ([`MediaRepo::get`]; presign and download
//! read it in place through [`MediaRepo::get_shared`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::model::{MediaStatus, StoredMedia};
use super::MediaRepo;

impl MediaRepo {
    /// Drops every cached row of `tenant` (after a shred in this process).
    pub fn forget_tenant(&self, tenant: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.retain(|_, media| media.record.tenant_id != tenant);
        }
    }

    /// Drops every cached row (the invalidation listener reconnected).
    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.retain(|_, _| false);
        }
    }

    /// A cached row, while the gate is open.
    pub(super) fn cached(&self, tenant: &str, id: &str) -> Option<Arc<StoredMedia>> {
        let cache = self.cache.as_ref().filter(|_| self.gate.is_open())?;
        cache.get(id).filter(|media| media.record.tenant_id == tenant)
    }

    /// The generation to pass to [`Self::remember`] for rows about to be read.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches a row read at `generation`, unless something was forgotten since (the row may be the
    /// one, deleted by another process after this read). The generation is looked at again after
    /// the row went in: a forget that came between the first look and the insert (it bumps the
    /// generation, then removes) would otherwise find nothing to remove and leave the stale row
    /// for the TTL; so the row is taken out again (at worst a fresher copy, a cache miss).
    pub(super) fn remember(&self, media: &Arc<StoredMedia>, generation: u64) {
        match &self.cache {
            Some(cache) if is_cacheable(media) && self.gate.is_open() && self.generation() == generation => {
                cache.put(media.record.id.clone(), media.clone());
                if self.generation() != generation {
                    cache.remove(media.record.id.as_str());
                }
            }
            _ => {}
        }
    }

    /// Drops a cached row (deleted here or, said the listener, in another process); the id alone
    /// names it (unique across tenants).
    pub fn forget(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.remove(id);
        }
    }
}

/// Only ready rows are cached: a pending one changes when its upload completes.
fn is_cacheable(media: &StoredMedia) -> bool {
    media.record.status == MediaStatus::Ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::media::MediaRecord;

    fn media(status: MediaStatus) -> StoredMedia {
        let record = MediaRecord {
            id: "jan_1".into(),
            tenant_id: "a".into(),
            status,
            mime: "image/png".into(),
            size: 1,
            filename: None,
            uploader: "u".into(),
            user_hint: None,
            storage_key: "m/jan_1".into(),
            object_dek_version: None,
            sha256: Some([0; 32]),
            metadata: None,
            retention_until: None,
        };
        StoredMedia { record, dek_version: 1, created_at: chrono::Utc::now() }
    }

    #[test]
    fn ready_rows_are_cached_and_pending_rows_are_not() {
        assert!(is_cacheable(&media(MediaStatus::Ready)));
        assert!(!is_cacheable(&media(MediaStatus::Pending)), "pending rows are not cached");
    }
}
