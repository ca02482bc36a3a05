//! Commands of the `media-api` binary, one file each, each with its clap `Opts` (where it takes any)
//! and a `run` function; the work itself is library code in [`crate::jobs`], the parts it works on are
//! opened by [`crate::services`].

pub mod audit;
pub mod encrypt_objects;
pub mod healthcheck;
pub mod keys;
pub mod migrate;
pub mod reconcile;
pub mod rotate_keys;
pub mod serve;
pub mod sweep;
pub mod tenant;
pub mod token;

use crate::config::Config;
use crate::services::{KeyServices, Role, Services, StartupError};

/// Opens every part of the service, as an admin command (no record cache, no migration).
pub async fn open_services(config: &Config) -> anyhow::Result<Services> {
    Services::open(config, Role::Admin).await.map_err(with_context)
}

/// Opens the keyring, the database and the media rows, as an admin command.
pub async fn open_key_services(config: &Config) -> anyhow::Result<KeyServices> {
    KeyServices::open(config, &Role::Admin).await.map_err(with_context)
}

/// What an admin command could not open, as the first line of its error.
fn with_context(err: StartupError) -> anyhow::Error {
    let what = match &err {
        StartupError::Keyring(_) => "cannot load the keyring",
        StartupError::Database(_) => "cannot open the database",
        _ => "cannot open the blob store",
    };
    anyhow::Error::new(err).context(what)
}
