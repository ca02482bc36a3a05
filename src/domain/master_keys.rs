//! The master keys (KEKs) as an operator writes them: `MEDIA_MASTER_KEYS` is `id:key,id:key` (the
//! first is primary), each key a Fernet key. The format is checked once when the configuration is
//! read, with a reason that never echoes key material; `crypto::keyring` builds the keyring from it.

/// The longest KEK id accepted (it is stored in every `tenant_keys` row).
pub const MAX_ID_LEN: usize = 64;

/// Splits `MEDIA_MASTER_KEYS` into `(id, key)` pairs (trimmed, empty entries skipped).
pub fn split_entries(value: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut entries = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, key) =
            item.split_once(':').ok_or("each entry must be id:key (for example k1:<fernet key>)".to_owned())?;
        entries.push((id.trim(), key.trim()));
    }
    Ok(entries)
}

/// Checks the whole of `MEDIA_MASTER_KEYS`: at least one entry, every id well formed and used
/// once, every key a Fernet key (32 bytes, URL-safe base64).
pub fn check(value: &str) -> Result<(), String> {
    let entries = split_entries(value)?;
    let mut seen = std::collections::BTreeSet::new();
    for (id, key) in &entries {
        check_kek_id(id)?;
        if fernet::Fernet::new(key).is_none() {
            return Err(not_a_fernet_key(id));
        }
        if !seen.insert(*id) {
            return Err(format!("key id {id:?} appears twice"));
        }
    }
    if entries.is_empty() {
        return Err("the keyring holds no key".into());
    }
    Ok(())
}

/// The reason given for a key that is not a Fernet key (the key itself is not shown).
pub fn not_a_fernet_key(id: &str) -> String {
    format!("key {id:?} is not a Fernet key (32 bytes, URL-safe base64)")
}

/// A KEK id is 1-64 characters of letters, digits, `-`, `_` or `.`.
pub fn check_kek_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        // The id is not echoed: a swapped `key:id` entry would print the key.
        Err(format!(
            "a key id ({} characters) must be 1-64 characters of letters, digits, '-', '_' or '.' (is an entry written key:id instead of id:key?)",
            id.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_checked_without_echoing_keys() {
        let key = fernet::Fernet::generate_key();
        assert!(check(&format!("k1:{key}, k2:{key}")).is_ok());
        for (input, expected) in [
            ("", "no key"),
            ("k1", "id:key"),
            ("k1:not-a-key", "not a Fernet key"),
            (&format!("k1:{key},k1:{key}") as &str, "twice"),
            (&format!("{key}:k1"), "must be 1-64"),
        ] {
            let err = check(input).unwrap_err();
            assert!(err.contains(expected), "{input:?}: {err}");
            assert!(!err.contains(&key), "{err}");
        }
    }
}
