//! The last line of defence for secrets in logs: every formatted log line passes through
//! [`redact`] before it is written, which blanks bearer tokens and other `Authorization` values,
//! cookies, JWTs, presigned-URL signatures and credentials (`X-Amz-Signature`, `X-Amz-Credential`,
//! `X-Amz-Security-Token`, the `X-Media-Signature` of filesystem links) and Fernet tokens (wrapped
//! keys). Code is still expected never to log such values — secrets live in `SecretString`, URLs
//! are logged without query strings — but a dependency logging a request at `debug` must not be
//! able to leak one either.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::OnceLock;

use regex::Regex;
use tracing_subscriber::fmt::MakeWriter;

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

fn patterns() -> &'static [(Regex, &'static str)] {
    static PATTERNS: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        [
            // `Authorization: <scheme> <credentials>` as header maps, debug output or text.
            (r#"(?i)(authorization\\?"?\s*[:=]\s*\\?"?)[^"\\\r\n]+"#, "${1}[redacted]"),
            (r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*", "${1}[redacted]"),
            (r#"(?i)((?:set-)?cookie\\?"?\s*[:=]\s*\\?"?)[^"\\\r\n]+"#, "${1}[redacted]"),
            // Query parameters that carry signatures or credentials.
            (
                r#"(?i)((?:x-amz-signature|x-amz-credential|x-amz-security-token|x-media-signature|access_token|id_token|refresh_token|client_secret)=)[^&\s"'\\]+"#,
                "${1}[redacted]",
            ),
            // Compact JWS/JWT anywhere.
            (r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+", "[redacted-jwt]"),
            // Fernet tokens (wrapped keys): version byte 0x80 → base64url `gAAAAA`.
            (r"gAAAAA[A-Za-z0-9_\-]{40,}=*", "[redacted-fernet]"),
            // Fernet keys: 32 bytes in URL-safe base64 (43 characters and `=`).
            (r"(^|[^A-Za-z0-9_\-])[A-Za-z0-9_\-]{43}=", "${1}[redacted-key]"),
            // Security tokens and signatures as headers or canonical-request lines, percent-encoded
            // query parameters, and user:password in URLs.
            (r#"(?i)(x-amz-security-token\\?"?\s*[:=]\s*\\?"?)[^"\\\s&]+"#, "${1}[redacted]"),
            (r"(?i)((?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-media-signature)%3D)[^&\s%]+", "${1}[redacted]"),
            (r"(?i)(x-goog-signature=)[^&\s\x22'\\]+", "${1}[redacted]"),
            (r"(?i)([a-z][a-z0-9+.\-]*://)[^/\s:@\x22]+:[^/\s@\x22]+@", "${1}[redacted]@"),
        ]
        .into_iter()
        .map(|(pattern, replacement)| (Regex::new(pattern).expect("redaction patterns compile"), replacement))
        .collect()
    })
}

/// `text` with every secret the patterns know blanked.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (pattern, replacement) in patterns() {
        if let Cow::Owned(replaced) = pattern.replace_all(&out, *replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// A [`MakeWriter`] whose writers redact what they are given (one formatted event per write).
pub struct Redacting<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

/// The writer [`Redacting`] makes.
pub struct RedactingWriter<W>(W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(redact(text).as_bytes())?,
            Err(_) => self.0.write_all(redact(&String::from_utf8_lossy(buf)).as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_blanked_and_the_rest_is_kept() {
        let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";
        let line = format!(
            r#"{{"msg":"sent","headers":{{"authorization":"Bearer {jwt}","cookie":"session=abc"}},"url":"https://s3/b/k?X-Amz-Credential=GK1%2F2026&X-Amz-Signature=deadbeef&x-id=GetObject","link":"/v1/blobs/m/x?X-Media-Expires=1&X-Media-Signature=00ff","wrapped":"gAAAAABnZXJuZXQtdG9rZW4tYnl0ZXMtYXJlLWxvbmctZW5vdWdoLXRvLW1hdGNo"}}"#
        );
        let out = redact(&line);
        for secret in [jwt, "session=abc", "GK1%2F2026", "deadbeef", "00ff", "gAAAAABnZXJuZXQ"] {
            assert!(!out.contains(secret), "{secret} leaked in {out}");
        }
        for kept in ["\"msg\":\"sent\"", "x-id=GetObject", "X-Media-Expires=1", "/v1/blobs/m/x"] {
            assert!(out.contains(kept), "{kept} lost in {out}");
        }
    }

    #[test]
    fn debug_formatted_headers_and_plain_text_are_covered() {
        let out =
            redact(r#"headers: {"authorization": "Basic dXNlcjpwYXNz", "x-request-id": "r1"} then Bearer abc.def"#);
        assert!(!out.contains("dXNlcjpwYXNz") && !out.contains("abc.def"), "{out}");
        assert!(out.contains("\"x-request-id\": \"r1\""), "{out}");
        assert_eq!(redact("nothing secret here"), "nothing secret here");
        let key = crate::crypto::keyring::Keyring::generate_key();
        let key = key.as_str();
        let line = format!(
            "k1:{key} x-amz-security-token: FQoGZXIvYXdz postgres://media:hunter2@db/media u=a%2Fb?X-Amz-Signature%3Dabcdef"
        );
        let more = redact(&line);
        for secret in [key, "FQoGZXIvYXdz", "hunter2", "abcdef"] {
            assert!(!more.contains(secret), "{secret} leaked in {more}");
        }
        assert!(more.contains("postgres://[redacted]@db/media"), "{more}");
    }

    #[test]
    fn the_writer_redacts_each_write() {
        let mut sink = Vec::new();
        RedactingWriter(&mut sink).write_all(b"token=1 Bearer secret-token\n").expect("write");
        assert_eq!(String::from_utf8(sink).expect("utf8"), "token=1 Bearer [redacted]\n");
    }
}
