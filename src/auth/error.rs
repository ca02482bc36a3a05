//! The auth layer's one error type, [`AuthError`]: why a request was not let through, as an RFC 6750
//! challenge (401 `invalid_token`, 403 `insufficient_scope`) or a 503 when no key can be had. A
//! genuine token refused for what it asserts (no tenant, a tenant its issuer may not assert, a
//! missing permission) is a 403, never a 401.
//!
//! Descriptions are fixed sentences: nothing from the token (kid, issuer, claims) is echoed into a
//! header or a body, so a crafted token cannot inject text into either.

use super::principal::Permission;
use crate::domain::tenant::TENANT_RULE;

/// Why a request was refused by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("a Bearer token is required")]
    Missing,
    /// An `Authorization` header with another scheme.
    #[error("the Authorization header must use the Bearer scheme")]
    WrongScheme,
    /// The token is longer than the limit.
    #[error("the token is longer than 8 KiB")]
    TooLarge,
    /// Not a JWS in compact form (three base64url parts with a JSON header and payload).
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not accepted.
    #[error("the token's signature algorithm is not accepted")]
    Algorithm,
    /// A header parameter is refused (`typ`, `crit`, an overlong `kid`).
    #[error("{0}")]
    Header(&'static str),
    /// The issuer is not one of the configured ones (or missing).
    #[error("the token's issuer is not accepted")]
    Issuer,
    /// No key with the token's `kid` (after a refresh).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The key named by `kid` does not fit the header's algorithm.
    #[error("the token's algorithm does not match its signing key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` does not name this service.
    #[error("the token's audience is not accepted")]
    Audience,
    /// A required claim is missing or has the wrong type.
    #[error("{0}")]
    Claims(&'static str),
    /// The token carries no tenant and no default tenant is configured.
    #[error("the token carries no tenant and no default tenant is configured")]
    NoTenant,
    /// The tenant claim is not an acceptable tenant id.
    #[error("the token's tenant is not a valid tenant id: {TENANT_RULE}")]
    InvalidTenant,
    /// The token's issuer may not assert its tenant (`AUTH_ISSUER_TENANTS`).
    #[error("the token's issuer is not allowed to assert this tenant")]
    TenantNotAllowed,
    /// The principal lacks the permission the route needs.
    #[error("this request needs the {} permission", .0.name())]
    InsufficientScope(Permission),
    /// No key set could be loaded for the token's issuer.
    #[error("the token's issuer keys cannot be fetched right now; try again later")]
    KeysUnavailable,
}

impl AuthError {
    /// A short stable name for counters and audit events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::WrongScheme => "wrong_scheme",
            Self::TooLarge => "too_large",
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::Header(_) => "header",
            Self::Issuer => "issuer",
            Self::UnknownKey => "unknown_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::Claims(_) => "claims",
            Self::NoTenant => "no_tenant",
            Self::InvalidTenant => "invalid_tenant",
            Self::TenantNotAllowed => "tenant_not_allowed",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }

    /// Every reason, for counters.
    pub const REASONS: [&'static str; 19] = [
        "missing",
        "wrong_scheme",
        "too_large",
        "malformed",
        "algorithm",
        "header",
        "issuer",
        "unknown_kid",
        "key_mismatch",
        "signature",
        "expired",
        "not_yet_valid",
        "audience",
        "claims",
        "no_tenant",
        "invalid_tenant",
        "tenant_not_allowed",
        "insufficient_scope",
        "keys_unavailable",
    ];

    /// The HTTP status it answers: 401, 403 or 503.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoTenant | Self::InvalidTenant | Self::TenantNotAllowed | Self::InsufficientScope(_) => 403,
            Self::KeysUnavailable => 503,
            _ => 401,
        }
    }

    /// The stable `code` of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::WrongScheme => "invalid_request",
            Self::NoTenant => "no_tenant",
            Self::InvalidTenant => "invalid_tenant",
            Self::TenantNotAllowed => "tenant_not_allowed",
            Self::InsufficientScope(_) => "insufficient_scope",
            Self::KeysUnavailable => "auth_unavailable",
            _ => "invalid_token",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3); `None` for the 503.
    pub fn challenge(&self) -> Option<String> {
        let error = match self {
            Self::KeysUnavailable => return None,
            Self::Missing => return Some(format!("Bearer realm=\"{REALM}\"")),
            Self::WrongScheme => "invalid_request",
            Self::NoTenant | Self::InvalidTenant | Self::TenantNotAllowed | Self::InsufficientScope(_) => {
                "insufficient_scope"
            }
            _ => "invalid_token",
        };
        let mut challenge = format!("Bearer realm=\"{REALM}\", error=\"{error}\", error_description=\"{self}\"");
        if let Self::InsufficientScope(permission) = self {
            challenge.push_str(&format!(", scope=\"{}\"", permission.name()));
        }
        Some(challenge)
    }
}

/// The realm named in challenges.
pub const REALM: &str = "media-api";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_listed_once_and_challenges_hold_no_quotes_of_their_own() {
        let all = [
            AuthError::Missing,
            AuthError::WrongScheme,
            AuthError::TooLarge,
            AuthError::Malformed,
            AuthError::Algorithm,
            AuthError::Header("h"),
            AuthError::Issuer,
            AuthError::UnknownKey,
            AuthError::KeyMismatch,
            AuthError::Signature,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::Audience,
            AuthError::Claims("c"),
            AuthError::NoTenant,
            AuthError::InvalidTenant,
            AuthError::TenantNotAllowed,
            AuthError::InsufficientScope(Permission::Admin),
            AuthError::KeysUnavailable,
        ];
        let reasons: Vec<_> = all.iter().map(AuthError::reason).collect();
        assert_eq!(reasons, AuthError::REASONS);
        for err in &all {
            assert!(!err.to_string().contains('"'), "{err}");
            if let Some(challenge) = err.challenge() {
                assert!(challenge.starts_with("Bearer realm=\"media-api\""), "{challenge}");
            }
        }
        assert_eq!(AuthError::Missing.challenge().unwrap(), "Bearer realm=\"media-api\"");
        assert!(AuthError::InsufficientScope(Permission::Write).challenge().unwrap().contains("scope=\"media:write\""));
    }
}
