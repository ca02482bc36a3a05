//! Finding media IDs inside any JSON, for `POST /v1/media/resolve`: every `data:<mime>;jan_<id>`
//! placeholder inside a string (any mime) and every string that is exactly an ID, and substituting
//! URLs for them with everything else untouched. Nesting depth ([`MAX_DEPTH`]), distinct IDs and
//! placeholders per call are bounded.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::MediaError;
use crate::domain::media_id::{is_valid, ID_CHARS, PREFIX};

/// Deepest nesting of arrays and objects accepted in a payload.
pub const MAX_DEPTH: usize = 64;

/// A `data:<mime>;jan_<id>` placeholder found in a string: byte span and the id.
#[derive(Debug, PartialEq, Eq)]
struct Placeholder<'a> {
    start: usize,
    end: usize,
    id: &'a str,
}

/// Every placeholder in `text`, in order.
fn placeholders(text: &str) -> Vec<Placeholder<'_>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("data:") {
        let start = from + offset;
        let mut i = start + "data:".len();
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b"/+.-_".contains(&bytes[i])) {
            i += 1;
        }
        let after_mime = i;
        if after_mime > start + 5 && text[after_mime..].starts_with(';') && text[after_mime + 1..].starts_with(PREFIX) {
            let id_start = after_mime + 1;
            // Exactly one well-formed ID, not followed by more ID characters: anything else
            // (`data:text/plain;jan_notes`) is ordinary text and left alone.
            let end = id_start + PREFIX.len() + ID_CHARS;
            let followed = bytes.get(end).is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            // `get`, not indexing: `end` may fall inside a multi-byte character (found by fuzzing).
            if let Some(id) = text.get(id_start..end).filter(|id| !followed && is_valid(id)) {
                found.push(Placeholder { start, end, id });
                from = end;
                continue;
            }
        }
        from = start + 1;
    }
    found
}

/// Collects the IDs a payload names, refusing payloads too deep or with too many IDs.
fn collect_ids(value: &Value, depth: usize, max_ids: usize, ids: &mut Occurrences) -> Result<(), MediaError> {
    if depth > MAX_DEPTH {
        return Err(MediaError::invalid(
            "payload_too_deep",
            format!("the payload is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    match value {
        Value::String(text) if is_valid(text) => ids.add(text),
        Value::String(text) => placeholders(text).into_iter().for_each(|p| ids.add(p.id)),
        Value::Array(items) => {
            for item in items {
                collect_ids(item, depth + 1, max_ids, ids)?;
            }
        }
        Value::Object(map) => {
            for item in map.values() {
                collect_ids(item, depth + 1, max_ids, ids)?;
            }
        }
        _ => {}
    }
    if ids.distinct.len() > max_ids || ids.total > max_ids * OCCURRENCES_PER_ID {
        return Err(MediaError::invalid(
            "too_many_placeholders",
            format!(
                "the payload names more than {max_ids} media IDs or holds more than {} placeholders",
                max_ids * OCCURRENCES_PER_ID
            ),
        ));
    }
    Ok(())
}

/// Placeholders allowed per distinct ID allowance: bounds the answer's size (each placeholder
/// becomes a URL of several hundred bytes), not only the lookups.
const OCCURRENCES_PER_ID: usize = 4;

/// The IDs a payload names, and how many placeholders name them.
#[derive(Debug, Default)]
struct Occurrences {
    distinct: BTreeSet<String>,
    total: usize,
}

impl Occurrences {
    fn add(&mut self, id: &str) {
        self.total += 1;
        if !self.distinct.contains(id) {
            self.distinct.insert(id.to_owned());
        }
    }
}

/// The distinct IDs a payload names (as exact strings or `data:<mime>;jan_<id>` placeholders),
/// refusing payloads nested deeper than [`MAX_DEPTH`] or naming more than `max_ids` IDs.
pub fn payload_ids(payload: &Value, max_ids: usize) -> Result<BTreeSet<String>, MediaError> {
    let mut ids = Occurrences::default();
    collect_ids(payload, 0, max_ids, &mut ids)?;
    Ok(ids.distinct)
}

/// Replaces every ID and placeholder with its URL (every ID in `urls` was collected from `value`
/// by [`payload_ids`]); everything else is left as it was.
pub fn substitute(value: &mut Value, urls: &HashMap<String, String>) {
    match value {
        Value::String(text) => {
            if let Some(url) = urls.get(text.as_str()) {
                *text = url.clone();
                return;
            }
            let found = placeholders(text);
            if found.is_empty() {
                return;
            }
            let mut out = String::with_capacity(text.len() + found.len() * 256);
            let mut last = 0;
            for placeholder in &found {
                out.push_str(&text[last..placeholder.start]);
                out.push_str(
                    urls.get(placeholder.id).map_or(&text[placeholder.start..placeholder.end], String::as_str),
                );
                last = placeholder.end;
            }
            out.push_str(&text[last..]);
            *text = out;
        }
        Value::Array(items) => items.iter_mut().for_each(|item| substitute(item, urls)),
        Value::Object(map) => map.values_mut().for_each(|item| substitute(item, urls)),
        _ => {}
    }
}

/// The distinct IDs of an `ids` list, refusing more than `max_ids` of them (or a list longer than
/// the placeholders a payload may hold).
pub fn listed_ids(list: &[String], max_ids: usize) -> Result<BTreeSet<String>, MediaError> {
    let unique: BTreeSet<String> = list.iter().cloned().collect();
    if unique.len() > max_ids || list.len() > max_ids * OCCURRENCES_PER_ID {
        return Err(MediaError::invalid("too_many_placeholders", format!("more than {max_ids} media IDs")));
    }
    Ok(unique)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "jan_0123456789abcdefghjkmnpqrs";
    const B: &str = "jan_zzzzzzzzzzzzzzzzzzzzzzzzzz";

    #[test]
    fn placeholders_of_any_mime_are_found_inside_strings() {
        let text = format!(
            "see data:image/png;{A} and data:application/pdf;{B}. not data:;jan_x nor data:text/plain;jan_ \
             nor data:text/plain;jan_notes nor data:image/png;{A}x"
        );
        let found = placeholders(&text);
        assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), vec![A, B]);
        assert_eq!(&text[found[0].start..found[0].end], format!("data:image/png;{A}"));
    }

    #[test]
    fn substitution_keeps_structure_and_other_values() {
        let mut payload = json!({
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": format!("data:image/jpeg;{A}")}},
                {"type": "text", "text": format!("compare with {B} and data:image/png;{B}")},
            ]}],
            "n": 1, "flag": true, "none": null, "plain": B,
        });
        let mut ids = Occurrences::default();
        collect_ids(&payload, 0, 10, &mut ids).unwrap();
        assert_eq!(ids.distinct.into_iter().collect::<Vec<_>>(), vec![A.to_owned(), B.to_owned()]);
        assert_eq!(ids.total, 3);
        let urls: HashMap<String, String> =
            [(A.into(), "https://s3/a?sig".into()), (B.into(), "https://s3/b".into())].into();
        substitute(&mut payload, &urls);
        assert_eq!(payload["messages"][0]["content"][0]["image_url"]["url"], "https://s3/a?sig");
        assert_eq!(payload["messages"][0]["content"][1]["text"], format!("compare with {B} and https://s3/b"));
        assert_eq!(payload["plain"], "https://s3/b");
        assert_eq!(
            (payload["n"].clone(), payload["flag"].clone(), payload["none"].clone()),
            (json!(1), json!(true), json!(null))
        );
    }

    #[test]
    fn a_placeholder_cut_inside_a_multi_byte_character_is_text_not_a_panic() {
        // 26 bytes after `jan_` end inside the two-byte `Ň` (an input the fuzzer found).
        let text = "data:x;jan_0123456789abcdefghjkmnpqrŇ;data:image/png;jan_0123456789abcdefghjkmnpqrs";
        let found = placeholders(text);
        assert_eq!(found.iter().map(|p| p.id).collect::<Vec<_>>(), ["jan_0123456789abcdefghjkmnpqrs"]);
    }

    #[test]
    fn deep_or_crowded_payloads_are_refused() {
        let mut deep = json!("x");
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        let err = collect_ids(&deep, 0, 10, &mut Occurrences::default()).unwrap_err();
        assert_eq!(err.code(), "payload_too_deep");
        let crowded: Vec<String> = (0..11).map(|_| crate::domain::media_id::new_id()).collect();
        let err = collect_ids(&json!(crowded), 0, 10, &mut Occurrences::default()).unwrap_err();
        assert_eq!(err.code(), "too_many_placeholders");
        let repeated = vec![A; 41];
        let err = collect_ids(&json!(repeated), 0, 10, &mut Occurrences::default()).unwrap_err();
        assert_eq!(err.code(), "too_many_placeholders", "one ID repeated past the occurrence cap");
    }
}
