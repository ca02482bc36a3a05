//! The audit log's keyed primitives: the chain MAC and the pseudonyms of actors and media IDs.
//!
//! - **Chain MAC.** `mac = HMAC-SHA256(chain key, "media-api/audit/chain/v1" ‖ prev ‖ fields…)`,
//!   every field length-prefixed. The chain key is the audit key of the system (wrapped under a
//!   KEK like every tenant key), so database access alone can neither recompute a link after an
//!   edit nor forge a new tail.
//! - **Pseudonyms.** `HMAC-SHA256(key, "media-api/audit/<kind>/v1" ‖ value)`, the first 16 bytes in
//!   hex, prefixed with the kind (`caller:`, `media:`, `address:`). Actors and media IDs of a
//!   tenant's events are pseudonymized under that tenant's index key: the same caller gives the same
//!   pseudonym within the tenant (events can be correlated, and an operator holding the keys can
//!   compute the pseudonym of a known subject to look it up), two tenants give unrelated ones, and
//!   once the tenant is shredded (its keys destroyed) nobody can link them back.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::envelope::DataKey;

const CHAIN_DOMAIN: &[u8] = b"media-api/audit/chain/v1";
/// Bytes of a pseudonym (before hex): 128 bits, no collisions in any realistic log.
const PSEUDONYM_BYTES: usize = 16;

/// What a pseudonym stands for (its prefix and its HMAC domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudonymKind {
    /// A caller's subject (`sub` claim).
    Caller,
    /// A media ID.
    Media,
    /// A client address (system chain: refused requests).
    Address,
}

impl PseudonymKind {
    fn label(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Media => "media",
            Self::Address => "address",
        }
    }
}

/// The pseudonym of `value` under `key`, e.g. `caller:3f9c…` (16 bytes of HMAC in hex).
pub fn pseudonym(key: &DataKey, kind: PseudonymKind, value: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(b"media-api/audit/");
    mac.update(kind.label().as_bytes());
    mac.update(b"/v1\0");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{}:{}", kind.label(), hex::encode(&digest[..PSEUDONYM_BYTES]))
}

/// What stands in for a pseudonym whose key is gone (a shredded tenant's event): links to no one.
pub fn unlinkable(kind: PseudonymKind) -> String {
    format!("{}:unlinkable", kind.label())
}

/// The MAC of one chain link: the previous link's MAC and the event's fields, in order. `None`
/// fields are encoded apart from every string (so `None` and `""` differ).
pub fn chain_mac(key: &DataKey, prev: &[u8], fields: &[Option<&str>]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(CHAIN_DOMAIN);
    mac.update(&(prev.len() as u32).to_be_bytes());
    mac.update(prev);
    for field in fields {
        match field {
            None => mac.update(&[0]),
            Some(text) => {
                mac.update(&[1]);
                mac.update(&(text.len() as u32).to_be_bytes());
                mac.update(text.as_bytes());
            }
        }
    }
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_unrelated_across_keys_and_kinds() {
        let (acme, globex) = (DataKey::generate(1), DataKey::generate(1));
        let a = pseudonym(&acme, PseudonymKind::Caller, "alice");
        assert_eq!(a, pseudonym(&acme, PseudonymKind::Caller, "alice"));
        assert!(a.starts_with("caller:") && a.len() == "caller:".len() + 32, "{a}");
        assert_ne!(a, pseudonym(&globex, PseudonymKind::Caller, "alice"));
        assert_ne!(a, pseudonym(&acme, PseudonymKind::Caller, "bob"));
        let as_media = pseudonym(&acme, PseudonymKind::Media, "alice");
        assert_ne!(a["caller:".len()..], as_media["media:".len()..]);
    }

    #[test]
    fn the_chain_mac_covers_every_field_its_order_and_the_key() {
        let key = DataKey::generate(1);
        let base = chain_mac(&key, &[7; 32], &[Some("a"), None, Some("bc")]);
        assert_eq!(base, chain_mac(&key, &[7; 32], &[Some("a"), None, Some("bc")]));
        assert_ne!(base, chain_mac(&DataKey::generate(1), &[7; 32], &[Some("a"), None, Some("bc")]));
        assert_ne!(base, chain_mac(&key, &[8; 32], &[Some("a"), None, Some("bc")]));
        assert_ne!(base, chain_mac(&key, &[7; 32], &[Some("a"), Some(""), Some("bc")]));
        assert_ne!(base, chain_mac(&key, &[7; 32], &[Some("ab"), None, Some("c")]));
        assert_ne!(base, chain_mac(&key, &[7; 32], &[Some("bc"), None, Some("a")]));
    }
}
