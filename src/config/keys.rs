//! Where the master keys come from (`MEDIA_MASTER_KEYS`, `MEDIA_KEYRING_FILE`, or generated in dev).

use std::path::PathBuf;

use secrecy::SecretString;

use super::env::Env;

/// Where the key-encryption keys come from.
#[derive(Debug, Clone)]
pub enum KeyringSource {
    /// `MEDIA_MASTER_KEYS`: `id:key,id:key`, the first is primary.
    Env(SecretString),
    /// `MEDIA_KEYRING_FILE`: a JSON keyring file (for example a mounted secret).
    File(PathBuf),
    /// Dev profile only: a keyring generated under the keys directory on first start.
    DevGenerated,
}

pub(super) fn keyring_source(env: &Env<'_>) -> KeyringSource {
    if let Some(keys) = env.secret("MEDIA_MASTER_KEYS") {
        KeyringSource::Env(keys)
    } else if let Some(path) = env.get("MEDIA_KEYRING_FILE") {
        KeyringSource::File(PathBuf::from(path))
    } else {
        KeyringSource::DevGenerated
    }
}
