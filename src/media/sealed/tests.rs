use super::*;
use crate::crypto::envelope::DataKey;
use crate::crypto::object::{open_object, SEALED_SEGMENT_LEN};

const SEG: usize = SEGMENT_LEN as usize;
const CONTEXT: [&[u8]; 2] = [b"acme", b"m/0123"];

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 253) as u8).collect()
}

fn chunks(data: &[u8], size: usize) -> ByteStream {
    let items: Vec<Result<Bytes, std::io::Error>> =
        data.chunks(size.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    stream::iter(items).boxed()
}

async fn collect(mut body: ByteStream) -> (Vec<Bytes>, Option<std::io::Error>) {
    let (mut items, mut error) = (Vec::new(), None);
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => items.push(chunk),
            Err(err) => {
                error = Some(err);
                break;
            }
        }
    }
    assert!(body.next().await.is_none(), "a stream goes on after its error");
    (items, error)
}

fn sealing(dek: &DataKey) -> Sealing {
    Sealing { cipher: ObjectCipher::new_object(dek, &CONTEXT), dek_version: dek.version }
}

#[tokio::test]
async fn a_sealed_stream_opens_to_its_plaintext_whatever_the_chunks_and_holds_one_segment_at_a_time() {
    let dek = DataKey::generate(2);
    for len in [1, SEG - 1, SEG, 3 * SEG + 5] {
        let plain = plaintext(len);
        for chunk in [1000, SEG + 3, 5 * SEG] {
            let (pieces, error) = collect(sealing(&dek).seal(chunks(&plain, chunk))).await;
            assert!(error.is_none());
            assert!(pieces.iter().all(|p| p.len() <= (HEADER_LEN + SEALED_SEGMENT_LEN) as usize), "{len}/{chunk}");
            let sealed = pieces.concat();
            assert_eq!(sealed.len() as u64, object::sealed_len(len as u64));
            assert_eq!(open_object(&dek, &CONTEXT, &sealed, None).unwrap(), plain, "{len}/{chunk}");
        }
    }
}

#[tokio::test]
async fn a_failing_source_fails_the_sealed_stream() {
    let dek = DataKey::generate(1);
    let failing = stream::iter([Ok(Bytes::from(plaintext(2 * SEG))), Err(std::io::Error::other("client gone"))]);
    let (pieces, error) = collect(sealing(&dek).seal(failing.boxed())).await;
    assert_eq!(error.unwrap().to_string(), "client gone");
    assert_eq!(pieces.concat().len() as u64, HEADER_LEN + SEALED_SEGMENT_LEN, "the last segment is never sealed");
}

/// The plaintext `range` of `sealed` as [`open`] reads it: the span's bytes in chunks of `chunk`.
async fn open_range(dek: &DataKey, sealed: &[u8], plain: u64, range: std::ops::Range<u64>, chunk: usize) -> Vec<u8> {
    let span = object::span(range.clone(), plain).unwrap();
    let header = ObjectHeader::parse(sealed).unwrap();
    let opener = Opener::new(ObjectCipher::existing(dek, &CONTEXT, &header).unwrap(), &span);
    let body = chunks(&sealed[span.sealed.start as usize..span.sealed.end as usize], chunk);
    let (pieces, error) = collect(opened(body, opener, span.skip, range.end - range.start)).await;
    assert!(error.is_none(), "{range:?}: {error:?}");
    pieces.concat()
}

#[tokio::test]
async fn an_opened_range_is_exactly_the_plaintext_asked_for() {
    let dek = DataKey::generate(1);
    let plain = plaintext(3 * SEG + 100);
    let sealed = object::seal_object(&dek, &CONTEXT, &plain).unwrap();
    let len = plain.len() as u64;
    for (start, end) in [(0, len), (10, 20), (SEG as u64 - 3, SEG as u64 + 3), (2 * SEG as u64, len), (len - 1, len)] {
        for chunk in [7, SEG + 16, 1 << 20] {
            let got = open_range(&dek, &sealed, len, start..end, chunk).await;
            assert_eq!(got, &plain[start as usize..end as usize], "{start}..{end} in chunks of {chunk}");
        }
    }
}

#[tokio::test]
async fn a_tampered_segment_ends_the_stream_with_an_error_before_any_of_its_bytes() {
    let dek = DataKey::generate(1);
    // Four segments, the third damaged: one that is not the span's last, which waits for `finish`.
    let plain = plaintext(3 * SEG + 100);
    let mut sealed = object::seal_object(&dek, &CONTEXT, &plain).unwrap();
    sealed[(HEADER_LEN + 2 * SEALED_SEGMENT_LEN + 5) as usize] ^= 1;
    let span = object::span(0..plain.len() as u64, plain.len() as u64).unwrap();
    let header = ObjectHeader::parse(&sealed).unwrap();
    // However the store chunks its answer — the whole object at once on a busy machine — the
    // segments before the damaged one come out before the error.
    for chunk in [4096, SEALED_SEGMENT_LEN as usize + 1, 2 * SEALED_SEGMENT_LEN as usize + 6, 1 << 20] {
        let opener = Opener::new(ObjectCipher::existing(&dek, &CONTEXT, &header).unwrap(), &span);
        let body = chunks(&sealed[HEADER_LEN as usize..], chunk);
        let (pieces, error) = collect(opened(body, opener, 0, plain.len() as u64)).await;
        assert!(is_tampered(&error.expect("an error")), "chunks of {chunk}");
        let served = pieces.concat();
        assert_eq!(served.len(), 2 * SEG, "only the segments that authenticated, in chunks of {chunk}");
        assert_eq!(served, &plain[..2 * SEG], "chunks of {chunk}");
    }
}

#[tokio::test]
async fn reading_the_header_puts_back_what_follows_it() {
    let mut body = chunks(b"0123456789", 4);
    assert_eq!(read_exactly(&mut body, 6).await.unwrap(), &b"012345"[..]);
    let (rest, error) = collect(body).await;
    assert!(error.is_none());
    assert_eq!(rest.concat(), b"6789");
    let mut short = chunks(b"0123", 4);
    assert!(matches!(read_exactly(&mut short, 6).await, Err(MediaError::ObjectIntegrity)));
}
