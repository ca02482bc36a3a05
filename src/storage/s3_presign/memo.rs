//! URLs signed within the current second, handed out again for the same inputs.
//!
//! A SigV4 URL is a function of its inputs (key, forced headers, lifetime), the credentials and the
//! signing time in whole seconds (`X-Amz-Date`). So a media presigned again within the same second,
//! with the same credentials, gets the very URL a new signature would give, without signing: a hot
//! media (an avatar in every payload a resolve rewrites, an image a whole chat opens) is signed
//! about once a second instead of once per request.
//!
//! A fixed number of slots, each holding one URL; a URL takes the slot its inputs hash to, replacing
//! what was there. The slot hash is foldhash, seeded per process but not from the OS's random
//! source: whoever could steer collisions would only make presigns miss the memo and be signed
//! (an entry is used only when every input matches), as asking for more than [`SLOTS`] media or
//! other `?ttl=` values already does. SipHash was about 980 of a cached presign's instructions
//! here, foldhash about 200 (`scripts/profile-presign`). An
//! entry is used only when its inputs, second and credentials generation all match; stale entries
//! are simply never matched again. Memory is bounded by [`SLOTS`] URLs.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::Duration;

use super::SignedUrl;

/// How many URLs are kept at most.
pub(super) const SLOTS: usize = 256;

/// What a URL was signed for and with.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Inputs<'a> {
    /// Unix time of the signing, whole seconds.
    pub second: i64,
    /// Which credentials signed it ([`super::GetSigner`] counts every new set).
    pub generation: u64,
    pub key: &'a str,
    pub content_type: &'a str,
    pub content_disposition: &'a str,
    /// The lifetime asked for (the URL may carry less: see `within_lifetime`).
    pub ttl: Duration,
}

struct Entry {
    second: i64,
    generation: u64,
    key: String,
    content_type: String,
    content_disposition: String,
    ttl: Duration,
    signed: SignedUrl,
}

impl Entry {
    fn matches(&self, inputs: &Inputs<'_>) -> bool {
        self.second == inputs.second
            && self.generation == inputs.generation
            && self.ttl == inputs.ttl
            && self.key == inputs.key
            && self.content_type == inputs.content_type
            && self.content_disposition == inputs.content_disposition
    }
}

/// The slots (see the module docs).
pub(super) struct Memo {
    hasher: foldhash::fast::RandomState,
    slots: Box<[Mutex<Option<Entry>>]>,
}

impl Default for Memo {
    fn default() -> Self {
        Self { hasher: Default::default(), slots: (0..SLOTS).map(|_| Mutex::new(None)).collect() }
    }
}

/// Where a URL's inputs are kept (hashed once per URL, for [`Memo::get`] and [`Memo::put`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot(usize);

impl Memo {
    /// The slot of these inputs (the second and generation are not hashed: a URL of a later
    /// second replaces the earlier one in the same slot).
    pub fn slot(&self, inputs: &Inputs<'_>) -> Slot {
        let hash = self.hasher.hash_one((inputs.key, inputs.content_type, inputs.content_disposition, inputs.ttl));
        Slot((hash % SLOTS as u64) as usize)
    }

    /// The URL signed for exactly these inputs, if it is still kept.
    pub fn get(&self, slot: Slot, inputs: &Inputs<'_>) -> Option<SignedUrl> {
        let slot = self.slots[slot.0].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().filter(|entry| entry.matches(inputs)).map(|entry| entry.signed.clone())
    }

    /// Keeps `signed`, the URL signed for `inputs`, in their slot.
    pub fn put(&self, slot: Slot, inputs: &Inputs<'_>, signed: &SignedUrl) {
        let entry = Entry {
            second: inputs.second,
            generation: inputs.generation,
            key: inputs.key.to_owned(),
            content_type: inputs.content_type.to_owned(),
            content_disposition: inputs.content_disposition.to_owned(),
            ttl: inputs.ttl,
            signed: signed.clone(),
        };
        // The entry it replaces is freed after the lock is released.
        let _replaced = self.slots[slot.0].lock().unwrap_or_else(std::sync::PoisonError::into_inner).replace(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> SignedUrl {
        SignedUrl { url: text.into(), ttl: Duration::from_secs(60), expires_at: chrono::DateTime::UNIX_EPOCH }
    }

    fn inputs(second: i64, key: &str) -> Inputs<'_> {
        Inputs {
            second,
            generation: 1,
            key,
            content_type: "image/png",
            content_disposition: "inline",
            ttl: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_url_is_handed_out_only_for_the_same_inputs_second_and_credentials() {
        let memo = Memo::default();
        let get = |inputs: &Inputs<'_>| memo.get(memo.slot(inputs), inputs);
        memo.put(memo.slot(&inputs(100, "a")), &inputs(100, "a"), &url("A"));
        assert_eq!(get(&inputs(100, "a")), Some(url("A")));
        assert_eq!(get(&inputs(101, "a")), None, "another second");
        assert_eq!(get(&inputs(100, "b")), None, "another key");
        for other in [
            Inputs { generation: 2, ..inputs(100, "a") },
            Inputs { content_type: "image/gif", ..inputs(100, "a") },
            Inputs { content_disposition: "attachment", ..inputs(100, "a") },
            Inputs { ttl: Duration::from_secs(61), ..inputs(100, "a") },
        ] {
            assert_eq!(get(&other), None, "{other:?}");
        }
    }

    #[test]
    fn at_most_one_url_per_slot_is_kept_and_the_latest_wins() {
        let memo = Memo::default();
        let keys: Vec<String> = (0..4 * SLOTS).map(|n| format!("key-{n}")).collect();
        let get = |inputs: &Inputs<'_>| memo.get(memo.slot(inputs), inputs);
        for key in &keys {
            memo.put(memo.slot(&inputs(7, key)), &inputs(7, key), &url(key));
        }
        let kept = keys.iter().filter(|key| get(&inputs(7, key)).is_some()).count();
        let used = memo.slots.iter().filter(|slot| slot.lock().expect("slot").is_some()).count();
        assert!(kept <= SLOTS && kept == used, "kept {kept}, slots used {used}");
        assert_eq!(get(&inputs(7, &keys[4 * SLOTS - 1])), Some(url(&keys[4 * SLOTS - 1])), "the last put is kept");
    }
}
