//! Finding media IDs inside any JSON, for `POST /v1/media/resolve`: every `data:<mime>;jan_<id>`
//! placeholder inside a string (any mime) and every string that is exactly an ID, and substituting
//! URLs for them with everything else untouched. Nesting depth ([`MAX_DEPTH`]), distinct IDs and
//! placeholders per call are bounded.
//!
//! Memory: a payload is never turned into a tree. [`payload_ids`] validates the raw text and
//! collects its IDs with a visitor that keeps nothing but the IDs ([`scan`]); [`rewrite`] copies
//! the text once, replacing the string values that hold IDs, so a call holds its body and one
//! rewritten copy — about twice its size — and every byte that names no ID comes back as it was
//! sent. [`tree`] is the former tree-walking implementation, kept as the oracle the tests and the
//! `resolve_payload` fuzz target compare against.

mod scan;
#[cfg(any(test, feature = "fuzzing"))]
pub mod tree;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use super::MediaError;
use crate::domain::media_id::{is_valid, ID_CHARS, PREFIX};

pub use scan::{listed_ids, payload_ids};

/// Deepest nesting of arrays and objects accepted in a payload.
pub const MAX_DEPTH: usize = 64;

/// Placeholders allowed per distinct ID allowance: bounds the answer's size (each placeholder
/// becomes a URL of several hundred bytes), not only the lookups.
const OCCURRENCES_PER_ID: usize = 4;

/// A `data:<mime>;jan_<id>` placeholder found in a string: byte span and the id.
#[derive(Debug, PartialEq, Eq)]
struct Placeholder<'a> {
    start: usize,
    end: usize,
    id: &'a str,
}

/// Every placeholder in `text`, in order.
fn placeholders(text: &str) -> impl Iterator<Item = Placeholder<'_>> {
    let mut from = 0;
    std::iter::from_fn(move || next_placeholder(text, &mut from))
}

/// The next placeholder of `text` at or after `*from`, moving `*from` past it.
fn next_placeholder<'t>(text: &'t str, from: &mut usize) -> Option<Placeholder<'t>> {
    let bytes = text.as_bytes();
    while let Some(offset) = text[*from..].find("data:") {
        let start = *from + offset;
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
                *from = end;
                return Some(Placeholder { start, end, id });
            }
        }
        *from = start + 1;
    }
    None
}

/// The IDs a payload names, and how many placeholders name them.
#[derive(Debug, Default)]
struct Occurrences {
    distinct: BTreeSet<String>,
    total: usize,
}

impl Occurrences {
    /// Counts one more occurrence of `id`.
    fn add(&mut self, id: &str) {
        self.total += 1;
        if !self.distinct.contains(id) {
            self.distinct.insert(id.to_owned());
        }
    }

    /// Counts the IDs one string value names, stopping at the first one past the bounds (so a
    /// string of a million placeholders is refused after `max_ids × 4` of them, not collected).
    fn add_text(&mut self, text: &str, max_ids: usize) -> Result<(), MediaError> {
        if is_valid(text) {
            self.add(text);
            return self.check(max_ids);
        }
        for placeholder in placeholders(text) {
            self.add(placeholder.id);
            self.check(max_ids)?;
        }
        Ok(())
    }

    /// The refusal once more than `max_ids` distinct IDs or too many placeholders were seen.
    fn check(&self, max_ids: usize) -> Result<(), MediaError> {
        if self.distinct.len() > max_ids || self.total > max_ids.saturating_mul(OCCURRENCES_PER_ID) {
            return Err(too_many(max_ids));
        }
        Ok(())
    }
}

fn too_many(max_ids: usize) -> MediaError {
    MediaError::invalid(
        "too_many_placeholders",
        format!(
            "the payload names more than {max_ids} media IDs or holds more than {} placeholders",
            max_ids.saturating_mul(OCCURRENCES_PER_ID)
        ),
    )
}

fn too_deep() -> MediaError {
    MediaError::invalid("payload_too_deep", format!("the payload is nested deeper than {MAX_DEPTH} levels"))
}

/// The string that replaces `text` (a string value), or `None` when it names no ID in `urls`.
fn replaced(text: &str, urls: &HashMap<String, String>) -> Option<String> {
    if let Some(url) = urls.get(text) {
        return Some(url.clone());
    }
    let found: Vec<Placeholder<'_>> = placeholders(text).filter(|p| urls.contains_key(p.id)).collect();
    if found.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len() + found.len() * 256);
    let mut last = 0;
    for placeholder in &found {
        out.push_str(&text[last..placeholder.start]);
        out.push_str(&urls[placeholder.id]);
        last = placeholder.end;
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// `raw` (JSON text that [`payload_ids`] accepted) with every ID and placeholder of its string
/// values replaced by its URL in `urls`; object keys and every other byte are copied unchanged.
pub fn rewrite(raw: &str, urls: &HashMap<String, String>) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let (mut copied, mut at) = (0, 0);
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'"') {
        let start = at + offset;
        // The string's closing quote: the first `"` not escaped by a backslash.
        let (mut end, mut escaped) = (start + 1, false);
        while end < bytes.len() && bytes[end] != b'"' {
            escaped |= bytes[end] == b'\\';
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        if end >= bytes.len() {
            break; // not valid JSON: nothing more to replace
        }
        at = end + 1;
        let is_key = bytes[at..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b':');
        if is_key {
            continue;
        }
        let token = &raw[start..at];
        let text: Cow<'_, str> = if escaped {
            match serde_json::from_str::<String>(token) {
                Ok(text) => Cow::Owned(text),
                Err(_) => continue,
            }
        } else {
            Cow::Borrowed(&raw[start + 1..end])
        };
        if let Some(new) = replaced(&text, urls) {
            out.push_str(&raw[copied..start]);
            out.push_str(&serde_json::Value::String(new).to_string());
            copied = at;
        }
    }
    out.push_str(&raw[copied..]);
    out
}

#[cfg(test)]
mod tests;
