//! Metadata database settings (`MEDIA_DATABASE_*`, `MEDIA_MIGRATE_ON_START`).

use std::time::Duration;

use secrecy::SecretString;

use super::env::Env;
use super::ops::CaBundle;
use super::ConfigError;

/// Metadata database settings.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `postgres://…` or `sqlite://…` (`MEDIA_DATABASE_URL`); may contain a password.
    pub url: SecretString,
    /// Pool size (`MEDIA_DATABASE_MAX_CONNECTIONS`, default 10).
    pub max_connections: u32,
    /// How long a request waits for a pooled connection (`MEDIA_DATABASE_ACQUIRE_TIMEOUT`, 5s).
    pub acquire_timeout: Duration,
    /// Apply pending migrations when the service starts (`MEDIA_MIGRATE_ON_START`, default true).
    pub migrate_on_start: bool,
    /// Extra roots for `sslmode=verify-ca`/`verify-full` (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

pub(super) fn database_config(env: &Env<'_>, data_dir: &std::path::Path) -> Result<DatabaseConfig, ConfigError> {
    let url = match env.get("MEDIA_DATABASE_URL") {
        Some(url) => {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite:")) {
                return Err(ConfigError::new("MEDIA_DATABASE_URL", "expected a postgres://… or sqlite://… URL"));
            }
            url
        }
        None => format!("sqlite://{}", data_dir.join("media.db").display()),
    };
    let max_connections = env.parse::<u32>("MEDIA_DATABASE_MAX_CONNECTIONS", "a whole number")?.unwrap_or(10);
    if max_connections == 0 {
        return Err(ConfigError::new("MEDIA_DATABASE_MAX_CONNECTIONS", "must be at least 1"));
    }
    Ok(DatabaseConfig {
        url: SecretString::from(url),
        max_connections,
        acquire_timeout: env.duration("MEDIA_DATABASE_ACQUIRE_TIMEOUT")?.unwrap_or(Duration::from_secs(5)),
        migrate_on_start: env.bool("MEDIA_MIGRATE_ON_START")?.unwrap_or(true),
        ca: None,
    })
}
