//! Small authenticated boxes under a key derived from a secret held elsewhere (the link signing
//! key): HKDF-SHA256 of the secret with a purpose string gives an AES-256-GCM key, and each box is
//! a random 96-bit nonce followed by the ciphertext and tag. The caller's associated data binds a
//! box to its place, so a box moved elsewhere does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CryptoError;

const NONCE_LEN: usize = 12;

/// An AES-256-GCM key for boxes of one purpose.
pub struct BoxKey(Aes256Gcm);

impl std::fmt::Debug for BoxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxKey([REDACTED])")
    }
}

impl BoxKey {
    /// The key of boxes for `purpose` under `secret`.
    pub fn derive(secret: &[u8], purpose: &[u8]) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(None, secret).expand(purpose, key.as_mut()).expect("32 bytes is a valid HKDF output");
        Self(Aes256Gcm::new_from_slice(key.as_ref()).expect("a 32-byte key"))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encrypts any message of this size");
        [nonce.as_slice(), &sealed].concat()
    }

    /// The plaintext of a box sealed for `aad`; anything else is [`CryptoError::Integrity`].
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Integrity);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Integrity)?;
        self.0.decrypt(&Nonce::from(nonce), Payload { msg: body, aad }).map_err(|_| CryptoError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_opens_only_under_its_key_purpose_and_place() {
        let key = BoxKey::derive(b"secret", b"purpose");
        let sealed = key.seal(b"here", b"payload");
        assert_eq!(key.open(b"here", &sealed).unwrap(), b"payload");
        assert!(key.open(b"there", &sealed).is_err(), "moved elsewhere");
        assert!(BoxKey::derive(b"secret", b"other").open(b"here", &sealed).is_err(), "another purpose");
        assert!(BoxKey::derive(b"other", b"purpose").open(b"here", &sealed).is_err(), "another secret");
        let mut flipped = sealed.clone();
        flipped[15] ^= 1;
        assert!(key.open(b"here", &flipped).is_err(), "tampered");
        assert!(key.open(b"here", &sealed[..11]).is_err(), "cut");
        assert_ne!(key.seal(b"here", b"payload"), sealed, "fresh nonces");
    }
}
