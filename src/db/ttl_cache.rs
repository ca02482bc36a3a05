//! A short-lived, bounded, in-process cache. The media repository keeps decrypted *ready* rows in
//! one, so the hot read paths
//! (presign, resolve, download) of an ID read again within seconds skip the database round trip
//! and the row decryption. LLM chat clients resend the whole conversation every turn, so the same
//! IDs are resolved over and over.
//!
//! Bounded in time (`MEDIA_RECORD_CACHE_TTL`, default 5 s; 0 turns it off) and size
//! ([`MAX_ENTRIES`]). Expired entries are not only refused but dropped: the first access after each
//! TTL period sweeps them out, so the cache holds what was put in the last two periods (before,
//! they stayed until the cache was full: every row read in a busy day, up to the cap, each with its
//! decrypted fields). The media repository keys it by id (unique across tenants) and serves an
//! entry only to the tenant of its row. Deleting a
//! media or shredding a tenant in this process drops its entries at once; in *another* process
//! (a second replica, `media-api tenant shred`, `media-api sweep`) the change is seen here within
//! the TTL — a presigned URL issued in that window points at an object that is already gone
//! (S3 answers 404), and the decrypted fields (filename, storage key) stay in this process's
//! memory until the first access of the cache after two TTLs (on Postgres the invalidation
//! listener drops them at once). Operators who cannot accept that set the TTL to 0.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most entries held; past it expired entries are dropped, and if that is not enough, all.
pub const MAX_ENTRIES: usize = 100_000;

/// Values by key, each served for `ttl` after it was put (see the module docs).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<Entries<K, V>>,
}

/// The map and when its expired entries are next swept out.
#[derive(Debug)]
struct Entries<K, V> {
    map: HashMap<K, (Instant, V)>,
    next_sweep: Instant,
}

impl<K: Eq + Hash, V> Entries<K, V> {
    /// Drops the expired entries when a TTL has passed since the last sweep.
    fn sweep_if_due(&mut self, ttl: Duration, now: Instant) {
        if now >= self.next_sweep {
            self.map.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            self.next_sweep = now + ttl;
        }
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache keeping entries for `ttl`; `None` when `ttl` is zero (caching off).
    pub fn new(ttl: Duration) -> Option<Self> {
        let entries = Entries { map: HashMap::new(), next_sweep: Instant::now() + ttl };
        (!ttl.is_zero()).then(|| Self { ttl, entries: Mutex::new(entries) })
    }

    /// The value, when present and fresh.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.get_at(key, Instant::now())
    }

    fn get_at<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.sweep_if_due(self.ttl, now);
        let (at, value) = entries.map.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| value.clone())
    }

    /// Remembers a value from now on.
    pub fn put(&self, key: K, value: V) {
        self.put_at(key, value, Instant::now());
    }

    fn put_at(&self, key: K, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.sweep_if_due(self.ttl, now);
        if entries.map.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.map.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if entries.map.len() >= MAX_ENTRIES {
                entries.map.clear();
            }
        }
        entries.map.insert(key, (now, value));
    }

    /// Forgets one entry.
    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).map.remove(key);
    }

    /// Forgets every entry for which `keep` (given its key and value) is false.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).map.retain(|key, (_, value)| keep(key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_served_until_their_ttl() {
        let cache: TtlCache<(String, String), u32> = TtlCache::new(Duration::from_millis(50)).expect("on");
        let start = Instant::now();
        let key = ("a".to_owned(), "jan_1".to_owned());
        cache.put_at(key.clone(), 7, start);
        assert_eq!(cache.get_at(&key, start + Duration::from_millis(49)), Some(7));
        assert_eq!(cache.get_at(&("b".to_owned(), "jan_1".to_owned()), start), None, "another key never sees it");
        assert_eq!(cache.get_at(&key, start + Duration::from_millis(60)), None, "expired");
    }

    #[test]
    fn forgetting_drops_one_entry_or_every_matching_one() {
        let cache: TtlCache<(String, String), u32> = TtlCache::new(Duration::from_secs(60)).expect("on");
        for (tenant, id) in [("a", "jan_1"), ("a", "jan_2"), ("b", "jan_3")] {
            cache.put((tenant.to_owned(), id.to_owned()), 1);
        }
        let key = |t: &str, i: &str| (t.to_owned(), i.to_owned());
        cache.remove(&key("a", "jan_1"));
        assert!(cache.get(&key("a", "jan_1")).is_none() && cache.get(&key("a", "jan_2")).is_some());
        cache.retain(|(t, _), _| t != "a");
        assert!(cache.get(&key("a", "jan_2")).is_none() && cache.get(&key("b", "jan_3")).is_some());
        assert!(TtlCache::<u8, u8>::new(Duration::ZERO).is_none(), "a zero TTL turns caching off");
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let cache: TtlCache<usize, usize> = TtlCache::new(Duration::from_secs(1)).expect("on");
        let start = Instant::now();
        for i in 0..MAX_ENTRIES {
            cache.put_at(i, i, start);
        }
        let later = start + Duration::from_secs(2);
        cache.put_at(MAX_ENTRIES, 1, later);
        assert_eq!(cache.get_at(&MAX_ENTRIES, later), Some(1));
        assert_eq!(cache.entries.lock().unwrap().map.len(), 1, "the expired entries were dropped");
    }

    #[test]
    fn expired_entries_are_swept_out_once_a_ttl_has_passed_not_only_when_full() {
        let ttl = Duration::from_secs(5);
        let cache: TtlCache<usize, usize> = TtlCache::new(ttl).expect("on");
        let start = Instant::now();
        for i in 0..1000 {
            cache.put_at(i, i, start);
        }
        let held = |c: &TtlCache<usize, usize>| c.entries.lock().unwrap().map.len();
        cache.put_at(1000, 1, start + ttl / 2);
        assert_eq!(held(&cache), 1001, "nothing has expired yet");
        // A read after two TTLs (no put since) drops every expired entry, the one it asks for too.
        assert_eq!(cache.get_at(&1000, start + ttl * 2), None);
        assert_eq!(held(&cache), 0, "the expired entries are gone, not only refused");
        cache.put_at(7, 7, start + ttl * 2);
        assert_eq!(cache.get_at(&7, start + ttl * 2), Some(7), "the cache works on after a sweep");
    }
}
