//! The blind index: per-tenant dedup lookups without storing a plaintext content hash.
//!
//! `content_mac = HMAC-SHA256(tenant index key, "media-api/content/v1" ‖ sha256(bytes))`. Equal bytes
//! in one tenant give equal MACs (an index on `(tenant_id, content_mac)` finds the rows that share
//! one object, see `db::media::group`); the same bytes in two tenants give unrelated MACs, and
//! without the index key a MAC says nothing about the content (no lookup of known files' hashes).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::envelope::DataKey;

const DOMAIN: &[u8] = b"media-api/content/v1";

/// The content MAC of a file whose SHA-256 is `sha256`, under a tenant's index key.
pub fn content_mac(index_key: &DataKey, sha256: &[u8; 32]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(index_key.bytes()).expect("HMAC takes any key length");
    mac.update(DOMAIN);
    mac.update(sha256);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn equal_in_a_tenant_unrelated_across_tenants_and_not_the_plain_hash() {
        let (tenant_a, tenant_b) = (DataKey::generate(1), DataKey::generate(1));
        let hash: [u8; 32] = Sha256::digest(b"the same bytes").into();
        let other: [u8; 32] = Sha256::digest(b"other bytes").into();
        assert_eq!(content_mac(&tenant_a, &hash), content_mac(&tenant_a, &hash));
        assert_ne!(content_mac(&tenant_a, &hash), content_mac(&tenant_b, &hash));
        assert_ne!(content_mac(&tenant_a, &hash), content_mac(&tenant_a, &other));
        assert_ne!(content_mac(&tenant_a, &hash), hash);
    }
}
