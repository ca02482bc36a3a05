//! Small response helpers the routes share.
//!
//! `axum::Json` goes through serde_json, which escapes every string byte by byte and starts from
//! a 128-byte buffer; the presign answer (a URL of 500–700 bytes, asked for tens of thousands of
//! times a second) is written by hand with [`push_json_str`] and [`push_json_time`] instead.
//!
//! [`streamed`] is the body of a download.

use axum::body::Body;
use chrono::{DateTime, Datelike, Timelike, Utc};
use futures::StreamExt;

use crate::storage::ByteStream;

/// The response body of a download streaming `body`. A stream that fails part-way (a store gone,
/// an encrypted segment failing its check) aborts the response, and the client sees the body cut
/// short. Before that, the connection gets one turn to send what it holds — the head and the bytes
/// before the failure: hyper drops its unsent buffer with the connection, so a failure arriving
/// in the same turn as the bytes before it (a busy machine, a store answering fast) would
/// otherwise close the connection without an answer.
pub fn streamed(body: ByteStream) -> Body {
    Body::from_stream(body.then(|chunk| async move {
        if chunk.is_err() {
            tokio::task::yield_now().await;
        }
        chunk
    }))
}

/// Appends `value` as a JSON string. serde_json escapes byte by byte through a table; a string
/// with nothing to escape (a presigned URL, an id) is found so in one pass the compiler vectorises
/// and copied whole; anything else is left to serde_json.
pub fn push_json_str(out: &mut Vec<u8>, value: &str) {
    let escapes = value.bytes().fold(false, |found, b| found | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        serde_json::to_writer(&mut *out, value).expect("a str serialises into a Vec");
        return;
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// Appends `at` as serde_json writes a `DateTime<Utc>` (RFC 3339, `Z`). A whole second of a
/// four-digit year — every presigned URL's end — is written digit by digit; anything else is left
/// to chrono and serde_json (their formatting machinery was about 1,500 of the 20,000 instructions a
/// cached presign spent beyond `/healthz` and the token's digest).
pub fn push_json_time(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    let year = at.year();
    if at.nanosecond() != 0 || !(0..=9999).contains(&year) {
        serde_json::to_writer(&mut *out, at).expect("a time serialises into a Vec");
        return;
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let year = year as u32;
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [mo1, mo2] = two(at.month());
    let [d1, d2] = two(at.day());
    let [h1, h2] = two(at.hour());
    let [mi1, mi2] = two(at.minute());
    let [s1, s2] = two(at.second());
    out.extend_from_slice(&[
        b'"', y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T', h1, h2, b':', mi1, mi2, b':', s1, s2, b'Z', b'"',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// What a client reads of a 300 KB download whose stream has its first 200 KB and then a
    /// failure ready at once (a store answering fast, a busy server): the whole connection's bytes.
    async fn read_failing_download() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let route = axum::routing::get(move || async move {
            let chunks = [Ok(Bytes::from(vec![b'a'; 100_000])), Ok(Bytes::from(vec![b'b'; 100_000]))];
            let failing = futures::stream::iter(chunks.into_iter().chain([Err(std::io::Error::other("tampered"))]));
            let mut response = axum::response::Response::new(streamed(failing.boxed()));
            response.headers_mut().insert(axum::http::header::CONTENT_LENGTH, 300_000.into());
            response
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/", route)).await });
        let mut client = tokio::net::TcpStream::connect(address).await.expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.expect("request");
        let mut read = Vec::new();
        let _ = client.read_to_end(&mut read).await;
        String::from_utf8_lossy(&read).into_owned()
    }

    #[tokio::test]
    async fn a_download_failing_part_way_sends_its_head_and_the_bytes_before_the_failure() {
        for _ in 0..20 {
            let read = read_failing_download().await;
            assert!(read.starts_with("HTTP/1.1 200 OK"), "the head was sent: {:?}", &read[..read.len().min(60)]);
            let body = &read[read.find("\r\n\r\n").expect("a head") + 4..];
            assert!(body.len() < 300_000, "cut short");
            assert!(body.bytes().all(|b| b == b'a' || b == b'b'), "only the bytes before the failure");
        }
    }

    #[test]
    fn times_are_written_as_serde_json_writes_them() {
        let times = [
            "2026-11-28T02:59:54Z",
            "1970-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2024-02-29T12:07:09Z",
            "2026-11-28T02:59:54.5Z",
            "2026-11-28T02:59:54.000000001Z",
            "+10000-01-01T00:00:00Z",
            "-0001-12-31T23:59:59Z",
            "2016-12-31T23:59:60Z",
        ];
        for text in times {
            let at: DateTime<Utc> = text.parse().unwrap();
            let mut ours = Vec::new();
            push_json_time(&mut ours, &at);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&at).unwrap(), "{text}");
        }
        // Every second of a day and a spread of days over the four-digit years.
        let start = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        for step in (0..86_400i64).chain((0..4000).map(|d| d * 997 * 86_400 - 62_000_000_000)) {
            let at = DateTime::<Utc>::from_timestamp(start.timestamp() + step, 0).expect("in chrono's range");
            let mut ours = Vec::new();
            push_json_time(&mut ours, &at);
            assert_eq!(ours, serde_json::to_vec(&at).unwrap(), "{at:?}");
        }
    }

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for value in ["", "https://x/y?a=b&c=%2F", "a\"b", "back\\slash", "tab\tnew\nline", "\u{1}", "ü€😀", "\u{7f}/"]
        {
            let mut ours = b"[".to_vec();
            push_json_str(&mut ours, value);
            ours.push(b']');
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&[value]).unwrap(), "{value:?}");
        }
    }
}
