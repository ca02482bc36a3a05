//! Field cipher overhead: seal+open of a 64-byte field through `FieldCipher` against raw `aes-gcm`
//! doing encrypt+decrypt of the same 64 bytes with a random nonce:
//! - `raw_aes_gcm_same_aad_64B`: raw AES-GCM with the very AAD the field cipher authenticates, so the
//!   difference is the field cipher's own framing (header, version check, allocation);
//! - `raw_aes_gcm_no_aad_64B`: raw AES-GCM with no AAD, so the difference also shows what binding a
//!   value to its tenant/table/column/row costs in GHASH work.
//!
//! `scripts/bench-field-cipher` runs it and prints both ratios.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use media_api::crypto::envelope::DataKey;
use media_api::crypto::field::{aad_bytes, FieldCipher, FieldContext};
use rand::RngCore;

fn raw_seal_open(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = cipher.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad }).expect("seal");
    cipher.decrypt(&Nonce::from(nonce), Payload { msg: sealed.as_slice(), aad }).expect("open")
}

fn bench_field_cipher(c: &mut Criterion) {
    let key = DataKey::generate(1);
    let plaintext = [0x5au8; 64];
    let context = FieldContext {
        tenant: "tenant-0001",
        table: "media_objects",
        column: "filename",
        row_id: "jan_0123456789abcdefghjkmnpqrs",
    };
    let raw = Aes256Gcm::new(key.bytes().into());
    let aad = aad_bytes(&context, key.version);
    c.bench_function("raw_aes_gcm_no_aad_64B", |b| b.iter(|| raw_seal_open(&raw, black_box(&plaintext), &[])));
    c.bench_function("raw_aes_gcm_same_aad_64B", |b| b.iter(|| raw_seal_open(&raw, black_box(&plaintext), &aad)));
    let cipher = FieldCipher::new(&key);
    c.bench_function("field_cipher_seal_open_64B", |b| {
        b.iter(|| {
            let sealed = cipher.seal(&context, black_box(&plaintext[..]));
            cipher.open(&context, &sealed).expect("open")
        })
    });
}

criterion_group!(benches, bench_field_cipher);
criterion_main!(benches);
