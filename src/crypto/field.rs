//! The field cipher: AES-256-GCM encryption of one column value under a tenant DEK.
//!
//! Stored form: `[format u8 = 1][dek_version u32 BE][nonce 12][ciphertext ‖ tag 16]`. The additional
//! authenticated data binds the value to its place — format, tenant, table, column, row id and DEK
//! version, each length-prefixed so no two places share an AAD — so a ciphertext copied to another
//! row, column or tenant fails to decrypt ([`CryptoError::Integrity`]) instead of decrypting to a
//! value that does not belong there. Nonces are 96 random bits from a CSPRNG (`rand`'s thread RNG,
//! ChaCha12 seeded and periodically reseeded from the OS); a DEK is rolled long before 2^32
//! encryptions, which keeps the chance of a nonce collision negligible.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use rand::RngCore;
use zeroize::Zeroizing;

use super::envelope::DataKey;
use super::CryptoError;

/// The only format so far.
pub const FORMAT_V1: u8 = 1;
/// Nonce length (96 bits).
pub const NONCE_LEN: usize = 12;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// GCM tag length.
pub const TAG_LEN: usize = 16;

/// Where a value lives; part of its authenticated data.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Table name.
    pub table: &'a str,
    /// Column name.
    pub column: &'a str,
    /// Row id.
    pub row_id: &'a str,
}

/// An AES-256-GCM cipher for one DEK version (the key schedule is zeroized on drop).
pub struct FieldCipher {
    version: u32,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldCipher").field("version", &self.version).finish_non_exhaustive()
    }
}

/// The DEK version a stored value was sealed under (to pick the key that opens it).
pub fn sealed_version(sealed: &[u8]) -> Result<u32, CryptoError> {
    if sealed.len() < HEADER_LEN + TAG_LEN || sealed[0] != FORMAT_V1 {
        return Err(CryptoError::Integrity);
    }
    Ok(u32::from_be_bytes([sealed[1], sealed[2], sealed[3], sealed[4]]))
}

/// Room for the AAD of ordinary contexts without a heap allocation.
const AAD_STACK: usize = 256;

/// Calls `f` with the AAD of `context` at `version`: each part length-prefixed (u32 BE).
fn with_aad<T>(context: &FieldContext<'_>, version: u32, f: impl FnOnce(&[u8]) -> T) -> T {
    let version = version.to_be_bytes();
    let parts: [&[u8]; 6] = [
        &[FORMAT_V1],
        context.tenant.as_bytes(),
        context.table.as_bytes(),
        context.column.as_bytes(),
        context.row_id.as_bytes(),
        &version,
    ];
    let len: usize = parts.iter().map(|p| 4 + p.len()).sum();
    let write = |out: &mut [u8]| {
        let mut at = 0;
        for part in parts {
            out[at..at + 4].copy_from_slice(&(part.len() as u32).to_be_bytes());
            out[at + 4..at + 4 + part.len()].copy_from_slice(part);
            at += 4 + part.len();
        }
    };
    if len <= AAD_STACK {
        let mut stack = [0u8; AAD_STACK];
        write(&mut stack[..len]);
        f(&stack[..len])
    } else {
        let mut heap = vec![0u8; len];
        write(&mut heap);
        f(&heap)
    }
}

/// The additional authenticated data of a value in `context` sealed under `version` (the exact bytes
/// the cipher authenticates; benchmarks use it to give raw AES-GCM the same work).
pub fn aad_bytes(context: &FieldContext<'_>, version: u32) -> Vec<u8> {
    with_aad(context, version, <[u8]>::to_vec)
}

impl FieldCipher {
    /// A cipher for `key`.
    pub fn new(key: &DataKey) -> Self {
        Self { version: key.version, cipher: Aes256Gcm::new(key.bytes().into()) }
    }

    /// The DEK version this cipher seals under.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Encrypts `plaintext` for `context` (one allocation: the stored value, encrypted in place).
    pub fn seal(&self, context: &FieldContext<'_>, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_V1);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = with_aad(context, self.version, |aad| {
            self.cipher.encrypt_in_place_detached(&Nonce::from(nonce), aad, &mut out[HEADER_LEN..])
        })
        .expect("AES-GCM encryption cannot fail for inputs below 64 GiB");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts a value sealed for `context` under this cipher's DEK version.
    pub fn open(&self, context: &FieldContext<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed_version(sealed)? != self.version {
            return Err(CryptoError::Integrity);
        }
        let nonce: [u8; NONCE_LEN] = sealed[5..HEADER_LEN].try_into().map_err(|_| CryptoError::Integrity)?;
        let (body, tag) = sealed[HEADER_LEN..].split_at(sealed.len() - HEADER_LEN - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| CryptoError::Integrity)?;
        let mut plain = Zeroizing::new(body.to_vec());
        with_aad(context, self.version, |aad| {
            self.cipher.decrypt_in_place_detached(&Nonce::from(nonce), aad, &mut plain, &Tag::from(tag))
        })
        .map_err(|_| CryptoError::Integrity)?;
        Ok(plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: FieldContext<'static> =
        FieldContext { tenant: "acme", table: "media_objects", column: "filename", row_id: "jan_1" };

    #[test]
    fn a_value_opens_only_where_it_was_sealed() {
        let cipher = FieldCipher::new(&DataKey::generate(1));
        let sealed = cipher.seal(&HERE, b"holiday.png");
        assert_eq!(sealed.len(), HEADER_LEN + 11 + TAG_LEN);
        assert_eq!(sealed_version(&sealed).unwrap(), 1);
        assert_eq!(cipher.open(&HERE, &sealed).unwrap().as_slice(), b"holiday.png");
        for elsewhere in [
            FieldContext { tenant: "acme2", ..HERE },
            FieldContext { table: "other", ..HERE },
            FieldContext { column: "uploader", ..HERE },
            FieldContext { row_id: "jan_2", ..HERE },
            // Moving bytes between fields must not line up: "ab"+"c" vs "a"+"bc".
            FieldContext { tenant: "acmem", table: "edia_objects", ..HERE },
        ] {
            assert!(matches!(cipher.open(&elsewhere, &sealed), Err(CryptoError::Integrity)), "{elsewhere:?}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails() {
        let cipher = FieldCipher::new(&DataKey::generate(7));
        let sealed = cipher.seal(&HERE, b"0123456789abcdef0123456789abcdef");
        for byte in 0..sealed.len() {
            for bit in [0x01u8, 0x80] {
                let mut tampered = sealed.clone();
                tampered[byte] ^= bit;
                assert!(cipher.open(&HERE, &tampered).is_err(), "flip of byte {byte} went unnoticed");
            }
        }
        assert!(cipher.open(&HERE, &sealed[..sealed.len() - 1]).is_err());
        assert!(cipher.open(&HERE, &[]).is_err());
    }

    #[test]
    fn another_key_of_the_same_version_cannot_open_it() {
        let sealed = FieldCipher::new(&DataKey::generate(1)).seal(&HERE, b"x");
        assert!(FieldCipher::new(&DataKey::generate(1)).open(&HERE, &sealed).is_err());
    }

    #[test]
    fn nonces_differ_between_seals_of_the_same_value() {
        let cipher = FieldCipher::new(&DataKey::generate(1));
        assert_ne!(cipher.seal(&HERE, b"same"), cipher.seal(&HERE, b"same"));
    }
}
