//! Object cipher throughput: sealing and opening 1 MiB (16 segments of 64 KiB) through the
//! service's `Sealer`/`Opener` (STREAM over ring's AES-256-GCM, `crypto::object::gcm`) against
//! the same STREAM over RustCrypto's `aes_gcm::Aes256Gcm`, which the object cipher used before.
//! Criterion prints MiB/s for each; the ratio between them is what moving to ring bought.
//!
//! `cargo bench --bench object_cipher`

use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use media_api::crypto::envelope::DataKey;
use media_api::crypto::object::{open_object, seal_object, SEGMENT_LEN};

const OBJECT: usize = 1024 * 1024;

/// Seals and opens `plain` segment by segment with STREAM over RustCrypto's AES-256-GCM.
fn rustcrypto_seal_open(stream: &StreamBE32<Aes256Gcm>, plain: &[u8]) -> usize {
    let segments = plain.chunks(SEGMENT_LEN as usize);
    let count = segments.len();
    let mut opened = 0;
    for (index, segment) in segments.enumerate() {
        let mut buffer = segment.to_vec();
        let last = index + 1 == count;
        stream.encrypt_in_place(index as u32, last, b"header", &mut buffer).expect("seal");
        stream.decrypt_in_place(index as u32, last, b"header", &mut buffer).expect("open");
        opened += buffer.len();
    }
    opened
}

fn bench_object_cipher(c: &mut Criterion) {
    let plain = vec![0x5au8; OBJECT];
    let key = DataKey::generate(1);
    let context: [&[u8]; 2] = [b"tenant-0001", b"objects/0123456789abcdef"];
    let mut group = c.benchmark_group("object_cipher_seal_open_1MiB");
    group.throughput(Throughput::Bytes(OBJECT as u64));
    group.bench_function("service_ring", |b| {
        b.iter(|| {
            let sealed = seal_object(&key, &context, black_box(&plain)).expect("seal");
            open_object(&key, &context, &sealed, None).expect("open").len()
        })
    });
    let aead = Aes256Gcm::new(key.bytes().into());
    let stream = StreamBE32::from_aead(aead, [3u8; 7].as_slice().into());
    group.bench_function("stream_rustcrypto_aes_gcm", |b| b.iter(|| rustcrypto_seal_open(&stream, black_box(&plain))));
    group.finish();
}

criterion_group!(benches, bench_object_cipher);
criterion_main!(benches);
