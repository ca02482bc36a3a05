//! Upload sources turned into what the pipeline takes: a raw request body as a [`ByteStream`], the
//! filename a client gave (`Content-Disposition`, `X-Filename`, `?filename=`), and jan v1 data URLs
//! (checked against the size limit before they are decoded); and bodies of zero bytes ([`zeros`],
//! [`zeroed`]), which make up a guessed length without writing anything the client chose.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::ByteStream;
use crate::media::error::MediaError;

/// Longest filename kept (longer ones are cut at a character boundary).
const MAX_FILENAME_CHARS: usize = 255;

/// Longest `user_id` hint taken, in bytes (the multipart form's text-part bound too). The hint is
/// encrypted into the row and kept decrypted in the row cache: unbounded, one JSON upload could
/// store (and pin in every replica's cache) tens of megabytes in it.
pub const MAX_USER_HINT_BYTES: usize = 1024;

/// Refuses a `user_id` hint over [`MAX_USER_HINT_BYTES`], before anything is read or stored.
pub fn check_user_hint(hint: Option<&str>) -> Result<(), MediaError> {
    match hint {
        Some(hint) if hint.len() > MAX_USER_HINT_BYTES => Err(MediaError::invalid(
            "user_id_too_long",
            format!("user_id is {} bytes long; at most {MAX_USER_HINT_BYTES} are accepted", hint.len()),
        )),
        _ => Ok(()),
    }
}

/// A request body as a stream of chunks.
pub fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream().map_err(std::io::Error::other).boxed()
}

/// The filename a raw upload names: `Content-Disposition` (`filename*` before `filename`), then
/// `X-Filename`, then the `filename` query parameter.
pub fn raw_filename(headers: &HeaderMap, query_filename: Option<&str>) -> Option<String> {
    let disposition = headers.get(header::CONTENT_DISPOSITION).and_then(|v| v.to_str().ok());
    disposition
        .and_then(disposition_filename)
        .or_else(|| headers.get("x-filename").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .or_else(|| query_filename.map(str::to_owned))
        .and_then(|name| clean_filename(&name))
}

/// The filename parameter of a `Content-Disposition` value.
fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for param in value.split(';').map(str::trim) {
        let Some((name, raw)) = param.split_once('=') else { continue };
        match name.trim().to_ascii_lowercase().as_str() {
            "filename*" => {
                let encoded = raw.trim().splitn(3, '\'').nth(2)?;
                return Some(percent_decode(encoded));
            }
            "filename" => plain = Some(raw.trim().trim_matches('"').to_owned()),
            _ => {}
        }
    }
    plain
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The last path component, without control characters, at most 255 characters; `None` if empty.
pub fn clean_filename(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let cleaned: String =
        last.chars().filter(|c| !c.is_control() && !is_format_char(*c)).take(MAX_FILENAME_CHARS).collect();
    let cleaned = cleaned.trim().to_owned();
    (!cleaned.is_empty() && cleaned != "." && cleaned != "..").then_some(cleaned)
}

/// Unicode format characters a name has no business holding: bidi controls (U+202E makes
/// `photo\u{202E}gnp.exe` display as `photoexe.png`), zero-width characters, the BOM, soft
/// hyphens, invisible operators and tag characters.
fn is_format_char(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

/// A decoded `data:<mime>;base64,<data>` URL: its declared type and bytes. The decoded size is
/// computed from the encoded length and refused above `max_bytes` before anything is decoded.
pub fn decode_data_url(url: &str, max_bytes: u64) -> Result<(Option<String>, Bytes), MediaError> {
    let invalid = |why: &str| MediaError::invalid("invalid_data_url", format!("the data URL {why}"));
    let rest = url.trim().strip_prefix("data:").ok_or_else(|| invalid("must start with `data:`"))?;
    let (meta, data) = rest.split_once(',').ok_or_else(|| invalid("has no `,` before its data"))?;
    let mut params = meta.split(';');
    let mime = params.next().map(str::trim).filter(|m| !m.is_empty()).map(str::to_owned);
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err(invalid("must be base64-encoded (`;base64,`)"));
    }
    let data = data.trim();
    let decoded_len = (data.len() as u64 / 4) * 3;
    if decoded_len > max_bytes.saturating_add(3) {
        return Err(MediaError::TooLarge { limit: max_bytes });
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(data)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(data.trim_end_matches('=')));
    let bytes = bytes.map_err(|_| invalid("is not valid base64"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(MediaError::TooLarge { limit: max_bytes });
    }
    Ok((mime, Bytes::from(bytes)))
}

/// `length` zero bytes, in slices of one static block.
pub fn zeros(length: u64) -> ByteStream {
    static BLOCK: [u8; 64 * 1024] = [0; 64 * 1024];
    let block = BLOCK.len() as u64;
    let slices = (0..length.div_ceil(block)).map(move |i| {
        let len = (length - i * block).min(block) as usize;
        Ok(Bytes::from_static(&BLOCK[..len]))
    });
    futures::stream::iter(slices).boxed()
}

/// As many zero bytes as `body` holds, as it delivers them: it is read to its end (and fails when
/// it does), but none of its bytes are passed on.
pub fn zeroed(body: ByteStream) -> ByteStream {
    body.map(|chunk| match chunk {
        Ok(chunk) => zeros(chunk.len() as u64),
        Err(err) => futures::stream::iter([Err(err)]).boxed(),
    })
    .flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn format_characters_are_stripped_so_a_name_displays_as_it_is() {
        assert_eq!(clean_filename("invoice\u{202E}fdp.exe").as_deref(), Some("invoicefdp.exe"));
        assert_eq!(clean_filename("a\u{200B}b\u{2066}c\u{FEFF}.png").as_deref(), Some("abc.png"));
        assert_eq!(clean_filename("\u{202E}\u{200F}"), None, "nothing visible is left");
        assert_eq!(clean_filename("photo d'été.png").as_deref(), Some("photo d'été.png"));
    }

    #[test]
    fn filenames_come_from_disposition_then_header_then_query_and_lose_their_path() {
        let mut headers = HeaderMap::new();
        assert_eq!(raw_filename(&headers, Some("q.png")).as_deref(), Some("q.png"));
        headers.insert("x-filename", HeaderValue::from_static("x.png"));
        assert_eq!(raw_filename(&headers, Some("q.png")).as_deref(), Some("x.png"));
        headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"../../d.png\""));
        assert_eq!(raw_filename(&headers, None).as_deref(), Some("d.png"));
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment; filename=\"a.png\"; filename*=UTF-8''%C3%BC%20b.png"),
        );
        assert_eq!(raw_filename(&headers, None).as_deref(), Some("ü b.png"));
        assert_eq!(clean_filename("dir\\..\\evil\r\n.png").as_deref(), Some("evil.png"));
        assert_eq!(clean_filename("/"), None);
    }

    #[test]
    fn data_urls_decode_and_oversized_ones_are_refused_before_decoding() {
        let (mime, bytes) = decode_data_url("data:image/png;base64,iVBORw0KGgo=", 100).unwrap();
        assert_eq!((mime.as_deref(), bytes.as_ref()), (Some("image/png"), &b"\x89PNG\r\n\x1a\n"[..]));
        let huge = format!("data:image/png;base64,{}", "A".repeat(4000));
        assert!(matches!(decode_data_url(&huge, 1000), Err(MediaError::TooLarge { limit: 1000 })));
        for bad in
            ["image/png;base64,AAAA", "data:image/png,AAAA", "data:image/png;base64", "data:image/png;base64,@@@"]
        {
            assert!(matches!(decode_data_url(bad, 100), Err(MediaError::Invalid { .. })), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_zeroed_body_is_as_long_as_the_body_and_fails_where_it_does() {
        let body = futures::stream::iter([
            Ok(Bytes::from(vec![7u8; 100_000])),
            Ok(Bytes::from_static(b"abc")),
            Err(std::io::Error::other("gone")),
        ]);
        let out: Vec<_> = zeroed(body.boxed()).collect().await;
        let (bytes, errors): (Vec<_>, Vec<_>) = out.into_iter().partition(Result::is_ok);
        let bytes: Vec<u8> = bytes.into_iter().flat_map(|b| b.unwrap().to_vec()).collect();
        assert_eq!((bytes.len(), bytes.iter().all(|b| *b == 0)), (100_003, true));
        assert_eq!(errors.len(), 1, "the body's failure is passed on");
    }
}
