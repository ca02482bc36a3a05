use std::collections::HashMap;

use serde_json::{json, Value};

use super::*;

const A: &str = "jan_0123456789abcdefghjkmnpqrs";
const B: &str = "jan_zzzzzzzzzzzzzzzzzzzzzzzzzz";

fn urls() -> HashMap<String, String> {
    [(A.into(), "https://s3/a?sig".into()), (B.into(), "https://s3/b".into())].into()
}

/// Rewrites `raw` and checks it against the tree oracle: same IDs, same JSON after.
fn rewritten(raw: &str) -> Value {
    let ids = payload_ids(raw, 10).expect("accepted");
    let mut expected: Value = serde_json::from_str(raw).expect("JSON");
    assert_eq!(tree::payload_ids(&expected, 10).expect("oracle accepts"), ids);
    tree::substitute(&mut expected, &urls());
    let out: Value = serde_json::from_str(&rewrite(raw, &urls())).expect("the rewrite is JSON");
    assert_eq!(out, expected, "the rewrite differs from the tree walk");
    out
}

#[test]
fn placeholders_of_any_mime_are_found_inside_strings() {
    let text = format!(
        "see data:image/png;{A} and data:application/pdf;{B}. not data:;jan_x nor data:text/plain;jan_ \
         nor data:text/plain;jan_notes nor data:image/png;{A}x"
    );
    let found: Vec<_> = placeholders(&text).collect();
    assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), vec![A, B]);
    assert_eq!(&text[found[0].start..found[0].end], format!("data:image/png;{A}"));
}

#[test]
fn substitution_keeps_structure_and_every_other_byte() {
    let raw = format!(
        r#"{{"messages": [{{"role": "user", "content": [
            {{"type": "image_url", "image_url": {{"url": "data:image/jpeg;{A}"}}}},
            {{"type": "text", "text": "compare with {B} and data:image/png;{B}"}}]}}],
          "n": 1.50, "flag": true, "none": null, "plain": "{B}", "{A}": "a key is not replaced"}}"#
    );
    let ids = payload_ids(&raw, 10).unwrap();
    assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![A.to_owned(), B.to_owned()]);
    let out = rewrite(&raw, &urls());
    let payload = rewritten(&raw);
    assert_eq!(payload["messages"][0]["content"][0]["image_url"]["url"], "https://s3/a?sig");
    assert_eq!(payload["messages"][0]["content"][1]["text"], format!("compare with {B} and https://s3/b"));
    assert_eq!(payload["plain"], "https://s3/b");
    assert_eq!(payload[A], "a key is not replaced");
    assert!(out.contains(r#""n": 1.50, "flag": true"#), "untouched bytes stay as sent: {out}");
    let without = r#"{"a": [1, 2.0e3, "text \"quoted\" \u00e9"], "b": {}}"#;
    assert_eq!(rewrite(without, &urls()), without, "a payload without IDs comes back byte for byte");
}

#[test]
fn escaped_strings_are_read_as_json_reads_them() {
    // `\u0064ata:` is `data:` once decoded; `\/` is `/`.
    let raw = format!(r#"["\u0064ata:image\/png;{A}", "{B}\u0020", "\n{A}"]"#);
    let out = rewritten(&raw);
    assert_eq!(out, json!(["https://s3/a?sig", format!("{B} "), format!("\n{A}")]));
}

#[test]
fn a_placeholder_cut_inside_a_multi_byte_character_is_text_not_a_panic() {
    // 26 bytes after `jan_` end inside the two-byte `Ň` (an input the fuzzer found).
    let text = "data:x;jan_0123456789abcdefghjkmnpqrŇ;data:image/png;jan_0123456789abcdefghjkmnpqrs";
    let found: Vec<_> = placeholders(text).collect();
    assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), ["jan_0123456789abcdefghjkmnpqrs"]);
}

#[test]
fn deep_crowded_or_broken_payloads_are_refused_with_their_code() {
    let deep = format!("{}\"x\"{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert_eq!(payload_ids(&deep, 10).unwrap_err().code(), "payload_too_deep");
    let just = format!("{}\"x\"{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(payload_ids(&just, 10).is_ok(), "{MAX_DEPTH} levels are fine");
    let deeper = format!("{}{}", "{\"a\":".repeat(300), "}".repeat(300));
    assert_eq!(payload_ids(&deeper, 10).unwrap_err().code(), "payload_too_deep");

    let crowded: Vec<String> = (0..11).map(|_| crate::domain::media_id::new_id()).collect();
    let err = payload_ids(&json!(crowded).to_string(), 10).unwrap_err();
    assert_eq!(err.code(), "too_many_placeholders");
    let repeated = json!(vec![A; 41]).to_string();
    assert_eq!(payload_ids(&repeated, 10).unwrap_err().code(), "too_many_placeholders", "past the occurrence cap");

    let one_string = json!(format!("data:image/png;{A} ").repeat(100_000)).to_string();
    let err = payload_ids(&one_string, 10).unwrap_err();
    assert_eq!(err.code(), "too_many_placeholders", "a single string is counted as it is read");

    for broken in ["[1, 2", "{\"a\" 1}", "[1] [2]", "\"\\x\""] {
        assert_eq!(payload_ids(broken, 10).unwrap_err().code(), "invalid_json", "{broken}");
    }
}

#[test]
fn id_lists_are_bounded_before_they_are_read_whole() {
    let (list, unique) = listed_ids(&json!([A, B, A]).to_string(), 10).unwrap();
    assert_eq!((list.len(), unique.len()), (3, 2));
    let long = json!(vec![A; 41]).to_string();
    assert_eq!(listed_ids(&long, 10).unwrap_err().code(), "too_many_placeholders");
    let distinct: Vec<String> = (0..11).map(|_| crate::domain::media_id::new_id()).collect();
    assert_eq!(listed_ids(&json!(distinct).to_string(), 10).unwrap_err().code(), "too_many_placeholders");
    assert_eq!(listed_ids("[1]", 10).unwrap_err().code(), "invalid_request");
    assert_eq!(listed_ids("{}", 10).unwrap_err().code(), "invalid_request");
}
