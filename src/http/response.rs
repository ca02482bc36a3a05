//! Small response helpers the routes share.
//!
//! `axum::Json` goes through serde_json, which escapes every string byte by byte and starts from
//! a 128-byte buffer; the presign answer (a URL of 500–700 bytes, asked for tens of thousands of
//! times a second) is written by hand with [`push_json_str`] instead.

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

#[cfg(test)]
mod tests {
    use super::*;

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
