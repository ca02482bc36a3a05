//! The properties the fuzz targets in `fuzz/` check, one function per target, kept in the library
//! so that the inputs a fuzzer once crashed on (`fuzz/regressions/<target>/`) are replayed by the
//! ordinary test suite (`tests/it/fuzz_regressions.rs`) against exactly the same checks.
//!
//! Each function takes arbitrary bytes and panics when a property fails; an input that is simply
//! refused (an error) is fine. None of this runs in the service.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine;
use serde_json::Value;

use crate::crypto::envelope::{self, DataKey, KeyPurpose, KeySlot, WrappedKey};
use crate::crypto::field::{sealed_version, FieldCipher, FieldContext};
use crate::crypto::keyring::Keyring;
use crate::domain::media_id::{is_valid, new_id, ID_CHARS, PREFIX};
use crate::media::ingest::sniff::{Allowlist, DeclaredBy};
use crate::media::ingest::sources::{clean_filename, decode_data_url, raw_filename};

/// The names of the targets, as in `fuzz/fuzz_targets/<name>.rs`.
pub const TARGETS: [&str; 9] = [
    "field_ciphertext",
    "wrapped_key",
    "data_url",
    "resolve_payload",
    "media_id",
    "content_disposition",
    "sniff",
    "object_segments",
    "multipart",
];

/// Runs the check of `target` on `data` (for the regression replay).
pub fn run(target: &str, data: &[u8]) {
    match target {
        "field_ciphertext" => field_ciphertext(data),
        "wrapped_key" => wrapped_key(data),
        "data_url" => data_url(data),
        "resolve_payload" => resolve_payload(data),
        "media_id" => media_id(data),
        "content_disposition" => content_disposition(data),
        "sniff" => sniff(data),
        "object_segments" => object_segments(data),
        "multipart" => multipart(data),
        other => panic!("no fuzz target named {other}"),
    }
}

const CONTEXT: FieldContext<'static> =
    FieldContext { tenant: "acme", table: "media_objects", column: "filename", row_id: "jan_fuzz" };

static DEK: LazyLock<DataKey> = LazyLock::new(|| DataKey::generate(3));

/// Field ciphertext decoder: arbitrary bytes never open (and never panic); a sealed value opens to
/// its plaintext, and any single flipped bit makes it fail.
pub fn field_ciphertext(data: &[u8]) {
    let cipher = FieldCipher::new(&DEK);
    if let Ok(version) = sealed_version(data) {
        assert_eq!(version, u32::from_be_bytes([data[1], data[2], data[3], data[4]]));
    }
    assert!(cipher.open(&CONTEXT, data).is_err(), "random bytes opened as a ciphertext");
    let sealed = cipher.seal(&CONTEXT, data);
    assert_eq!(sealed_version(&sealed).ok(), Some(3));
    assert_eq!(cipher.open(&CONTEXT, &sealed).expect("a sealed value opens").as_slice(), data);
    if !data.is_empty() {
        let mut tampered = sealed.clone();
        let bit = usize::from(data[0]) * 7 % (tampered.len() * 8);
        tampered[bit / 8] ^= 1 << (bit % 8);
        assert!(cipher.open(&CONTEXT, &tampered).is_err(), "a tampered ciphertext opened");
    }
    let other_row = FieldContext { row_id: "jan_other", ..CONTEXT };
    assert!(cipher.open(&other_row, &sealed).is_err(), "a ciphertext opened under another row's context");
}

static KEYRING: LazyLock<Arc<Keyring>> = LazyLock::new(|| {
    let text = format!("k1:{}", Keyring::generate_key());
    Arc::new(Keyring::parse_env(&text).expect("a generated keyring parses"))
});

/// Wrapped-key decoder: `<kek id>\n<token>` from arbitrary bytes never unwraps (nor panics); a
/// genuine wrap unwraps only into its own slot.
pub fn wrapped_key(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (kek_id, token) = text.split_once('\n').unwrap_or(("k1", &text));
    let slot = KeySlot { tenant: "acme", purpose: KeyPurpose::Dek, version: 1 };
    let forged = WrappedKey { kek_id: kek_id.to_owned(), token: token.to_owned() };
    assert!(envelope::unwrap(&KEYRING, slot, &forged).is_err(), "arbitrary input unwrapped as a key");
    let tenant = String::from_utf8_lossy(&data[..data.len().min(40)]).into_owned();
    let own = KeySlot { tenant: &tenant, purpose: KeyPurpose::Index, version: data.len() as u32 };
    let key = DataKey::generate(own.version);
    let wrapped = envelope::wrap(&KEYRING, own, &key);
    let unwrapped = envelope::unwrap(&KEYRING, own, &wrapped).expect("a genuine wrap unwraps");
    assert_eq!(unwrapped.bytes(), key.bytes());
    let elsewhere = KeySlot { tenant: "acme-other", ..own };
    if tenant != elsewhere.tenant {
        assert!(envelope::unwrap(&KEYRING, elsewhere, &wrapped).is_err(), "a key unwrapped into another tenant");
    }
    assert!(envelope::unwrap(&KEYRING, KeySlot { purpose: KeyPurpose::Dek, ..own }, &wrapped).is_err());
}

const DATA_URL_LIMIT: u64 = 64 * 1024;

/// Data URL decoder: never more than the limit, never a panic; what it decodes re-encodes to a
/// data URL that decodes to the same bytes.
pub fn data_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok((mime, bytes)) = decode_data_url(&text, DATA_URL_LIMIT) {
        assert!(bytes.len() as u64 <= DATA_URL_LIMIT);
        let mime = mime.unwrap_or_default().replace([',', ';'], "");
        let again = format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes));
        let (_, round) = decode_data_url(&again, DATA_URL_LIMIT).expect("a re-encoded data URL decodes");
        assert_eq!(round, bytes);
    }
}

/// Resolve payload scanner and rewriter, held to the tree-walking oracle
/// ([`crate::media::resolve::tree`]): what the scanner accepts the tree walk accepts, with the
/// same IDs (more only for duplicate keys, which the tree drops); an accepted payload is rewritten to the JSON the oracle substitutes, in which none of its
/// IDs is found again; a payload naming none comes back byte for byte.
/// The stand-in URLs start with `u`: lowercase, so, like a real `https://…`, it does not end an ID
/// written right before the placeholder (an upper-case start did, and the fuzzer found the new
/// placeholder that made — `…/url-ends-an-id`), and not a Crockford character, so, unlike `h`, it
/// cannot complete text such as `data:x;jan_<21 chars>` into a made-up placeholder (found twice —
/// `fuzz/regressions/resolve_payload/url-completes-*` — once naming an ID the payload also held).
/// With real URLs that completion can happen: output text only (a second resolve of it would
/// answer 404), so the check rules it out rather than the walker.
pub fn resolve_payload(data: &[u8]) {
    use crate::media::resolve::{payload_ids, rewrite, tree};
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let streamed = payload_ids(raw, 50);
    let Ok(payload) = serde_json::from_str::<Value>(raw) else {
        assert!(streamed.is_err(), "text serde_json refuses was accepted: {raw:?}");
        return;
    };
    let oracle = tree::payload_ids(&payload, 50);
    // The tree keeps only the last of duplicate keys, the scanner reads them all: it may find
    // more IDs (and so refuse a payload the tree accepts), never fewer.
    let ids = match (streamed, oracle) {
        (Ok(ids), Ok(expected)) => {
            assert!(expected.is_subset(&ids), "the scanner missed IDs the tree walk found");
            ids
        }
        (Err(_), _) => return,
        (Ok(ids), Err(oracle)) => panic!("the scanner accepted ({ids:?}) what the tree walk refused: {oracle:?}"),
    };
    let urls: HashMap<String, String> =
        ids.iter().enumerate().map(|(i, id)| (id.clone(), format!("u:s3.example/o{i}?sig=x"))).collect();
    let rewritten = rewrite(raw, &urls);
    if ids.is_empty() {
        assert_eq!(rewritten, raw, "a payload without IDs changed");
    }
    let mut expected = payload;
    tree::substitute(&mut expected, &urls);
    let parsed: Value = serde_json::from_str(&rewritten).expect("a rewritten payload is JSON");
    assert_eq!(parsed, expected, "the rewrite differs from the tree walk's substitution");
    let Ok(left) = payload_ids(&rewritten, usize::MAX / 8) else {
        panic!("a rewritten payload is nested deeper than its original")
    };
    let missed: Vec<&String> = left.intersection(&ids).collect();
    assert!(missed.is_empty(), "IDs left unresolved: {missed:?}");
}

/// Object cipher decoding (`crypto::object`): arbitrary bytes taken as a stored object — header,
/// lengths, segments — never open and never panic; the same bytes taken as plaintext (repeated to
/// span several 64 KiB segments) seal and open back whole and in a range the input picks, and one
/// flipped bit anywhere in the sealed object makes it fail to open.
pub fn object_segments(data: &[u8]) {
    use crate::crypto::object::{self, open_object, seal_object, ObjectHeader};
    const CONTEXT: &[&[u8]] = &[b"acme", b"m/fuzz"];
    let _ = object::plain_len(data.len() as u64);
    if let Ok(header) = ObjectHeader::parse(data) {
        let dek = DataKey::generate(header.dek_version);
        assert!(open_object(&dek, CONTEXT, data, None).is_err(), "random bytes opened as an object");
    }
    let Some((&first, rest)) = data.split_first() else { return };
    let plain: Vec<u8> = rest.iter().copied().cycle().take(rest.len() * usize::from(first % 64 + 1) * 16).collect();
    let sealed = seal_object(&DEK, CONTEXT, &plain).expect("seals");
    assert_eq!(open_object(&DEK, CONTEXT, &sealed, None).expect("opens"), plain);
    let len = plain.len() as u64;
    if len > 0 {
        let start = u64::from(first) * 977 % len;
        let end = start + 1 + (u64::from(first) * 65_537 % (len - start));
        let part = open_object(&DEK, CONTEXT, &sealed, Some(start..end)).expect("a range opens");
        assert_eq!(part, &plain[start as usize..end as usize]);
    }
    let mut tampered = sealed.clone();
    let bit = (usize::from(first) * 7919 + rest.len()) % (tampered.len() * 8);
    tampered[bit / 8] ^= 1 << (bit % 8);
    assert!(open_object(&DEK, CONTEXT, &tampered, None).is_err(), "a flipped bit opened");
}

/// `jan_*` ID parser: accepts exactly `jan_` + 26 lowercase Crockford base32 characters.
pub fn media_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let expected = text.len() == PREFIX.len() + ID_CHARS
        && text.starts_with(PREFIX)
        && text[PREFIX.len()..].bytes().all(|b| b"0123456789abcdefghjkmnpqrstvwxyz".contains(&b));
    assert_eq!(is_valid(&text), expected, "{text:?}");
    assert!(is_valid(&new_id()));
}

/// Content-Disposition filename handling: whatever header comes in, the stored name is a clean
/// last path component, and the download header built from it is a valid, unbreakable header
/// whose `filename*` decodes back to the name.
pub fn content_disposition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(data) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    for name in [raw_filename(&headers, None), clean_filename(&text)].into_iter().flatten() {
        assert!(!name.is_empty() && name != "." && name != "..");
        assert!(!name.contains(['/', '\\']) && !name.chars().any(char::is_control), "{name:?}");
        assert!(name.chars().count() <= 255);
        let built = crate::storage::content_disposition("attachment", &name);
        HeaderValue::from_str(&built).expect("a download header is a valid header value");
        let (plain, encoded) = built.rsplit_once("; filename*=UTF-8''").expect("filename* is present");
        let fallback = plain.strip_prefix("attachment; filename=\"").and_then(|f| f.strip_suffix('"'));
        let fallback = fallback.expect("the ASCII fallback is one quoted string");
        assert!(!fallback.contains(['"', '\\']), "{fallback:?}");
        assert!(!encoded.contains([' ', ';', '"', ',']), "{encoded:?}");
        let decoded = percent_decode(encoded);
        assert_eq!(decoded.as_deref(), Some(name.as_str()));
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

static ALLOW: LazyLock<Allowlist> = LazyLock::new(|| Allowlist::new(&crate::media::ingest::sniff::DEFAULT_ALLOWED));

const DECLARATIONS: [&str; 8] =
    ["image/png", "image/jpg", "image/jpeg", "image/gif", "application/octet-stream", "text/html", "IMAGE/PNG", ""];

/// Sniffing and type agreement: the first byte picks declarations, the rest is the content. An
/// accepted type is the sniffed one, allowed, and equal to every declaration that names a type.
pub fn sniff(data: &[u8]) {
    let Some((&choice, content)) = data.split_first() else { return };
    let declared: Vec<(DeclaredBy, String)> = (0..3)
        .filter(|bit| choice & (1 << bit) != 0)
        .map(|bit| (DeclaredBy::Header, DECLARATIONS[(usize::from(choice >> 3) % DECLARATIONS.len()) ^ bit].to_owned()))
        .collect();
    if let Ok(mime) = ALLOW.check(content, &declared) {
        assert!(ALLOW.allows(&mime), "{mime} is not in the allowlist");
        let sniffed = infer::get(content).map(|kind| kind.mime_type()).and_then(crate::media::ingest::sniff::canonical);
        assert_eq!(sniffed.as_deref(), Some(mime.as_str()));
        for (_, declared) in &declared {
            if let Some(canonical) = crate::media::ingest::sniff::canonical(declared) {
                assert_eq!(canonical, mime, "declared {declared} accepted as {mime}");
            }
        }
    }
}

/// Multipart reader: arbitrary bytes as a form body (`http::form::multipart::reference::check`):
/// no panic, the same parts however the body is cut, and multer's reading of a plain form.
pub fn multipart(data: &[u8]) {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> =
        LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("a runtime"));
    RUNTIME.block_on(crate::http::form::multipart::reference::check(data));
}
