//! Reading a resolve request's JSON without building it: serde visitors that check the syntax and
//! the nesting depth and keep only the media IDs ([`payload_ids`]), or only a bounded list of
//! strings ([`listed_ids`]). A refusal found inside the visitor travels out beside serde's error.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{too_deep, too_many, Occurrences, MAX_DEPTH, OCCURRENCES_PER_ID};
use crate::media::MediaError;

/// What a walk found so far, and why it stopped (when it was ours, not a syntax error).
struct Walk {
    ids: Occurrences,
    max_ids: usize,
    refusal: Option<MediaError>,
}

impl Walk {
    /// A serde error that stops the walk, keeping `refusal` for the caller.
    fn stop<E: de::Error>(&mut self, refusal: MediaError) -> E {
        self.refusal = Some(refusal);
        E::custom("refused")
    }
}

/// One JSON value at `depth`.
struct Value<'w> {
    walk: &'w mut Walk,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.depth > MAX_DEPTH {
            return Err(self.walk.stop(too_deep()));
        }
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        match self.walk.ids.add_text(text, self.walk.max_ids) {
            Ok(()) => Ok(()),
            Err(refusal) => Err(self.walk.stop(refusal)),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        while items.next_element_seed(Value { walk: &mut *self.walk, depth })?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<(), A::Error> {
        let depth = self.depth + 1;
        while entries.next_key::<IgnoredAny>()?.is_some() {
            entries.next_value_seed(Value { walk: &mut *self.walk, depth })?;
        }
        Ok(())
    }
}

/// The refusal for a walk that failed: ours, serde's depth limit, or a syntax error.
fn refusal(walk: Walk, err: &serde_json::Error) -> MediaError {
    if let Some(refusal) = walk.refusal {
        return refusal;
    }
    if err.to_string().starts_with("recursion limit exceeded") {
        return too_deep();
    }
    MediaError::invalid("invalid_json", format!("the payload is not valid JSON: {err}"))
}

/// The distinct IDs a payload (JSON text) names, as exact strings or `data:<mime>;jan_<id>`
/// placeholders in string values, refusing invalid JSON, nesting deeper than [`MAX_DEPTH`] and
/// more than `max_ids` IDs. Holds nothing but the IDs.
pub fn payload_ids(raw: &str, max_ids: usize) -> Result<BTreeSet<String>, MediaError> {
    let mut walk = Walk { ids: Occurrences::default(), max_ids, refusal: None };
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let result = Value { walk: &mut walk, depth: 0 }.deserialize(&mut deserializer).and_then(|()| deserializer.end());
    match result {
        Ok(()) => Ok(walk.ids.distinct),
        Err(err) => Err(refusal(walk, &err)),
    }
}

/// A list of strings, refused past `max` entries before the next one is read.
struct List<'w> {
    walk: &'w mut Walk,
    max: usize,
    list: Vec<String>,
}

impl<'de> Visitor<'de> for List<'_> {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of media IDs")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<Vec<String>, A::Error> {
        while let Some(id) = items.next_element::<String>()? {
            if self.list.len() == self.max {
                return Err(self.walk.stop(too_many(self.walk.max_ids)));
            }
            self.list.push(id);
        }
        Ok(self.list)
    }
}

/// The IDs of an `ids` list (JSON text) in order, and the distinct ones, refusing more than
/// `max_ids` distinct IDs or a list longer than the placeholders a payload may hold.
pub fn listed_ids(raw: &str, max_ids: usize) -> Result<(Vec<String>, BTreeSet<String>), MediaError> {
    let mut walk = Walk { ids: Occurrences::default(), max_ids, refusal: None };
    let max = max_ids.saturating_mul(OCCURRENCES_PER_ID);
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let list = List { walk: &mut walk, max, list: Vec::new() };
    let list = match de::Deserializer::deserialize_seq(&mut deserializer, list) {
        Ok(list) => list,
        Err(_) => {
            let invalid = || MediaError::invalid("invalid_request", "ids must be an array of strings");
            return Err(walk.refusal.take().unwrap_or_else(invalid));
        }
    };
    let unique: BTreeSet<String> = list.iter().cloned().collect();
    if unique.len() > max_ids {
        return Err(too_many(max_ids));
    }
    Ok((list, unique))
}
