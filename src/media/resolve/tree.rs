//! The tree-walking resolve of earlier releases — parse to a [`Value`], walk it, substitute in
//! place — kept only as the oracle that the unit tests and the `resolve_payload` fuzz target hold
//! the streaming [`super::payload_ids`] and [`super::rewrite`] to (same IDs, same refusals, the
//! same JSON after the rewrite). Not compiled into the service.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

use super::{placeholders, too_deep, Occurrences, MAX_DEPTH};
use crate::media::MediaError;

fn collect_ids(value: &Value, depth: usize, max_ids: usize, ids: &mut Occurrences) -> Result<(), MediaError> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    match value {
        Value::String(text) => ids.add_text(text, max_ids)?,
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
    ids.check(max_ids)
}

/// The distinct IDs of a parsed payload, with the same bounds as [`super::payload_ids`].
pub fn payload_ids(payload: &Value, max_ids: usize) -> Result<BTreeSet<String>, MediaError> {
    let mut ids = Occurrences::default();
    collect_ids(payload, 0, max_ids, &mut ids)?;
    Ok(ids.distinct)
}

/// Replaces every ID and placeholder of `value`'s strings with its URL in `urls`.
pub fn substitute(value: &mut Value, urls: &HashMap<String, String>) {
    match value {
        Value::String(text) => {
            if let Some(url) = urls.get(text.as_str()) {
                *text = url.clone();
                return;
            }
            let mut out = String::new();
            let mut last = 0;
            for placeholder in placeholders(text) {
                out.push_str(&text[last..placeholder.start]);
                out.push_str(
                    urls.get(placeholder.id).map_or(&text[placeholder.start..placeholder.end], String::as_str),
                );
                last = placeholder.end;
            }
            if last > 0 {
                out.push_str(&text[last..]);
                *text = out;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| substitute(item, urls)),
        Value::Object(map) => map.values_mut().for_each(|item| substitute(item, urls)),
        _ => {}
    }
}
