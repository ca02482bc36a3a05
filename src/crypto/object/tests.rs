use super::*;

const CONTEXT: &[&[u8]] = &[b"acme", b"m/0123456789abcdef"];

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Seals `plain` in pieces of `piece` bytes.
fn seal(dek: &DataKey, plain: &[u8], piece: usize) -> Vec<u8> {
    let mut sealer = Sealer::new(ObjectCipher::new_object(dek, CONTEXT));
    let mut out = Vec::new();
    for chunk in plain.chunks(piece.max(1)) {
        sealer.push(chunk, &mut out).unwrap();
    }
    sealer.finish(&mut out).unwrap();
    out
}

fn open_range(dek: &DataKey, sealed: &[u8], range: Range<u64>) -> Result<Vec<u8>, CryptoError> {
    open_object(dek, CONTEXT, sealed, Some(range))
}

fn open_all(dek: &DataKey, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    open_object(dek, CONTEXT, sealed, None)
}

const SEG: usize = SEGMENT_LEN as usize;

#[test]
fn objects_of_every_shape_round_trip_whatever_the_piece_sizes() {
    let dek = DataKey::generate(3);
    for len in [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17] {
        let plain = plaintext(len);
        for piece in [1000, SEG, 200_000] {
            let sealed = seal(&dek, &plain, piece);
            assert_eq!(sealed.len() as u64, sealed_len(len as u64), "len {len}");
            assert_eq!(plain_len(sealed.len() as u64).unwrap(), len as u64);
            assert_eq!(open_all(&dek, &sealed).unwrap(), plain, "len {len}, piece {piece}");
        }
    }
}

#[test]
fn any_range_opens_from_its_own_segments_only() {
    let dek = DataKey::generate(1);
    let plain = plaintext(3 * SEG + 100);
    let sealed = seal(&dek, &plain, 7000);
    for (start, end) in [(0, 1), (SEG - 1, SEG + 1), (SEG, 2 * SEG), (5, 3 * SEG + 100), (3 * SEG + 99, 3 * SEG + 100)]
    {
        let range = start as u64..end as u64;
        let span = span(range.clone(), plain.len() as u64).unwrap();
        let segments = (span.sealed.end - span.sealed.start).div_ceil(SEALED_SEGMENT_LEN);
        assert!(segments <= (end - start).div_ceil(SEG) as u64 + 1, "{range:?} fetches {segments} segments");
        assert_eq!(open_range(&dek, &sealed, range).unwrap(), &plain[start..end], "{start}..{end}");
    }
}

#[test]
fn tampered_objects_never_open_to_wrong_bytes() {
    let dek = DataKey::generate(2);
    let plain = plaintext(3 * SEG + 10);
    let sealed = seal(&dek, &plain, SEG);
    let seg = |i: usize| HEADER_LEN as usize + i * SEALED_SEGMENT_LEN as usize;
    let refused = |bytes: &[u8], why: &str| {
        assert!(open_all(&dek, bytes).is_err(), "{why} opened");
    };

    for at in [0, 5, 9, 45, 47, seg(0) + 3, seg(1) + 70_000, sealed.len() - 1] {
        let mut flipped = sealed.clone();
        flipped[at] ^= 0x40;
        refused(&flipped, &format!("a byte flipped at {at}"));
    }
    let dropped = [&sealed[..seg(1)], &sealed[seg(2)..]].concat();
    refused(&dropped, "a dropped segment");
    let swapped = [&sealed[..seg(1)], &sealed[seg(2)..seg(3)], &sealed[seg(1)..seg(2)], &sealed[seg(3)..]].concat();
    refused(&swapped, "reordered segments");
    refused(&sealed[..seg(3)], "the tail cut at a segment boundary");
    refused(&sealed[..sealed.len() - 5], "the tail cut inside a segment");
    let extended = [&sealed[..], &sealed[seg(1)..seg(2)]].concat();
    refused(&extended, "an extra segment");

    // A segment of another object of the same tenant and key version.
    let other = seal(&dek, &plain, SEG);
    let foreign = [&sealed[..seg(1)], &other[seg(1)..seg(2)], &sealed[seg(2)..]].concat();
    refused(&foreign, "a segment of another object");
    // The right bytes in another place, or under another key.
    let header = ObjectHeader::parse(&sealed).unwrap();
    let elsewhere = ObjectCipher::existing(&dek, &[b"acme", b"m/elsewhere"], &header).unwrap();
    let mut segment = sealed[seg(0)..seg(1)].to_vec();
    assert!(elsewhere.open_segment(0, false, &mut segment).is_err(), "opened under another context");
    assert!(open_all(&DataKey::generate(2), &sealed).is_err(), "opened under another DEK");
    let wrong_version = ObjectCipher::existing(&DataKey::generate(5), CONTEXT, &header);
    assert!(matches!(wrong_version, Err(CryptoError::KeyMismatch)));
}

#[test]
fn headers_and_lengths_no_object_has_are_refused() {
    let dek = DataKey::generate(9);
    let sealed = seal(&dek, b"hello", 5);
    let header = ObjectHeader::parse(&sealed).unwrap();
    assert_eq!(header.dek_version, 9);
    assert_eq!(ObjectHeader::parse(&header.to_bytes()).unwrap(), header);
    for (at, value) in [(0, b'X'), (3, 2), (47, 1)] {
        let mut bad = sealed.clone();
        bad[at] = value;
        assert!(ObjectHeader::parse(&bad).is_err(), "byte {at} = {value}");
    }
    assert!(ObjectHeader::parse(&sealed[..47]).is_err());
    for sealed in [0, 63, HEADER_LEN + SEALED_SEGMENT_LEN + 5, HEADER_LEN + SEALED_SEGMENT_LEN + TAG_LEN] {
        assert!(plain_len(sealed).is_err(), "{sealed} bytes");
    }
    assert_eq!(plain_len(HEADER_LEN + TAG_LEN).unwrap(), 0);
    assert_eq!(plain_len(HEADER_LEN + SEALED_SEGMENT_LEN).unwrap(), SEGMENT_LEN);
    assert_eq!(plain_len(HEADER_LEN + SEALED_SEGMENT_LEN + TAG_LEN + 1).unwrap(), SEGMENT_LEN + 1);
}

#[test]
fn two_objects_of_the_same_bytes_share_nothing_but_their_length() {
    let dek = DataKey::generate(1);
    let plain = plaintext(SEG + 5);
    let (a, b) = (seal(&dek, &plain, SEG), seal(&dek, &plain, SEG));
    assert_eq!(a.len(), b.len());
    assert_ne!(a[8..47], b[8..47], "fresh salt and nonce prefix");
    let plain_windows: std::collections::HashSet<&[u8]> = plain.windows(16).collect();
    assert!(a[HEADER_LEN as usize..].windows(16).all(|w| !plain_windows.contains(w)), "no plaintext in the clear");
}

#[test]
fn the_opener_takes_sealed_bytes_in_pieces_of_any_size() {
    let dek = DataKey::generate(4);
    let plain = plaintext(2 * SEG + 3);
    let sealed = seal(&dek, &plain, SEG);
    let header = ObjectHeader::parse(&sealed).unwrap();
    for piece in [1, 15, 16, 17, SEALED_SEGMENT_LEN as usize, 100_000] {
        let whole = span(0..plain.len() as u64, plain.len() as u64).unwrap();
        let mut opener = Opener::new(ObjectCipher::existing(&dek, CONTEXT, &header).unwrap(), &whole);
        let mut out = Vec::new();
        for chunk in sealed[HEADER_LEN as usize..].chunks(piece) {
            opener.push(chunk, &mut out).unwrap();
        }
        opener.finish(&mut out).unwrap();
        assert_eq!(out, plain, "pieces of {piece}");
    }
}

#[test]
fn ranges_outside_the_object_and_ambiguous_contexts_are_refused() {
    #[allow(clippy::reversed_empty_ranges)]
    let cases = [(5..5, 10), (6..5, 10), (0..11, 10), (u64::MAX - 1..u64::MAX, 10), (0..1, 0)];
    for (range, plain) in cases {
        assert!(span(range.clone(), plain).is_err(), "{range:?} of {plain}");
    }
    assert!(span(0..0, 0).is_ok(), "the empty object's one empty segment");
    let dek = DataKey::generate(1);
    let sealed = seal_object(&dek, &[b"ab", b"c"], b"bytes").unwrap();
    assert!(open_object(&dek, &[b"a", b"bc"], &sealed, None).is_err(), "the parts are length-prefixed");
    assert_eq!(open_object(&dek, &[b"ab", b"c"], &sealed, None).unwrap(), b"bytes");
}

/// The stored format, frozen: an object sealed by an independent implementation (Python's
/// `cryptography`: HKDF-SHA256 and AES-GCM, the STREAM nonces and header written out by hand) must be
/// what this one seals and must open here, whatever AES-GCM implementation is underneath. The
/// expected digest came from this script:
///
/// ```text
/// dek, salt, prefix = bytes([0x11]*32), bytes([0x22]*32), bytes([0x33]*7)
/// context = [b"acme", b"m/0123456789abcdef"]
/// header = b"JMO" + bytes([1]) + struct.pack(">I", 3) + salt + prefix + b"\0"
/// info = b"media-api object v1\0" + b"".join(struct.pack(">I", len(p)) + p for p in context)
/// key = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dek)
/// plain = bytes((i * 31 % 251) for i in range(70_000))
/// segs = [plain[i:i+65536] for i in range(0, len(plain), 65536)]
/// out = header + b"".join(AESGCM(key).encrypt(prefix + struct.pack(">I", n)
///       + bytes([n == len(segs) - 1]), s, header) for n, s in enumerate(segs))
/// print(len(out), hashlib.sha256(out).hexdigest())
/// ```
#[test]
fn an_object_sealed_by_an_independent_implementation_is_sealed_alike_and_opens() {
    use sha2::Digest;
    let dek = DataKey::from_bytes(3, [0x11; 32]);
    let mut header_bytes = [0u8; HEADER_LEN as usize];
    header_bytes[..4].copy_from_slice(b"JMO\x01");
    header_bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    header_bytes[8..40].fill(0x22);
    header_bytes[40..47].fill(0x33);
    let header = ObjectHeader::parse(&header_bytes).unwrap();
    let plain = plaintext(70_000);
    let mut sealer = Sealer::new(ObjectCipher::existing(&dek, CONTEXT, &header).unwrap());
    let mut sealed = Vec::new();
    sealer.push(&plain, &mut sealed).unwrap();
    sealer.finish(&mut sealed).unwrap();
    assert_eq!(sealed.len(), 70_080);
    let digest: [u8; 32] = sha2::Sha256::digest(&sealed).into();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "40ab1b66947b3d15af52fdef0170c7ed6934009d2dc22b80c3067b250d1a8f79");
    assert_eq!(open_all(&dek, &sealed).unwrap(), plain);
}
