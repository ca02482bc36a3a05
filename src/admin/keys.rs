//! `media-api keys …`: master-key utilities. `keys generate` prints a new master key in Fernet
//! format, ready to add to `MEDIA_MASTER_KEYS` (`id:key`) or a keyring file.

use crate::crypto::keyring::Keyring;

/// Options of `keys`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// What to do.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// Subcommands of `keys`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Print a new random master key (Fernet format: 32 bytes, URL-safe base64).
    Generate,
}

/// Runs a `keys` subcommand that needs no configuration.
pub fn run(opts: &Opts) {
    match opts.command {
        KeysCommand::Generate => println!("{}", Keyring::generate_key()),
    }
}
