//! Envelope encryption of tenant keys: a 32-byte key (a DEK or a blind-index key) is wrapped as a
//! Fernet token under the primary KEK.
//!
//! The token's plaintext binds the key to its place: `"mak1" ‖ purpose ‖ version (u32 BE) ‖
//! tenant length (u32 BE) ‖ tenant ‖ key`. Unwrapping checks all three, so a wrapped key copied to
//! another tenant's row (or another version or purpose) is refused instead of silently used.

use rand::RngCore;
use zeroize::Zeroizing;

use super::keyring::Keyring;
use super::CryptoError;

const MAGIC: &[u8; 4] = b"mak1";
/// Length of every tenant key.
pub const KEY_LEN: usize = 32;

/// What a tenant key is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    /// Data-encryption key of the field cipher (rotated).
    Dek,
    /// Blind-index key for dedup lookups (rewrapped, never rotated).
    Index,
}

impl KeyPurpose {
    /// The value of the `purpose` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dek => "dek",
            Self::Index => "index",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Dek => 1,
            Self::Index => 2,
        }
    }
}

/// A tenant key in the clear, with its version; zeroized on drop, never printed.
pub struct DataKey {
    /// Version (1, 2, …) within the tenant and purpose.
    pub version: u32,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey").field("version", &self.version).finish_non_exhaustive()
    }
}

impl DataKey {
    /// A fresh key from the OS CSPRNG.
    pub fn generate(version: u32) -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(bytes.as_mut());
        Self { version, bytes }
    }

    /// A key of known bytes (known-answer tests).
    #[cfg(test)]
    pub(crate) fn from_bytes(version: u32, bytes: [u8; KEY_LEN]) -> Self {
        Self { version, bytes: Zeroizing::new(bytes) }
    }

    /// The key bytes (for the cipher or HMAC built on them).
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

/// A wrapped key as stored: the KEK that wraps it and the Fernet token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// Id of the master key in the keyring.
    pub kek_id: String,
    /// Fernet token (ASCII).
    pub token: String,
}

/// Where a wrapped key belongs.
#[derive(Debug, Clone, Copy)]
pub struct KeySlot<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// DEK or index key.
    pub purpose: KeyPurpose,
    /// Version within tenant and purpose.
    pub version: u32,
}

fn payload(slot: KeySlot<'_>, key: &[u8; KEY_LEN]) -> Zeroizing<Vec<u8>> {
    let tenant = slot.tenant.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(4 + 1 + 4 + 4 + tenant.len() + KEY_LEN));
    out.extend_from_slice(MAGIC);
    out.push(slot.purpose.tag());
    out.extend_from_slice(&slot.version.to_be_bytes());
    out.extend_from_slice(&(tenant.len() as u32).to_be_bytes());
    out.extend_from_slice(tenant);
    out.extend_from_slice(key);
    out
}

/// Wraps `key` for `slot` under the keyring's primary KEK.
pub fn wrap(keyring: &Keyring, slot: KeySlot<'_>, key: &DataKey) -> WrappedKey {
    let (kek_id, token) = keyring.wrap(&payload(slot, key.bytes()));
    WrappedKey { kek_id, token }
}

/// Unwraps a stored key, refusing one that does not belong to `slot`.
pub fn unwrap(keyring: &Keyring, slot: KeySlot<'_>, wrapped: &WrappedKey) -> Result<DataKey, CryptoError> {
    let plain = keyring.unwrap(&wrapped.kek_id, &wrapped.token)?;
    let expected_prefix = payload(slot, &[0u8; KEY_LEN]);
    let prefix_len = expected_prefix.len() - KEY_LEN;
    if plain.len() != expected_prefix.len() || plain[..prefix_len] != expected_prefix[..prefix_len] {
        return Err(CryptoError::KeyMismatch);
    }
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    bytes.copy_from_slice(&plain[prefix_len..]);
    Ok(DataKey { version: slot.version, bytes })
}

/// Re-wraps a stored key under the current primary KEK (KEK rotation; the key itself is unchanged).
pub fn rewrap(keyring: &Keyring, slot: KeySlot<'_>, wrapped: &WrappedKey) -> Result<WrappedKey, CryptoError> {
    let key = unwrap(keyring, slot, wrapped)?;
    Ok(wrap(keyring, slot, &key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(spec: &str) -> Keyring {
        Keyring::parse_env(spec).unwrap()
    }

    fn slot(tenant: &str, purpose: KeyPurpose, version: u32) -> KeySlot<'_> {
        KeySlot { tenant, purpose, version }
    }

    #[test]
    fn a_wrapped_key_unwraps_only_in_its_own_slot() {
        let keyring = ring(&format!("k1:{}", Keyring::generate_key()));
        let key = DataKey::generate(3);
        let wrapped = wrap(&keyring, slot("acme", KeyPurpose::Dek, 3), &key);
        let back = unwrap(&keyring, slot("acme", KeyPurpose::Dek, 3), &wrapped).unwrap();
        assert_eq!(back.bytes(), key.bytes());
        for other in
            [slot("acme2", KeyPurpose::Dek, 3), slot("acme", KeyPurpose::Index, 3), slot("acme", KeyPurpose::Dek, 4)]
        {
            assert!(matches!(unwrap(&keyring, other, &wrapped), Err(CryptoError::KeyMismatch)), "{other:?}");
        }
        // A tenant id that is a prefix of another cannot be confused with it (length-prefixed).
        let short = wrap(&keyring, slot("ac", KeyPurpose::Dek, 3), &key);
        assert!(unwrap(&keyring, slot("acme", KeyPurpose::Dek, 3), &short).is_err());
    }

    #[test]
    fn a_flipped_bit_in_the_token_fails_authentication() {
        let keyring = ring(&format!("k1:{}", Keyring::generate_key()));
        let wrapped = wrap(&keyring, slot("t", KeyPurpose::Dek, 1), &DataKey::generate(1));
        let mut bytes = wrapped.token.clone().into_bytes();
        let middle = bytes.len() / 2;
        bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
        let tampered = WrappedKey { token: String::from_utf8(bytes).unwrap(), ..wrapped };
        assert!(matches!(unwrap(&keyring, slot("t", KeyPurpose::Dek, 1), &tampered), Err(CryptoError::Integrity)));
    }

    #[test]
    fn rewrap_moves_a_key_to_the_new_primary_without_changing_it() {
        let (old, new) = (Keyring::generate_key(), Keyring::generate_key());
        let before = ring(&format!("old:{old}"));
        let key = DataKey::generate(1);
        let wrapped = wrap(&before, slot("t", KeyPurpose::Index, 1), &key);
        let during = ring(&format!("new:{new},old:{old}"));
        let moved = rewrap(&during, slot("t", KeyPurpose::Index, 1), &wrapped).unwrap();
        assert_eq!(moved.kek_id, "new");
        let after = ring(&format!("new:{new}"));
        assert_eq!(unwrap(&after, slot("t", KeyPurpose::Index, 1), &moved).unwrap().bytes(), key.bytes());
        assert!(matches!(unwrap(&after, slot("t", KeyPurpose::Index, 1), &wrapped), Err(CryptoError::UnknownKek(_))));
    }
}
