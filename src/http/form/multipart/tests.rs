use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng, SeedableRng};

use super::*;

use super::reference::{check, multer_reads, multer_reads_with, ours, ours_with, BOUNDARY};

/// `body` in chunks of the given sizes (cycled), as a source.
fn source(body: &[u8], sizes: &[usize]) -> BoxStream<'static, Result<Bytes, SourceError>> {
    let body = Bytes::copy_from_slice(body);
    let mut chunks = Vec::new();
    let (mut at, mut i) = (0, 0);
    while at < body.len() {
        let end = (at + sizes[i % sizes.len()]).min(body.len());
        chunks.push(Ok(body.slice(at..end)));
        at = end;
        i += 1;
    }
    futures::stream::iter(chunks).boxed()
}

fn form(parts: &[(&str, Option<&str>, &[u8])], preamble: &[u8]) -> Vec<u8> {
    let mut body = preamble.to_vec();
    for (i, (name, filename, data)) in parts.iter().enumerate() {
        let lead = if i == 0 && preamble.is_empty() { "" } else { "\r\n" };
        body.extend_from_slice(format!("{lead}--{BOUNDARY}\r\n").as_bytes());
        let filename = filename.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
        body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"{filename}\r\n").as_bytes());
        if filename.is_empty() {
            body.extend_from_slice(b"\r\n");
        } else {
            body.extend_from_slice(b"Content-Type: image/png\r\n\r\n");
        }
        body.extend_from_slice(data);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

#[tokio::test]
async fn reads_what_multer_reads_for_every_chunking() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Data full of near-delimiters: CR, CRLF, CRLF--, and the boundary's prefix.
    // (never followed by the boundary's last character: that would be a delimiter)
    let near = format!("\r\n--{}!", &BOUNDARY[..BOUNDARY.len() - 1]);
    let mut file = Vec::new();
    for i in 0..2_000 {
        match i % 5 {
            0 => file.push(b'\r'),
            1 => file.extend_from_slice(b"\r\n"),
            2 => file.extend_from_slice(b"\r\n--"),
            3 => file.extend_from_slice(near.as_bytes()),
            _ => file.extend((0..rng.gen_range(0..300)).map(|_| rng.gen::<u8>())),
        }
    }
    let cases = [
        form(&[("user_id", None, b"u-1"), ("file", Some("a.png"), &file)], b""),
        form(&[("file", Some("a \\\"b\\\".png"), &file)], b"a preamble\r\n"),
        form(&[("empty", None, b""), ("file", Some("x"), b"")], b""),
        form(&[("file", Some("x.png"), b"\r")], b""),
    ];
    for (n, body) in cases.iter().enumerate() {
        let expected = multer_reads(body).await.expect("multer reads the form");
        for sizes in [&[1usize][..], &[2], &[3, 70], &[47, 48, 49], &[4096], &[usize::MAX]] {
            assert_eq!(ours(body, sizes).await.as_ref(), Ok(&expected), "case {n}, chunks {sizes:?}");
        }
        for _ in 0..20 {
            let sizes: Vec<usize> = (0..8).map(|_| rng.gen_range(1..200)).collect();
            assert_eq!(ours(body, &sizes).await.as_ref(), Ok(&expected), "case {n}, chunks {sizes:?}");
        }
    }
}

#[tokio::test]
async fn a_file_arrives_as_slices_of_the_received_chunks() {
    let file = vec![b'x'; 300_000];
    let body = form(&[("file", Some("a.png"), &file)], b"");
    let source = Bytes::from(body);
    let start = source.as_ptr() as usize;
    let chunks: Vec<Result<Bytes, SourceError>> =
        [0..100_000, 100_000..200_000, 200_000..source.len()].into_iter().map(|r| Ok(source.slice(r))).collect();
    let mut form = Multipart::new(futures::stream::iter(chunks).boxed(), BOUNDARY, u64::MAX);
    form.next_part().await.expect("a part").expect("the file");
    let mut total = 0;
    while let Some(slice) = form.chunk().await.expect("data") {
        let at = slice.as_ptr() as usize;
        assert!(at >= start && at + slice.len() <= start + source.len(), "a slice of the received bytes, not a copy");
        total += slice.len();
    }
    assert_eq!(total, file.len());
}

#[tokio::test]
async fn malformed_and_oversized_bodies_are_refused() {
    let good = form(&[("file", Some("a.png"), b"data")], b"");
    let cut = &good[..good.len() - 10];
    assert_eq!(ours(cut, &[7]).await, Err("the body ends inside a part".into()));
    assert_eq!(ours(b"no boundary at all", &[5]).await, Err("the body ends inside a part".into()));
    let mut junk = format!("--{BOUNDARY}junk\r\n\r\n").into_bytes();
    junk.extend_from_slice(&good);
    assert_eq!(ours(&junk, &[9]).await, Err("a boundary is followed by other text on its line".into()));
    let mut endless = format!("--{BOUNDARY}\r\nX-Long: ").into_bytes();
    endless.extend(std::iter::repeat_n(b'a', HEADERS_MAX + 10));
    assert_eq!(ours(&endless, &[1000]).await, Err("a part's headers are longer than 8 KiB".into()));

    let mut form = Multipart::new(source(&good, &[10]), BOUNDARY, 50);
    let too_large = async {
        while form.next_part().await?.is_some() {
            while form.chunk().await?.is_some() {}
        }
        Ok::<_, FormError>(())
    };
    assert!(matches!(too_large.await, Err(FormError::TooLarge { max: 50 })));

    let text = form_text(&[("user_id", None, &[b'u'; 11])]);
    let mut form = Multipart::new(source(&text, &[3]), BOUNDARY, u64::MAX);
    form.next_part().await.expect("a part").expect("user_id");
    assert!(matches!(form.text(10).await, Err(FormError::TextTooLong { max: 10 })));
}

fn form_text(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    form(parts, b"")
}

#[test]
fn disposition_parameters_are_unquoted_and_unescaped() {
    let params = disposition_params(r#"form-data; name="file"; filename="a \"q\" \\ ;b.png"; x=tok ; Y = "v""#);
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(params, [("name", "file"), ("filename", r#"a "q" \ ;b.png"#), ("x", "tok"), ("Y", "v")]);
    assert_eq!(delimiter_start_at_end(b"abc\r\n-", b"\r\n--b"), 3);
    assert_eq!(delimiter_start_at_end(b"abc\r\nx", b"\r\n--b"), 0);
    assert_eq!(delimiter_start_at_end(b"\r", b"\r\n--b"), 1);
}

#[tokio::test]
async fn arbitrary_bytes_near_a_form_read_safely() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let good = form(&[("user_id", None, b"u"), ("file", Some("a.png"), b"\r\n--data\r")], b"pre");
    for _ in 0..2_000 {
        let mut body = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..body.len());
            match rng.gen_range(0..3) {
                0 => body[at] = rng.gen(),
                1 => body.truncate(at),
                _ => body.insert(at, b"\r\n-"[rng.gen_range(0..3)]),
            }
            if body.is_empty() {
                break;
            }
        }
        check(&body).await;
    }
}

#[tokio::test]
async fn a_file_part_ends_only_at_a_real_delimiter_and_the_first_name_wins() {
    // The boundary followed by other text inside the file: not its end, and not a silent cut.
    let body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; name=\"other\"\r\n\r\n\
         AAAA\r\n--{BOUNDARY}-not-a-delimiter\r\nBBBB\r\n--{BOUNDARY}--\r\n"
    );
    for sizes in [&[1usize][..], &[7], &[usize::MAX]] {
        let mut form = Multipart::new(source(body.as_bytes(), sizes), BOUNDARY, u64::MAX);
        let head = form.next_part().await.expect("a part").expect("the file");
        assert_eq!(head.name.as_deref(), Some("file"), "the first name wins");
        let mut read = Vec::new();
        let end = loop {
            match form.chunk().await {
                Ok(Some(slice)) => read.extend_from_slice(&slice),
                Ok(None) => break Ok(()),
                Err(err) => break Err(err.to_string()),
            }
        };
        assert_eq!(end, Err("a boundary is followed by other text on its line".into()), "chunks {sizes:?}");
        assert_eq!(read, b"AAAA", "what came before the bad line, and no more");
    }
}

/// Forms whose boundary is one or two characters (RFC 2046 allows 1 to 70), so that the data, the
/// headers and the delimiters are full of the boundary's characters; and malformed ones around
/// them: an empty header block, a body cut right after a delimiter, a delimiter followed by text.
#[tokio::test]
async fn short_boundaries_frame_parts_as_multer_does_for_every_chunking() {
    let mut compared = 0;
    for boundary in ["a", "-", "ab", "--", "x-"] {
        let delimiter = format!("--{boundary}");
        // The boundary's characters everywhere, but never CRLF followed by the delimiter.
        let data_like = format!("{boundary}{boundary}\r\n-{boundary}\r-{delimiter}\n{delimiter}-");
        let bodies = [
            // A regular form: a text part and a file full of the boundary's characters.
            format!(
                "{delimiter}\r\nContent-Disposition: form-data; name=\"{boundary}\"\r\n\r\n{boundary}-{boundary}\r\n\
                 {delimiter}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{boundary}.png\"\r\n\
                 Content-Type: image/png\r\n\r\n{data_like}\r\n{delimiter}--\r\n"
            ),
            // No header at all before the part's data.
            format!("{delimiter}\r\n\r\n{data_like}\r\n{delimiter}--"),
            // Cut right after a delimiter, and right after the first one.
            format!("{delimiter}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n{delimiter}"),
            delimiter.clone(),
            // A delimiter followed by other text on its line; a closing delimiter with an epilogue.
            format!("{delimiter}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n{delimiter}zz\r\n"),
            format!("{delimiter}\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nv\r\n{delimiter}--{data_like}"),
        ];
        for (i, body) in bodies.iter().enumerate() {
            let body = body.as_bytes();
            let whole = ours_with(body, &[usize::MAX], boundary).await;
            if i == 0 {
                let parts = whole.as_ref().expect("the regular form is read");
                let data: Vec<&[u8]> = parts.iter().map(|(_, d)| d.as_slice()).collect();
                let first = format!("{boundary}-{boundary}");
                assert_eq!(data, [first.as_bytes(), data_like.as_bytes()], "{boundary:?}: both parts whole");
            }
            for sizes in [&[1usize][..], &[2, 3], &[5, 1, 7]] {
                assert_eq!(ours_with(body, sizes, boundary).await, whole, "chunks {sizes:?}, boundary {boundary:?}");
            }
            let framing = |parts: &Vec<(PartHead, Vec<u8>)>| parts.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>();
            let text = String::from_utf8_lossy(body);
            match (&whole, multer_reads_with(body, boundary).await) {
                (Ok(parts), Ok(expected)) => assert_eq!(framing(parts), framing(&expected), "{boundary:?}: {text:?}"),
                (Err(_), Err(_)) => {}
                (Ok(parts), Err(err)) => {
                    // Reading more than multer is allowed only with the same framing of what both see.
                    assert!(parts.iter().map(|(_, d)| d.len()).sum::<usize>() <= body.len(), "{text:?}: {err}");
                }
                (Err(err), Ok(expected)) => panic!("refused what multer reads ({expected:?}): {err} for {text:?}"),
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 5 * 6);
}

/// Reads `body` (in chunks of `sizes`) up to its `file` part: where the file's data begins, the
/// file, and what the form holds after it.
async fn file_and_after(body: &[u8], sizes: &[usize]) -> (u64, Vec<u8>, Result<Vec<u8>, String>) {
    let mut reader = Multipart::new(source(body, sizes), BOUNDARY, u64::MAX);
    while reader.next_part().await.unwrap().expect("a file part").name.as_deref() != Some("file") {}
    let consumed = reader.consumed();
    let (mut file_stream, after_stream) = reader.into_body_and_after();
    let mut file = Vec::new();
    while let Some(slice) = file_stream.next().await {
        file.extend_from_slice(&slice.unwrap());
    }
    let after: Vec<_> = after_stream.collect().await;
    let after = after.into_iter().try_fold(Vec::new(), |mut all, chunk| {
        all.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        Ok(all)
    });
    (consumed, file, after)
}

#[tokio::test]
async fn the_file_begins_where_consumed_says_and_the_raw_body_after_it_follows_its_stream() {
    let file = b"\x89PNG\r\n\x1a\n-- not a delimiter\r\n--";
    let body = form(&[("user_id", None, b"u-1"), ("file", Some("a.png"), file), ("note", None, b"after")], b"pre\r\n");
    for sizes in [&[1][..], &[7, 3], &[64], &[100_000]] {
        let (consumed, read, after) = file_and_after(&body, sizes).await;
        let at = consumed as usize;
        assert_eq!(&body[at..at + file.len()], file, "chunks of {sizes:?}");
        assert_eq!(read, file, "chunks of {sizes:?}");
        assert_eq!(after.unwrap(), &body[at + file.len()..], "every byte after the file, once: {sizes:?}");
    }
}

#[tokio::test]
async fn the_bytes_after_a_file_fail_when_its_stream_was_dropped_before_its_end() {
    let body = form(&[("file", Some("a.png"), &[7u8; 5000])], b"");
    let mut reader = Multipart::new(source(&body, &[100]), BOUNDARY, u64::MAX);
    reader.next_part().await.unwrap().expect("the file part");
    let (mut file_stream, after_stream) = reader.into_body_and_after();
    file_stream.next().await.expect("a first slice").unwrap();
    drop(file_stream);
    let after: Vec<_> = after_stream.collect().await;
    assert!(matches!(after.as_slice(), [Err(FormError::Malformed(_))]), "{after:?}");
}
