//! AES-256-GCM for the object cipher's segments: aws-lc's implementation (already linked as the
//! S3 client's rustls provider; stitched AES-NI/VAES + CLMUL assembly, AVX-512 where the CPU has
//! it) behind RustCrypto's [`AeadInPlace`], so `aead::stream::StreamBE32` builds its STREAM nonces
//! over it unchanged. On this project's hardware it seals and opens 64 KiB segments several times
//! faster than `aes_gcm::Aes256Gcm`, and faster than ring's (`cargo bench --bench object_cipher`,
//! figures in `docs/performance.md`), which is what keeps encrypted transfers near plain ones.
//!
//! The bytes are AES-256-GCM's own: the tests seal and open the same segments with both and
//! compare. Unlike `aes-gcm` with its `zeroize` feature, aws-lc-rs does not promise to wipe the
//! expanded key when it is dropped; it is a per-object key (HKDF of the DEK, which is zeroized),
//! held only while that object streams.

use aes_gcm::aead::consts::{U0, U12, U16};
use aes_gcm::aead::{AeadCore, AeadInPlace, Error, Nonce, Tag};
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce as LcNonce, UnboundKey, AES_256_GCM};

/// One AES-256-GCM key (aws-lc's).
pub struct LcAes256Gcm(LessSafeKey);

impl LcAes256Gcm {
    /// The cipher of a 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        Self(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key")))
    }
}

fn nonce(nonce: &Nonce<LcAes256Gcm>) -> LcNonce {
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(nonce);
    // STREAM gives every segment of an object its own nonce, and every object its own key.
    LcNonce::assume_unique_for_key(bytes)
}

impl AeadCore for LcAes256Gcm {
    type NonceSize = U12;
    type TagSize = U16;
    type CiphertextOverhead = U0;
}

impl AeadInPlace for LcAes256Gcm {
    fn encrypt_in_place_detached(
        &self,
        nonce_bytes: &Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
    ) -> aes_gcm::aead::Result<Tag<Self>> {
        let tag = self.0.seal_in_place_separate_tag(nonce(nonce_bytes), Aad::from(associated_data), buffer);
        let tag = tag.map_err(|_| Error)?;
        let mut out = Tag::<Self>::default();
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    fn decrypt_in_place_detached(
        &self,
        nonce_bytes: &Nonce<Self>,
        associated_data: &[u8],
        buffer: &mut [u8],
        tag: &Tag<Self>,
    ) -> aes_gcm::aead::Result<()> {
        let aad = Aad::from(associated_data);
        let opened = self.0.open_in_place_separate_tag(nonce(nonce_bytes), aad, tag, buffer);
        opened.map(|_| ()).map_err(|_| Error)
    }
}

#[cfg(test)]
mod tests {
    use aes_gcm::aead::KeyInit;
    use aes_gcm::Aes256Gcm;

    use super::*;

    fn nonce_of(byte: u8) -> Nonce<LcAes256Gcm> {
        let mut nonce = Nonce::<LcAes256Gcm>::default();
        nonce.fill(byte);
        nonce
    }

    #[test]
    fn seals_the_same_bytes_as_rustcrypto_and_each_opens_the_others() {
        let key = [7u8; 32];
        let (ours, rust) = (LcAes256Gcm::new(&key), Aes256Gcm::new_from_slice(&key).unwrap());
        for len in [0usize, 1, 15, 16, 17, 4096, 65_536] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let nonce = nonce_of(len as u8);
            let ad = b"header";
            let (mut a, mut b) = (plain.clone(), plain.clone());
            let tag_a = ours.encrypt_in_place_detached(&nonce, ad, &mut a).unwrap();
            let tag_b = rust.encrypt_in_place_detached(&nonce, ad, &mut b).unwrap();
            assert_eq!((&a, &tag_a[..]), (&b, &tag_b[..]), "{len}");
            let mut opened = a.clone();
            ours.decrypt_in_place_detached(&nonce, ad, &mut opened, &tag_b).unwrap();
            assert_eq!(opened, plain);
            rust.decrypt_in_place_detached(&nonce, ad, &mut b, &tag_a).unwrap();
            assert_eq!(b, plain);
        }
    }

    #[test]
    fn a_changed_byte_tag_nonce_or_header_does_not_open() {
        let ours = LcAes256Gcm::new(&[9u8; 32]);
        let nonce = nonce_of(1);
        let mut sealed = vec![5u8; 1000];
        let tag = ours.encrypt_in_place_detached(&nonce, b"h", &mut sealed).unwrap();
        let mut flipped = sealed.clone();
        flipped[999] ^= 1;
        assert!(ours.decrypt_in_place_detached(&nonce, b"h", &mut flipped, &tag).is_err());
        let mut bad_tag = tag;
        bad_tag[0] ^= 1;
        assert!(ours.decrypt_in_place_detached(&nonce, b"h", &mut sealed.clone(), &bad_tag).is_err());
        let other = nonce_of(2);
        assert!(ours.decrypt_in_place_detached(&other, b"h", &mut sealed.clone(), &tag).is_err());
        assert!(ours.decrypt_in_place_detached(&nonce, b"H", &mut sealed.clone(), &tag).is_err());
        assert!(ours.decrypt_in_place_detached(&nonce, b"h", &mut sealed, &tag).is_ok());
    }
}
