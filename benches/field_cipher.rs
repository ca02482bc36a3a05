//! Field cipher overhead: seal+open of a 64-byte field through `FieldCipher` (framing, AAD of tenant,
//! table, column, row id and version, random nonce) against raw `aes-gcm` doing the same
//! encrypt+decrypt of the same 64 bytes with a random nonce and no AAD.
//!
//! `scripts/bench-field-cipher` runs it and prints the throughput ratio (target ≥ 0.8).

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use media_api::crypto::envelope::DataKey;
use media_api::crypto::field::{FieldCipher, FieldContext};
use rand::RngCore;

fn bench_field_cipher(c: &mut Criterion) {
    let key = DataKey::generate(1);
    let plaintext = [0x5au8; 64];
    let raw = Aes256Gcm::new(key.bytes().into());
    c.bench_function("raw_aes_gcm_seal_open_64B", |b| {
        b.iter(|| {
            let mut nonce = [0u8; 12];
            rand::thread_rng().fill_bytes(&mut nonce);
            let sealed = raw.encrypt(&Nonce::from(nonce), black_box(&plaintext[..])).expect("seal");
            raw.decrypt(&Nonce::from(nonce), sealed.as_slice()).expect("open")
        })
    });
    let cipher = FieldCipher::new(&key);
    let context = FieldContext {
        tenant: "tenant-0001",
        table: "media_objects",
        column: "filename",
        row_id: "jan_0123456789abcdefghjkmnpqrs",
    };
    c.bench_function("field_cipher_seal_open_64B", |b| {
        b.iter(|| {
            let sealed = cipher.seal(&context, black_box(&plaintext[..]));
            cipher.open(&context, &sealed).expect("open")
        })
    });
}

criterion_group!(benches, bench_field_cipher);
criterion_main!(benches);
