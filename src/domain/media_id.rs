//! Media IDs: `jan_` followed by 26 lowercase Crockford base32 characters (130 bits from the OS
//! CSPRNG). An ID says nothing about the object it names; a string that does not parse as one is
//! simply not found, the same answer as an unknown or foreign ID.

use rand::rngs::OsRng;
use rand::RngCore;

/// The prefix every ID starts with.
pub const PREFIX: &str = "jan_";
/// Characters after the prefix.
pub const ID_CHARS: usize = 26;
/// Crockford's base32 alphabet, lowercase (no `i`, `l`, `o`, `u`).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new random ID.
pub fn new_id() -> String {
    let mut bytes = [0u8; ID_CHARS];
    OsRng.fill_bytes(&mut bytes);
    let mut id = String::with_capacity(PREFIX.len() + ID_CHARS);
    id.push_str(PREFIX);
    id.extend(bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char));
    id
}

/// Whether `text` is a well-formed ID.
pub fn is_valid(text: &str) -> bool {
    text.strip_prefix(PREFIX)
        .is_some_and(|rest| rest.len() == ID_CHARS && rest.bytes().all(|b| IN_ALPHABET[usize::from(b)]))
}

/// Whether each byte value is in [`ALPHABET`] (a table: a lookup per character, not a search).
const IN_ALPHABET: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = true;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_exactly_the_alphabet() {
        for byte in 0..=255u8 {
            let mut id = b"jan_0123456789abcdefghjkmnpqrs".to_vec();
            id[17] = byte;
            let valid = std::str::from_utf8(&id).is_ok_and(is_valid);
            assert_eq!(valid, ALPHABET.contains(&byte), "byte {byte:#04x}");
        }
    }

    #[test]
    fn ids_are_prefixed_crockford_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert!(is_valid(id), "{id}");
            assert_eq!(id.len(), 30);
        }
        let id = new_id();
        for bad in [
            "",
            "jan_",
            "JAN_0123456789abcdefghjkmnpqrs",
            "jan_0123456789abcdefghjkmnpqri",
            &id[..29],
            &format!("{id}0"),
        ] {
            assert!(!is_valid(bad), "{bad:?}");
        }
        assert!(is_valid("jan_0123456789abcdefghjkmnpqrs"));
    }
}
