//! The HMAC key of the service's own signed links (`MEDIA_FS_SIGNING_KEY`, or the dev profile's
//! generated `fs-link.key`): 32 bytes written as 64 hex characters, checked once at start-up.

use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox};

/// What a link key must look like, for the one-line start-up error.
pub const LINK_KEY_RULE: &str = "expected 64 hex characters (32 bytes)";

/// The 32-byte HMAC key of the links; zeroized on drop, never printed.
pub struct LinkKey(SecretBox<[u8; 32]>);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey([REDACTED])")
    }
}

impl LinkKey {
    /// A fresh random key from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// Parses the textual form: 64 hex characters.
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(Self(SecretBox::new(Box::new(bytes))))
    }

    /// The textual form (64 hex characters), for writing a generated key to its file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.expose_secret())
    }
}

impl LinkKey {
    /// The key bytes (for the HMAC).
    pub fn bytes(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_hex_and_never_print() {
        let key = LinkKey::generate();
        let again = LinkKey::parse(&key.to_hex()).unwrap();
        assert_eq!(key.to_hex(), again.to_hex());
        assert!(LinkKey::parse("abcd").is_none());
        assert_eq!(format!("{key:?}"), "LinkKey([REDACTED])");
    }
}
