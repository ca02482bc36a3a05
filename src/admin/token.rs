//! `media-api token --tenant T --sub S [--roles a,b] [--scopes x,y] [--ttl 1h]`: prints a token signed
//! by the dev profile's local issuer, so a first upload needs no identity provider. Refused when the
//! dev issuer is off (always in the production profile).

use anyhow::{bail, Context};

use crate::auth::dev_issuer::{DevIssuer, TokenRequest};
use crate::config::{parse_duration, Config};
use crate::domain::tenant::{is_valid_tenant, TENANT_RULE};

/// Options of `token`.
#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// Tenant the token acts in.
    #[arg(long)]
    pub tenant: String,
    /// Subject (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Roles, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Scopes, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// Validity, such as 15m, 1h or 2h30m.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
}

fn parse_ttl(value: &str) -> Result<std::time::Duration, String> {
    match parse_duration(value) {
        Some(ttl) if !ttl.is_zero() && ttl.as_secs() <= 30 * 86400 => Ok(ttl),
        _ => Err(format!("expected a duration between 1s and 30d such as 15m or 1h, got {value:?}")),
    }
}

/// Prints the token on standard output.
pub async fn run(config: &Config, opts: &Opts) -> anyhow::Result<()> {
    if !config.auth.dev_issuer {
        bail!(
            "the dev token issuer is off (MEDIA_PROFILE=production, AUTH_DEV_ISSUER=false, or AUTH_ISSUER is set \
             without AUTH_DEV_ISSUER=true): get tokens from your identity provider"
        );
    }
    if !is_valid_tenant(&opts.tenant) {
        bail!("--tenant: {TENANT_RULE}");
    }
    if opts.sub.is_empty() || opts.sub.len() > 256 {
        bail!("--sub must be 1 to 256 characters");
    }
    let issuer = DevIssuer::load_or_create(&config.keys_dir)?;
    let request = TokenRequest {
        subject: &opts.sub,
        tenant: &opts.tenant,
        roles: &opts.roles,
        scopes: &opts.scopes,
        ttl: opts.ttl,
    };
    let token = issuer.mint(&config.auth, &request).context("cannot sign the token")?;
    println!("{token}");
    Ok(())
}
