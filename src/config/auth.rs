//! Token validation settings (`AUTH_*`, `MEDIA_DEFAULT_TENANT`).
//!
//! Permissions are granted by name, roles and scopes apart: `AUTH_*_ROLES` match only the token's
//! roles, `AUTH_*_SCOPES` only its `scope`/`scp`, so a scope never grants what a role of the same
//! name would (and the other way round).

use std::time::Duration;

use url::Url;

use super::env::{parse_http_url, Env};
use super::issuer_tenants::{self, IssuerTenants};
use super::ops::CaBundle;
use super::{ConfigError, Profile};
use crate::domain::tenant::{is_valid_tenant, TENANT_RULE};

/// How bearer tokens are required (`AUTH_MODE`, or `AUTH_ENABLED=false` for `Disabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Every protected route needs a valid token.
    Required,
    /// A missing token means anonymous; a bad token is still refused.
    Optional,
    /// No authentication (dev only).
    Disabled,
}

/// Issuer name of the dev profile's local token issuer (`media-api token`).
pub const DEV_ISSUER: &str = "media-api-dev";
/// Audience accepted in the dev profile when `AUTH_AUDIENCE` is not set.
pub const DEV_AUDIENCE: &str = "media-api";
/// Signature algorithms accepted when `AUTH_ALGORITHMS` is not set.
pub const DEFAULT_ALGORITHMS: [jsonwebtoken::Algorithm; 4] = [
    jsonwebtoken::Algorithm::RS256,
    jsonwebtoken::Algorithm::PS256,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::EdDSA,
];

/// Token validation settings (used by the auth layer).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Required, optional or disabled.
    pub mode: AuthMode,
    /// Accepted `iss` values (`AUTH_ISSUER`, comma separated).
    pub issuers: Vec<String>,
    /// Accepted `aud` values (`AUTH_AUDIENCE`, comma separated; `media-api` in dev when unset).
    pub audiences: Vec<String>,
    /// Where the signing keys are published (`AUTH_JWKS_URL`): one URL for every issuer, or one per
    /// issuer in the order of `AUTH_ISSUER`. Issuers without one use OIDC discovery.
    pub jwks_urls: Vec<Url>,
    /// Accepted signature algorithms (`AUTH_ALGORITHMS`, default RS256, PS256, ES256, EdDSA).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// Clock skew allowed on `exp` and `nbf` (`AUTH_LEEWAY`, default 60s).
    pub leeway: Duration,
    /// How often key sets are refreshed (`AUTH_JWKS_REFRESH`, default 10m).
    pub jwks_refresh: Duration,
    /// Dotted claim path of the tenant (`AUTH_TENANT_CLAIM`, default `tenant_id`).
    pub tenant_claim: String,
    /// Tenant of tokens without a tenant claim, and of anonymous callers (`MEDIA_DEFAULT_TENANT`).
    pub default_tenant: Option<String>,
    /// Roles granting `media:read` (`AUTH_READ_ROLES`; with `read_scopes` also empty: every valid
    /// token).
    pub read_roles: Vec<String>,
    /// Roles granting `media:write` (`AUTH_WRITE_ROLES`; with `write_scopes` also empty: every valid
    /// token).
    pub write_roles: Vec<String>,
    /// Roles granting `media:admin` (`AUTH_ADMIN_ROLES`; with `admin_scopes` also empty: no token).
    pub admin_roles: Vec<String>,
    /// Scopes granting `media:read` (`AUTH_READ_SCOPES`).
    pub read_scopes: Vec<String>,
    /// Scopes granting `media:write` (`AUTH_WRITE_SCOPES`).
    pub write_scopes: Vec<String>,
    /// Scopes granting `media:admin` (`AUTH_ADMIN_SCOPES`).
    pub admin_scopes: Vec<String>,
    /// Clients whose `resource_access.<client>.roles` count (`AUTH_CLIENT_ID`; default: the audiences).
    pub client_ids: Vec<String>,
    /// Trust the local dev issuer and serve its JWKS (`AUTH_DEV_ISSUER`; default on in the dev profile
    /// when `AUTH_ISSUER` is not set, off otherwise; refused in production).
    pub dev_issuer: bool,
    /// The tenants each issuer may assert (`AUTH_ISSUER_TENANTS`); `None`: every trusted issuer may
    /// assert any tenant.
    pub issuer_tenants: Option<IssuerTenants>,
    /// Extra trusted roots for JWKS and discovery fetches (`MEDIA_CA_FILE`).
    pub ca: Option<CaBundle>,
}

pub(super) fn auth_config(env: &Env<'_>, profile: Profile) -> Result<AuthConfig, ConfigError> {
    let mode = match env.get("AUTH_MODE").as_deref() {
        Some("required") => AuthMode::Required,
        Some("optional") => AuthMode::Optional,
        Some("disabled") => AuthMode::Disabled,
        Some(other) => {
            return Err(ConfigError::new(
                "AUTH_MODE",
                format!("expected `required`, `optional` or `disabled`, got {other:?}"),
            ))
        }
        None => match env.bool("AUTH_ENABLED")? {
            Some(false) => AuthMode::Disabled,
            _ => AuthMode::Required,
        },
    };
    let issuers = env.list("AUTH_ISSUER");
    let mut audiences = env.list("AUTH_AUDIENCE");
    if audiences.is_empty() && profile == Profile::Dev {
        audiences.push(DEV_AUDIENCE.to_owned());
    }
    let jwks_urls = env
        .list("AUTH_JWKS_URL")
        .iter()
        .map(|url| parse_http_url("AUTH_JWKS_URL", url))
        .collect::<Result<Vec<_>, _>>()?;
    if jwks_urls.len() > 1 && jwks_urls.len() != issuers.len() {
        return Err(ConfigError::new(
            "AUTH_JWKS_URL",
            format!("give one URL for all issuers or one per AUTH_ISSUER entry ({} issuers)", issuers.len()),
        ));
    }
    let default_tenant = env.get("MEDIA_DEFAULT_TENANT");
    if let Some(tenant) = &default_tenant {
        if !is_valid_tenant(tenant) {
            return Err(ConfigError::new("MEDIA_DEFAULT_TENANT", TENANT_RULE));
        }
    }
    let client_ids = env.list("AUTH_CLIENT_ID");
    // A real issuer configured in dev means the dev issuer is no longer trusted unless asked for.
    let dev_issuer = env.bool("AUTH_DEV_ISSUER")?.unwrap_or(profile == Profile::Dev && issuers.is_empty());
    let issuer_tenants =
        env.get(issuer_tenants::VAR).map(|value| IssuerTenants::parse(&value, &issuers, dev_issuer)).transpose()?;
    Ok(AuthConfig {
        mode,
        algorithms: algorithms(env)?,
        leeway: env.duration("AUTH_LEEWAY")?.unwrap_or(Duration::from_secs(60)),
        jwks_refresh: env
            .duration("AUTH_JWKS_REFRESH")?
            .unwrap_or(Duration::from_secs(600))
            .max(Duration::from_secs(1)),
        tenant_claim: env.get("AUTH_TENANT_CLAIM").unwrap_or_else(|| "tenant_id".into()),
        default_tenant,
        read_roles: env.list("AUTH_READ_ROLES"),
        write_roles: env.list("AUTH_WRITE_ROLES"),
        admin_roles: env.list("AUTH_ADMIN_ROLES"),
        read_scopes: env.list("AUTH_READ_SCOPES"),
        write_scopes: env.list("AUTH_WRITE_SCOPES"),
        admin_scopes: env.list("AUTH_ADMIN_SCOPES"),
        client_ids: if client_ids.is_empty() { audiences.clone() } else { client_ids },
        dev_issuer,
        issuer_tenants,
        issuers,
        audiences,
        jwks_urls,
        ca: None,
    })
}

pub(super) fn algorithms(env: &Env<'_>) -> Result<Vec<jsonwebtoken::Algorithm>, ConfigError> {
    let names = env.list("AUTH_ALGORITHMS");
    if names.is_empty() {
        return Ok(DEFAULT_ALGORITHMS.to_vec());
    }
    names
        .iter()
        .map(|name| match name.parse::<jsonwebtoken::Algorithm>() {
            Ok(alg) if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac => Ok(alg),
            _ => Err(ConfigError::new(
                "AUTH_ALGORITHMS",
                format!(
                    "{name:?} is not an accepted algorithm: use RS256, RS384, RS512, PS256, PS384, PS512, ES256, \
                     ES384 or EdDSA (shared-secret HS* algorithms are not supported)"
                ),
            )),
        })
        .collect()
}
