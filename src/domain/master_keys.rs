//! The master keys (KEKs) as an operator writes them: `MEDIA_MASTER_KEYS` is `id:key,id:key` (the
//! first is primary), each key a Fernet key. The format is checked once when the configuration is
//! read, with a reason that never echoes key material; `crypto::keyring` builds the keyring from it.

/// The longest KEK id accepted (it is stored in every `tenant_keys` row).
pub const MAX_ID_LEN: usize = 64;

/// Parses `MEDIA_MASTER_KEYS` into `(id, key)` pairs, the first one primary: at least one entry,
/// every id well formed and used once, every key a Fernet key (32 bytes, URL-safe base64).
pub fn parse(value: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut entries = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, key) =
            item.split_once(':').ok_or("each entry must be id:key (for example k1:<fernet key>)".to_owned())?;
        entries.push((id.trim(), key.trim()));
    }
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
    Ok(entries)
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
