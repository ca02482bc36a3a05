//! The key-encryption-key (KEK) keyring: Fernet master keys with ids, exactly one primary.
//!
//! Tenant keys are wrapped under the primary and unwrapped under the key whose id the row names,
//! so no trial decryption is ever needed and an id no longer referenced by any row can be removed.
//! Sources: `MEDIA_MASTER_KEYS` (`id:key,id:key`, the first is primary), `MEDIA_KEYRING_FILE` (JSON,
//! below), or in the dev profile a generated `keys/dev-keyring.json`. Key bytes live only inside
//! `fernet::Fernet` values, which zeroize themselves on drop, and are never shown by `Debug`.
//!
//! Keyring file format (also what the dev profile generates):
//! ```json
//! { "primary": "k2", "keys": [ { "id": "k1", "key": "<fernet key>" }, { "id": "k2", "key": "…" } ] }
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use fernet::Fernet;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::CryptoError;
use crate::config::KeyringSource;
use crate::domain::master_keys;

/// File name of the generated dev keyring under the keys directory.
pub const DEV_KEYRING_FILE: &str = "dev-keyring.json";

/// Fernet master keys by id, one of them primary.
pub struct Keyring {
    keys: BTreeMap<String, Fernet>,
    primary: String,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    primary: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    key: String,
}

impl Drop for KeyEntry {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

fn invalid(reason: impl Into<String>) -> CryptoError {
    CryptoError::Keyring(reason.into())
}

impl Keyring {
    /// Builds a keyring from `(id, fernet key)` pairs and the primary id.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
        primary: &str,
    ) -> Result<Self, CryptoError> {
        let mut keys = BTreeMap::new();
        for (id, key) in entries {
            master_keys::check_kek_id(id).map_err(invalid)?;
            let fernet = Fernet::new(key.trim()).ok_or_else(|| invalid(master_keys::not_a_fernet_key(id)))?;
            if keys.insert(id.to_owned(), fernet).is_some() {
                return Err(invalid(format!("key id {id:?} appears twice")));
            }
        }
        if keys.is_empty() {
            return Err(invalid("the keyring holds no key"));
        }
        if !keys.contains_key(primary) {
            return Err(invalid(format!("the primary key {primary:?} is not in the keyring")));
        }
        Ok(Self { keys, primary: primary.to_owned() })
    }

    /// Parses `MEDIA_MASTER_KEYS`: `id:key,id:key`, the first entry is primary.
    pub fn parse_env(value: &str) -> Result<Self, CryptoError> {
        let entries = master_keys::parse(value).map_err(invalid)?;
        let primary = entries.first().map(|(id, _)| *id).ok_or_else(|| invalid("the keyring holds no key"))?;
        Self::from_entries(entries.iter().copied(), primary)
    }

    /// Parses a keyring file's JSON.
    pub fn parse_json(text: &str) -> Result<Self, CryptoError> {
        // serde's message may quote a value (a key): only its position is reported.
        let file: KeyringFile = serde_json::from_str(text).map_err(|e| {
            invalid(format!("not a keyring file (line {}, column {}: expected {{\"primary\": …, \"keys\": [{{\"id\": …, \"key\": …}}]}})", e.line(), e.column()))
        })?;
        Self::from_entries(file.keys.iter().map(|e| (e.id.as_str(), e.key.as_str())), &file.primary)
    }

    /// Loads the keyring from its configured source; in the dev profile generates one on first use.
    pub fn load(source: &KeyringSource, keys_dir: &Path) -> Result<Self, CryptoError> {
        match source {
            KeyringSource::Env(value) => Self::parse_env(value.expose_secret())
                .map_err(|e| invalid(format!("MEDIA_MASTER_KEYS: {}", e.reason()))),
            KeyringSource::File(path) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(path)
                        .map_err(|e| invalid(format!("MEDIA_KEYRING_FILE: cannot read {}: {e}", path.display())))?,
                );
                Self::parse_json(&text)
                    .map_err(|e| invalid(format!("MEDIA_KEYRING_FILE {}: {}", path.display(), e.reason())))
            }
            KeyringSource::DevGenerated => {
                let text = Zeroizing::new(
                    super::dev_keys::load_or_create(keys_dir, DEV_KEYRING_FILE, Self::generate_dev_file)
                        .map_err(|e| invalid(e.to_string()))?,
                );
                Self::parse_json(&text)
            }
        }
    }

    /// A new master key in Fernet format (what `media-api keys generate` prints).
    pub fn generate_key() -> String {
        Fernet::generate_key()
    }

    fn generate_dev_file() -> String {
        let file = KeyringFile {
            primary: "dev1".into(),
            keys: vec![KeyEntry { id: "dev1".into(), key: Self::generate_key() }],
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }

    /// The primary key's id (new wraps use it).
    pub fn primary_id(&self) -> &str {
        &self.primary
    }

    /// Every id in the keyring.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the keyring holds `id`.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Encrypts `plaintext` under the primary key: `(kek id, Fernet token)`.
    pub fn wrap(&self, plaintext: &[u8]) -> (String, String) {
        let fernet = &self.keys[&self.primary];
        (self.primary.clone(), fernet.encrypt(plaintext))
    }

    /// Decrypts a token made under key `id`.
    pub fn unwrap(&self, id: &str, token: &str) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let fernet = self.keys.get(id).ok_or_else(|| CryptoError::UnknownKek(id.to_owned()))?;
        fernet.decrypt(token).map(Zeroizing::new).map_err(|_| CryptoError::Integrity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_env_entry_is_primary_and_wraps_round_trip() {
        let (k1, k2) = (Keyring::generate_key(), Keyring::generate_key());
        let ring = Keyring::parse_env(&format!("new:{k2}, old:{k1}")).unwrap();
        assert_eq!(ring.primary_id(), "new");
        let (id, token) = ring.wrap(b"secret dek");
        assert_eq!(id, "new");
        assert_eq!(ring.unwrap(&id, &token).unwrap().as_slice(), b"secret dek");
        assert!(matches!(ring.unwrap("old", &token), Err(CryptoError::Integrity)));
        assert!(matches!(ring.unwrap("gone", &token), Err(CryptoError::UnknownKek(_))));
    }

    #[test]
    fn bad_keyrings_are_refused_with_a_reason() {
        let key = Keyring::generate_key();
        for (input, expected) in [
            ("", "no key"),
            ("k1", "id:key"),
            ("k1:not-a-key", "not a Fernet key"),
            (&format!("k1:{key},k1:{key}") as &str, "twice"),
            (&format!("bad id:{key}"), "must be 1-64"),
        ] {
            let err = Keyring::parse_env(input).unwrap_err().to_string();
            assert!(err.contains(expected), "{input:?}: {err}");
        }
        let err = Keyring::parse_json(&format!(r#"{{"primary":"x","keys":[{{"id":"k1","key":"{key}"}}]}}"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("primary"), "{err}");
    }

    #[test]
    fn debug_output_shows_ids_but_no_key_material() {
        let key = Keyring::generate_key();
        let ring = Keyring::parse_env(&format!("k1:{key}")).unwrap();
        let debug = format!("{ring:?}");
        assert!(debug.contains("k1") && !debug.contains(&key), "{debug}");
    }

    #[test]
    fn the_dev_keyring_is_generated_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = Keyring::load(&KeyringSource::DevGenerated, dir.path()).unwrap();
        let (id, token) = first.wrap(b"x");
        let again = Keyring::load(&KeyringSource::DevGenerated, dir.path()).unwrap();
        assert_eq!(again.unwrap(&id, &token).unwrap().as_slice(), b"x");
    }
}
