//! Object cipher throughput:
//! - `object_cipher_stream_1MiB/sealer_opener`: 1 MiB sealed by the service's `Sealer` from 16 KiB
//!   pieces and opened by its `Opener`, each segment handed over in its own buffer, as the upload
//!   and download streams do (`media::sealed`): the cipher with its framing and copies;
//! - `aes_256_gcm_seal_64KiB/{aws_lc,ring,rustcrypto}`: one 64 KiB segment sealed in place by each
//!   AEAD alone — aws-lc's (`crypto::object::gcm`, what segments use), ring's and RustCrypto's
//!   `Aes256Gcm` (what they used before).
//!
//! `cargo bench --bench object_cipher`; figures in `docs/performance.md`.

use aes_gcm::aead::{AeadInPlace, KeyInit, Nonce};
use aes_gcm::Aes256Gcm;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use media_api::crypto::envelope::DataKey;
use media_api::crypto::object::gcm::LcAes256Gcm;
use media_api::crypto::object::{span, ObjectCipher, ObjectHeader, Opener, Sealer, HEADER_LEN, SEGMENT_LEN};

const OBJECT: usize = 1024 * 1024;
const PIECE: usize = 16 * 1024;

/// Seals `plain` in pieces, then opens what came out; returns the plaintext bytes opened.
fn stream_seal_open(key: &DataKey, context: &[&[u8]], plain: &[u8]) -> usize {
    let cipher = ObjectCipher::new_object(key, context);
    let header = ObjectHeader::parse(cipher.header()).expect("header");
    let mut sealer = Sealer::new(cipher);
    let mut sealed = Vec::new();
    for piece in plain.chunks(PIECE) {
        let mut out = Vec::new();
        sealer.push(piece, &mut out).expect("seal");
        sealed.push(out);
    }
    let mut out = Vec::new();
    sealer.finish(&mut out).expect("seal");
    sealed.push(out);
    let span = span(0..plain.len() as u64, plain.len() as u64).expect("span");
    let mut opener = Opener::new(ObjectCipher::existing(key, context, &header).expect("key"), &span);
    let mut opened = 0;
    let mut skip = HEADER_LEN as usize;
    for piece in &sealed {
        let taken = skip.min(piece.len());
        skip -= taken;
        let mut out = Vec::new();
        opener.push(&piece[taken..], &mut out).expect("open");
        opened += out.len();
    }
    let mut out = Vec::new();
    opener.finish(&mut out).expect("open");
    opened + out.len()
}

fn bench_object_cipher(c: &mut Criterion) {
    let plain = vec![0x5au8; OBJECT];
    let key = DataKey::generate(1);
    let context: [&[u8]; 2] = [b"tenant-0001", b"objects/0123456789abcdef"];
    let mut group = c.benchmark_group("object_cipher_stream_1MiB");
    group.throughput(Throughput::Bytes(OBJECT as u64));
    group.bench_function("sealer_opener", |b| b.iter(|| stream_seal_open(&key, &context, black_box(&plain))));
    group.finish();

    let mut group = c.benchmark_group("aes_256_gcm_seal_64KiB");
    group.throughput(Throughput::Bytes(SEGMENT_LEN));
    let mut segment = vec![0x5au8; SEGMENT_LEN as usize];
    let nonce = Nonce::<Aes256Gcm>::default();
    let ours = LcAes256Gcm::new(&[1u8; 32]);
    group
        .bench_function("aws_lc", |b| b.iter(|| ours.encrypt_in_place_detached(&nonce, b"h", black_box(&mut segment))));
    let ring = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &[1u8; 32]).expect("a 32-byte key"),
    );
    group.bench_function("ring", |b| {
        b.iter(|| {
            let nonce = ring::aead::Nonce::assume_unique_for_key([0u8; 12]);
            ring.seal_in_place_separate_tag(nonce, ring::aead::Aad::from(b"h"), black_box(&mut segment[..]))
        })
    });
    let rust = Aes256Gcm::new(&[1u8; 32].into());
    group.bench_function("rustcrypto", |b| {
        b.iter(|| rust.encrypt_in_place_detached(&nonce, b"h", black_box(&mut segment)))
    });
    group.finish();
}

criterion_group!(benches, bench_object_cipher);
criterion_main!(benches);
