//! Data protection: the key hierarchy of DESIGN §5.
//!
//! ```text
//! KEK keyring (Fernet, id → key, one primary)          keyring.rs
//!   └─ wraps ─► tenant DEK v1, v2, … (32 random bytes)  envelope.rs
//!                 └─ AES-256-GCM ─► encrypted columns   field.rs
//!                 └─ HKDF per object ─► STREAM segments   object.rs (media bytes, DESIGN §9)
//!   └─ wraps ─► tenant index key (HMAC-SHA256)          blind_index.rs
//!                 └─ audit pseudonyms; the system's one keys the audit chain   audit_mac.rs
//! link signing key ─ HKDF ─► boxes inside signed links  sealed_box.rs (what an encrypted object's link names)
//! ```
//!
//! Everything here is pure computation over keys held in memory; the tables that store wrapped keys
//! and the caches in front of them build on it. [`dev_keys`] creates the key files of the dev profile.

pub mod audit_mac;
pub mod blind_index;
pub mod dev_keys;
pub mod envelope;
pub mod field;
pub mod keyring;
pub mod object;
pub mod sealed_box;

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The keyring could not be loaded or is malformed.
    #[error("keyring: {0}")]
    Keyring(String),
    /// A wrapped key names a master key the keyring does not hold.
    #[error("no master key with id {0:?} in the keyring")]
    UnknownKek(String),
    /// A ciphertext or wrapped key failed authentication: tampered, truncated, moved to another
    /// row/column/tenant, or made under another key. Never answered with a wrong value.
    #[error("data integrity check failed: the stored value does not authenticate in this place")]
    Integrity,
    /// A wrapped key decrypted but belongs to another tenant, purpose or version.
    #[error("a wrapped key does not belong to this tenant, purpose and version")]
    KeyMismatch,
}

impl CryptoError {
    /// The reason without the variant's prefix (for messages that name their own source).
    pub fn reason(&self) -> String {
        match self {
            Self::Keyring(reason) => reason.clone(),
            other => other.to_string(),
        }
    }
}
