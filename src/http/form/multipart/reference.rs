//! The multipart reader checked against multer, the general parser it replaced: the unit tests and
//! the `multipart` fuzz target (`fuzz_checks::multipart`) read the same bodies with both.

use bytes::Bytes;
use futures::StreamExt;

use super::{Multipart, PartHead, SourceError};

/// The boundary of every checked body.
pub const BOUNDARY: &str = "------------------------d74496d66958873e8b1c2a";

/// Every part of a form read by [`Multipart`] from `body` cut in chunks of `sizes` (cycled): its
/// head and whole body; or the error's text.
pub async fn ours(body: &[u8], sizes: &[usize]) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
    ours_with(body, sizes, BOUNDARY).await
}

/// [`ours`] with another boundary.
pub async fn ours_with(body: &[u8], sizes: &[usize], boundary: &str) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
    let body = Bytes::copy_from_slice(body);
    let mut chunks: Vec<Result<Bytes, SourceError>> = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < body.len() {
        let end = at.saturating_add(sizes[i % sizes.len()].max(1)).min(body.len());
        chunks.push(Ok(body.slice(at..end)));
        at = end;
        i += 1;
    }
    let mut form = Multipart::new(futures::stream::iter(chunks).boxed(), boundary, u64::MAX);
    let mut parts = Vec::new();
    while let Some(head) = form.next_part().await.map_err(|e| e.to_string())? {
        let mut data = Vec::new();
        while let Some(slice) = form.chunk().await.map_err(|e| e.to_string())? {
            assert!(!slice.is_empty(), "no empty slices");
            data.extend_from_slice(&slice);
        }
        parts.push((head, data));
    }
    Ok(parts)
}

/// The same as multer reads it.
pub async fn multer_reads(body: &[u8]) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
    multer_reads_with(body, BOUNDARY).await
}

/// [`multer_reads`] with another boundary.
pub async fn multer_reads_with(body: &[u8], boundary: &str) -> Result<Vec<(PartHead, Vec<u8>)>, String> {
    let body = Bytes::copy_from_slice(body);
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let mut parts = Vec::new();
    while let Some(field) = form.next_field().await.map_err(|e| e.to_string())? {
        let head = PartHead {
            name: field.name().map(str::to_owned),
            filename: field.file_name().map(str::to_owned),
            content_type: field.content_type().map(|m| m.to_string()),
        };
        parts.push((head, field.bytes().await.map_err(|e| e.to_string())?.to_vec()));
    }
    Ok(parts)
}

/// Arbitrary bytes: never a panic, never more data out than came in, the same parts however the
/// body is cut, and a form that multer reads is read too, and framed the same: the same parts with the same bytes.
/// (Names, filenames and types are left to the unit tests: what a malformed `Content-Disposition`
/// means is a guess each parser makes its own way.)
pub async fn check(body: &[u8]) {
    let sizes: Vec<usize> = body.iter().take(4).map(|b| usize::from(*b % 64) + 1).collect();
    let read = ours(body, if sizes.is_empty() { &[1] } else { &sizes }).await;
    assert_eq!(read, ours(body, &[usize::MAX]).await, "the same parts for any chunking");
    let expected = multer_reads(body).await;
    let Ok(parts) = read else {
        assert!(expected.is_err(), "refused what multer reads: {read:?} for {:?}", String::from_utf8_lossy(body));
        return;
    };
    assert!(parts.iter().map(|(_, data)| data.len()).sum::<usize>() <= body.len());
    if let Ok(expected) = expected {
        let framing =
            |parts: &[(PartHead, Vec<u8>)]| -> Vec<Vec<u8>> { parts.iter().map(|(_, d)| d.clone()).collect() };
        let body = String::from_utf8_lossy(body);
        assert_eq!(framing(&parts), framing(&expected), "multer frames it otherwise: {body:?}");
    }
}
