//! The command line: `media-api [serve]`, `migrate`, `rotate-keys`, `encrypt-objects`, `keys`,
//! `tenant`, `audit`, `sweep`, `reconcile`, `token`, `healthcheck`.
//!
//! Exit status: 0 on success, 2 when the configuration is refused (one line on stderr naming the
//! variable), 1 for any other failure.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::admin;
use crate::config::Config;
use crate::crypto::CryptoError;
use crate::services::StartupError;
use crate::telemetry::LogTarget;

/// Exit status for a refused configuration.
pub const EXIT_CONFIG: u8 = 2;

/// media-api: media uploads, presigned URLs and per-tenant envelope encryption.
#[derive(Debug, Parser)]
#[command(name = "media-api", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate(admin::migrate::Opts),
    /// Rotate keys online: re-wrap under the primary master key, re-encrypt rows (and with
    /// --objects objects) under new DEKs.
    RotateKeys(admin::rotate_keys::Opts),
    /// Encrypt the objects stored before MEDIA_OBJECT_ENCRYPTION was turned on, online.
    EncryptObjects(admin::encrypt_objects::Opts),
    /// Tenant administration (`tenant shred <tenant> --yes`).
    Tenant(admin::tenant::Opts),
    /// Audit log tools (`audit verify`).
    Audit(admin::audit::Opts),
    /// Master-key utilities and inventory (`keys generate`, `keys status`).
    Keys(admin::keys::Opts),
    /// Delete expired media, stale pending uploads and abandoned multipart uploads (one pass).
    Sweep(admin::sweep::Opts),
    /// Delete objects that no media row and no journal entry references (older than --grace).
    Reconcile(admin::reconcile::Opts),
    /// Print a token signed by the dev issuer (dev profile only): `token --tenant T --sub S`.
    Token(admin::token::Opts),
    /// Probe a running service's /healthz (for container health checks; exits 0 when healthy).
    Healthcheck(admin::healthcheck::Opts),
}

/// Parses the arguments, runs the command and returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("media-api: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    match &cli.command {
        Some(Command::Healthcheck(opts)) => return admin::healthcheck::run(opts).await,
        Some(Command::Keys(opts)) if !opts.needs_config() => {
            admin::keys::generate();
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("media-api: configuration error: {}", crate::telemetry::redact::redact(&err.to_string()));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let target = match cli.command {
        None | Some(Command::Serve) => LogTarget::Stdout,
        Some(_) => LogTarget::Stderr,
    };
    crate::telemetry::init(config.log_format, &config.log_level, target);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => admin::serve::run(config).await,
        Command::Migrate(opts) => admin::migrate::run(&config, &opts).await,
        Command::RotateKeys(opts) => admin::rotate_keys::run(&config, &opts).await,
        Command::EncryptObjects(opts) => admin::encrypt_objects::run(&config, &opts).await,
        Command::Audit(opts) => admin::audit::run(&config, &opts).await,
        Command::Tenant(opts) => admin::tenant::run(&config, &opts).await,
        Command::Keys(opts) => admin::keys::run(&config, &opts).await,
        Command::Token(opts) => admin::token::run(&config, &opts).await,
        Command::Sweep(opts) => admin::sweep::run(&config, &opts).await,
        Command::Reconcile(opts) => admin::reconcile::run(&config, &opts).await,
        Command::Healthcheck(_) => unreachable!("handled before configuration is read"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "media-api failed");
            eprintln!("media-api: {}", crate::telemetry::redact::redact(&format!("{err:#}")));
            if is_key_configuration_error(&err) {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A keyring or key file that cannot be used is a configuration problem (exit 2) like a bad variable:
/// those are read when the service starts, not while the environment is parsed.
fn is_key_configuration_error(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<StartupError>(),
            Some(StartupError::Keyring(_) | StartupError::InvalidKey(_) | StartupError::Keys(_))
        ) || matches!(cause.downcast_ref::<CryptoError>(), Some(CryptoError::Keyring(_)))
            || cause.is::<crate::crypto::dev_keys::DevKeyError>()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bare_invocation_means_serve() {
        let cli = Cli::try_parse_from(["media-api"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["media-api", "migrate"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Migrate(_))));
    }
}
