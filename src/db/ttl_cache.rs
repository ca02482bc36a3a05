//! A short-lived, bounded, in-process cache. The media repository keeps decrypted *ready* rows in
//! one, so the hot read paths
//! (presign, resolve, download) of an ID read again within seconds skip the database round trip
//! and the row decryption. LLM chat clients resend the whole conversation every turn, so the same
//! IDs are resolved over and over.
//!
//! Bounded in time (`MEDIA_RECORD_CACHE_TTL`, default 5 s; 0 turns it off) and size
//! ([`MAX_ENTRIES`]). Expired entries are not only refused but dropped: the first access after each
//! TTL period drops the generation put two periods ago (`Generations`), so the cache holds what
//! was put in the last two periods (before, they stayed until the cache was full: every row read
//! in a busy day, up to the cap, each with its decrypted fields). The media repository keys it by
//! id (unique across tenants) and serves an entry only to the tenant of its row. Deleting a media
//! or shredding a tenant in this process drops its entries at once; in *another* process
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

/// Most entries held; past it the older generation is dropped, and if that is not enough, all.
pub const MAX_ENTRIES: usize = 100_000;

/// Values by key, each served for `ttl` after it was put (see the module docs).
#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    entries: Mutex<Generations<K, V>>,
}

type Map<K, V> = HashMap<K, (Instant, V)>;

/// Entries in two generations: `fresh` takes what is put in the current period, `older` what was
/// put in the one before. When a period ends the older generation is dropped whole and `fresh`
/// becomes it — in constant time under the lock, the entries freed after it is released — so an
/// entry is held at most two periods, and served only for `ttl` after it was put.
#[derive(Debug)]
struct Generations<K, V> {
    fresh: Map<K, V>,
    older: Map<K, V>,
    /// When the current period ends; `None` for a TTL too long to add to a clock reading (never).
    turn_at: Option<Instant>,
}

impl<K: Eq + Hash, V> Generations<K, V> {
    /// Ends the period if it is over: returns the generation dropped, to be freed after the lock.
    fn turn_if_due(&mut self, ttl: Duration, now: Instant) -> Option<Map<K, V>> {
        if self.turn_at.is_some_and(|at| now >= at) {
            self.turn_at = now.checked_add(ttl);
            return Some(std::mem::replace(&mut self.older, std::mem::take(&mut self.fresh)));
        }
        None
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<&(Instant, V)>
    where
        K: Borrow<Q>,
    {
        self.fresh.get(key).or_else(|| self.older.get(key))
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache keeping entries for `ttl`; `None` when `ttl` is zero (caching off).
    pub fn new(ttl: Duration) -> Option<Self> {
        let entries =
            Generations { fresh: HashMap::new(), older: HashMap::new(), turn_at: Instant::now().checked_add(ttl) };
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
        let (found, _dropped) = {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let dropped = entries.turn_if_due(self.ttl, now);
            let found = entries.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl);
            (found.map(|(_, value)| value.clone()), dropped)
        };
        found
    }

    /// Remembers a value from now on.
    pub fn put(&self, key: K, value: V) {
        self.put_at(key, value, Instant::now());
    }

    fn put_at(&self, key: K, value: V, now: Instant) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = [entries.turn_if_due(self.ttl, now), None, None];
        if entries.fresh.len() + entries.older.len() >= MAX_ENTRIES {
            dropped[1] = Some(std::mem::take(&mut entries.older));
            if entries.fresh.len() >= MAX_ENTRIES {
                dropped[2] = Some(std::mem::take(&mut entries.fresh));
            }
        }
        let replaced = entries.older.remove(&key);
        entries.fresh.insert(key, (now, value));
        drop(entries);
        drop((dropped, replaced));
    }

    /// Forgets one entry.
    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.fresh.remove(key);
        entries.older.remove(key);
    }

    /// Forgets every entry for which `keep` (given its key and value) is false.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.fresh.retain(|key, (_, value)| keep(key, value));
        entries.older.retain(|key, (_, value)| keep(key, value));
    }

    /// Entries held (fresh or not yet dropped).
    #[cfg(test)]
    fn held(&self) -> usize {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.fresh.len() + entries.older.len()
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
        assert_eq!(cache.held(), 1, "the expired entries were dropped");
    }

    #[test]
    fn expired_entries_are_dropped_within_two_ttls_not_only_when_full() {
        let ttl = Duration::from_secs(5);
        let cache: TtlCache<usize, usize> = TtlCache::new(ttl).expect("on");
        let start = Instant::now();
        for i in 0..1000 {
            cache.put_at(i, i, start);
        }
        cache.put_at(1000, 1, start + ttl / 2);
        assert_eq!(cache.held(), 1001, "nothing has expired yet");
        // One period later they move to the older generation: still served while fresh enough.
        cache.put_at(1001, 2, start + ttl + ttl / 4);
        assert_eq!(cache.get_at(&1000, start + ttl + ttl / 4), Some(1), "served for its whole TTL");
        assert_eq!(cache.get_at(&0, start + ttl + ttl / 4), None, "expired: refused");
        assert_eq!(cache.held(), 1002, "one turn drops nothing put in the period before");
        // The next access after a second period drops them: not only refused, gone.
        assert_eq!(cache.get_at(&1001, start + ttl * 3), None);
        assert_eq!(cache.held(), 1, "only the entry put in the last period is left");
        assert_eq!(cache.get_at(&1001, start + ttl * 3 + ttl), None);
        assert_eq!(cache.held(), 0);
        cache.put_at(7, 7, start + ttl * 4);
        assert_eq!(cache.get_at(&7, start + ttl * 4), Some(7), "the cache works on after turns");
    }

    #[test]
    fn a_ttl_too_long_for_the_clock_never_turns_and_never_panics() {
        let cache: TtlCache<usize, usize> = TtlCache::new(Duration::MAX).expect("on");
        let now = Instant::now();
        cache.put_at(1, 1, now);
        assert_eq!(cache.get_at(&1, now + Duration::from_secs(86_400)), Some(1));
    }
}
