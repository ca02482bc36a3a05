//! Authentication and tenancy: Bearer JWTs checked against the configured issuers' JWKS, turned into
//! a [`Principal`] (subject, tenant, roles, scopes, permissions).
//!
//! - [`Authenticator`] holds everything a request needs: the mode (`required`, `optional`,
//!   `disabled`), one [`jwks::JwksCache`] per issuer (or one shared when a single `AUTH_JWKS_URL` is
//!   set), the prebuilt validation rules, the claims mapping, a cache of verified tokens, and the
//!   failure counters and audit trail.
//! - [`token`] reads a compact JWS before and after the signature check; [`jwks`] parses and caches
//!   key sets; [`principal`] maps claims to permissions; [`dev_issuer`] is the dev profile's local
//!   issuer; `failures` counts and audits refusals; [`error`] is the layer's error type. The axum
//!   extractor lives in `http::extract`.
//!
//! With `AUTH_ISSUER_TENANTS`, a verified token whose tenant its issuer may not assert is refused
//! (403 `tenant_not_allowed`): the token is genuine, its issuer is just not trusted for that tenant.
//!
//! Verified tokens are remembered (by SHA-256 of the token) until they expire, so a client reusing
//! its token pays for one signature check, not one per request — the same trade Envoy's `jwt_authn`
//! cache makes. The memory is cleared whenever a key set loses or gains a key, so a key removed by
//! the provider stops working at the next refresh.

pub mod dev_issuer;
pub mod error;
mod failures;
pub mod jwks;
pub mod principal;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{AuthConfig, AuthMode, IssuerTenants, DEV_ISSUER};
use crate::crypto::dev_keys::DevKeyError;
use crate::db::audit::AuditLog;
pub use error::AuthError;
use failures::FailureLog;
use jwks::{CacheStatus, JwksCache, KeySet, KeySource};
pub use principal::{Permission, Principal};

/// Most verified tokens remembered at once (the memory is pruned, then cleared, when full).
const MAX_VERIFIED_TOKENS: usize = 10_000;

/// Checks Bearer tokens and builds principals (see the module docs).
pub struct Authenticator {
    mode: AuthMode,
    algorithms: Vec<Algorithm>,
    issuers: HashMap<String, Arc<JwksCache>>,
    caches: Vec<Arc<JwksCache>>,
    validations: Vec<(Algorithm, Validation)>,
    leeway: i64,
    refresh_interval: Duration,
    claims: principal::ClaimsMapping,
    anonymous: Option<Arc<Principal>>,
    unauthenticated: Arc<Principal>,
    verified: Arc<VerifiedTokens>,
    failures: FailureLog,
    dev: Option<dev_issuer::DevIssuer>,
    tenants: Option<IssuerTenants>,
}

impl Authenticator {
    /// Builds the authenticator; nothing is fetched until [`Authenticator::start`]. Loads (or, the
    /// first time, generates) the dev issuer's key when it is enabled. `audit` receives the
    /// audit events of refused requests.
    pub fn new(config: &AuthConfig, keys_dir: &Path, audit: Option<AuditLog>) -> Result<Self, DevKeyError> {
        let http = jwks::http_client(config.ca.as_ref());
        let verified = Arc::new(VerifiedTokens::default());
        let mut issuers = HashMap::new();
        let mut caches = Vec::new();
        let shared_url = (config.jwks_urls.len() == 1).then(|| config.jwks_urls[0].clone());
        if let Some(url) = shared_url {
            let cache = remote_cache(&config.issuers.join(","), KeySource::Url(url), &http, &verified);
            caches.push(cache.clone());
            issuers.extend(config.issuers.iter().map(|iss| (iss.clone(), cache.clone())));
        } else {
            for (index, issuer) in config.issuers.iter().enumerate() {
                let source = match config.jwks_urls.get(index) {
                    Some(url) => KeySource::Url(url.clone()),
                    None => KeySource::Discovery(issuer.clone()),
                };
                let cache = remote_cache(issuer, source, &http, &verified);
                caches.push(cache.clone());
                issuers.insert(issuer.clone(), cache);
            }
        }
        let dev = if config.dev_issuer { Some(dev_issuer::DevIssuer::load_or_create(keys_dir)?) } else { None };
        if let Some(key) = dev.as_ref().and_then(dev_issuer::DevIssuer::verification_key) {
            let cache = Arc::new(JwksCache::fixed(DEV_ISSUER, KeySet::from_jwks([key]), http.clone()));
            caches.push(cache.clone());
            issuers.insert(DEV_ISSUER.to_owned(), cache);
            tracing::warn!(issuer = DEV_ISSUER, "trusting the local dev token issuer (dev profile only)");
        }
        let accepted: Vec<String> = issuers.keys().cloned().collect();
        let leeway = config.leeway.as_secs();
        let validations = config
            .algorithms
            .iter()
            .map(|alg| (*alg, token::validation(*alg, &accepted, &config.audiences, leeway)))
            .collect();
        let claims = principal::ClaimsMapping::new(config);
        log_policy(config, issuers.len());
        Ok(Self {
            mode: config.mode,
            algorithms: config.algorithms.clone(),
            issuers,
            caches,
            validations,
            leeway: i64::try_from(leeway).unwrap_or(i64::MAX / 2),
            refresh_interval: config.jwks_refresh,
            anonymous: claims.anonymous().map(Arc::new),
            unauthenticated: Arc::new(claims.unauthenticated()),
            claims,
            verified,
            failures: FailureLog::new(audit),
            dev,
            tenants: config.issuer_tenants.clone(),
        })
    }

    /// Fetches every issuer's keys once (concurrently, each bounded by the fetch timeout) and starts
    /// the periodic refreshes. A provider that is down does not stop the start: `/readyz` reports it
    /// and requests for that issuer get 503 until its keys arrive.
    pub async fn start(&self) {
        futures::future::join_all(self.caches.iter().map(|cache| cache.refresh())).await;
        for cache in &self.caches {
            let status = cache.status();
            if status.loaded {
                tracing::info!(issuer = cache.name(), keys = status.keys, "signing keys loaded");
            } else {
                tracing::warn!(
                    issuer = cache.name(),
                    "signing keys could not be loaded yet; retrying in the background"
                );
            }
            cache.spawn_refresher(self.refresh_interval);
        }
    }

    /// The principal of a request with this `Authorization` header value (or none).
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Arc<Principal>, AuthError> {
        if self.mode == AuthMode::Disabled {
            return Ok(self.unauthenticated.clone());
        }
        let Some(value) = authorization else {
            return match (&self.anonymous, self.mode) {
                (Some(anonymous), AuthMode::Optional) => Ok(anonymous.clone()),
                _ => Err(AuthError::Missing),
            };
        };
        self.verify(bearer_token(value)?).await
    }

    /// Verifies a bare token (its bytes) and returns its principal.
    pub async fn verify(&self, token: &[u8]) -> Result<Arc<Principal>, AuthError> {
        if token.len() > token::MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token).into();
        if let Some(principal) = self.verified.get(&digest) {
            return Ok(principal);
        }
        let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
        let generation = self.verified.generation();
        let inspected = token::inspect(token, &self.algorithms)?;
        let cache = self.issuers.get(&inspected.issuer).ok_or(AuthError::Issuer)?;
        let alg = inspected.header.alg;
        let key = cache.key(inspected.header.kid.as_deref(), alg).await?;
        let validation =
            self.validations.iter().find(|(a, _)| *a == alg).map(|(_, v)| v).ok_or(AuthError::Algorithm)?;
        let claims = token::verify(token, &key, validation)?;
        let principal = Arc::new(self.claims.principal(&inspected.issuer, &claims)?);
        if self.tenants.as_ref().is_some_and(|binding| !binding.allows(&inspected.issuer, &principal.tenant)) {
            return Err(AuthError::TenantNotAllowed);
        }
        if let Some(exp) = claims.get("exp").and_then(Value::as_i64) {
            self.verified.insert(digest, principal.clone(), exp.saturating_add(self.leeway), generation);
        }
        Ok(principal)
    }

    /// Counts a refusal by reason and records it in the audit log (rate-limited per source IP).
    pub fn record_failure(&self, err: &AuthError, source: Option<IpAddr>) {
        metrics::counter!(crate::telemetry::metrics::names::AUTH_FAILURES, "reason" => err.reason()).increment(1);
        self.failures.record(err, source);
    }

    /// Refusals so far, by reason.
    pub fn failure_counts(&self) -> Vec<(&'static str, u64)> {
        self.failures.counts()
    }

    /// The key caches by issuer name, for readiness and metrics.
    pub fn key_status(&self) -> Vec<(String, CacheStatus)> {
        self.caches.iter().map(|cache| (cache.name().to_owned(), cache.status())).collect()
    }

    /// The dev issuer's public key set, when the dev issuer is on.
    pub fn dev_jwks(&self) -> Option<Value> {
        self.dev.as_ref().map(dev_issuer::DevIssuer::jwks)
    }
}

/// The start-up lines saying what the auth settings mean, each logged once (the authenticator is
/// built once per process): disabled or optional auth, who can hold `media:admin`, and several
/// trusted issuers without `AUTH_ISSUER_TENANTS`.
fn log_policy(config: &AuthConfig, trusted_issuers: usize) {
    match config.mode {
        AuthMode::Disabled => {
            tracing::warn!(
                "AUTHENTICATION IS DISABLED: every request acts with every permission in the default tenant (dev only)"
            );
            return;
        }
        AuthMode::Optional => tracing::info!("authentication is optional: requests without a token are anonymous"),
        AuthMode::Required => {}
    }
    if config.admin_roles.is_empty() && config.admin_scopes.is_empty() {
        tracing::info!(
            "nobody holds media:admin: AUTH_ADMIN_ROLES and AUTH_ADMIN_SCOPES are both empty, so every caller can \
             delete or complete only the media it uploaded itself"
        );
    }
    if trusted_issuers > 1 && config.issuer_tenants.is_none() {
        tracing::warn!(
            issuers = trusted_issuers,
            "several token issuers are trusted and AUTH_ISSUER_TENANTS is not set: each of them may assert any \
             tenant; bind each issuer to its tenants (the production profile requires it)"
        );
    }
}

fn remote_cache(
    name: &str,
    source: KeySource,
    http: &reqwest::Client,
    verified: &Arc<VerifiedTokens>,
) -> Arc<JwksCache> {
    let verified = verified.clone();
    Arc::new(JwksCache::remote(name, source, http.clone(), move || verified.clear()))
}

/// The token of a `Bearer` credential (the scheme is case-insensitive, RFC 7235); a header value
/// with anything but visible ASCII and tabs is malformed. Bytes, all ASCII: a token found in the
/// verified cache is never turned into a `str` (safe: only tokens that were valid UTF-8 and
/// verified are cached, and another byte string would need a SHA-256 second preimage to hit one).
fn bearer_token(value: &[u8]) -> Result<&[u8], AuthError> {
    // Every byte looked at, no early exit: the loop vectorizes (a token is hundreds of bytes).
    if !value.iter().fold(true, |ok, b| ok & (*b == b'\t' || (0x20..0x7f).contains(b))) {
        return Err(AuthError::Malformed);
    }
    // Only tabs and spaces can be whitespace here: trimming ASCII whitespace is `str::trim`.
    let value = value.trim_ascii();
    let (scheme, token) = match memchr::memchr(b' ', value) {
        Some(space) => (&value[..space], &value[space + 1..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(AuthError::WrongScheme);
    }
    let token = token.trim_ascii();
    if token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// A verified token's principal and the Unix time it stops being valid.
type VerifiedEntry = (Arc<Principal>, i64);

/// Verified tokens by SHA-256, each until its `exp` plus the leeway.
#[derive(Default)]
struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], VerifiedEntry>>,
    /// Bumped by every clear: a token verified against keys read before a clear is not remembered.
    generation: AtomicU64,
}

impl VerifiedTokens {
    fn get(&self, digest: &[u8; 32]) -> Option<Arc<Principal>> {
        let now = chrono::Utc::now().timestamp();
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(digest).filter(|(_, until)| *until > now).map(|(principal, _)| principal.clone())
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn insert(&self, digest: [u8; 32], principal: Arc<Principal>, until: i64, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= MAX_VERIFIED_TOKENS {
            let now = chrono::Utc::now().timestamp();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= MAX_VERIFIED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(digest, (principal, until));
    }

    fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        let header = |v: &str| v.as_bytes().to_vec();
        assert_eq!(bearer_token(&header("Bearer abc")).unwrap(), b"abc");
        assert_eq!(bearer_token(&header("bearer   abc ")).unwrap(), b"abc");
        assert_eq!(
            bearer_token(&header("BEARER x y\t ")).unwrap(),
            b"x y",
            "the token is what follows the first space"
        );
        assert_eq!(bearer_token(&header("Bearer\tabc")), Err(AuthError::WrongScheme), "a tab does not end the scheme");
        assert_eq!(bearer_token(&header(" Bearer abc")).unwrap(), b"abc");
        assert_eq!(bearer_token(&header("Bearer  \t ")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&header("Bearer abc\u{e9}")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&header("Bearer abc\r\n")), Err(AuthError::Malformed));
        // Whitespace `str::trim` would take but visible ASCII excludes: refused before any trim.
        assert_eq!(bearer_token(&header("Bearer abc\u{b}")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&header("\u{c}Bearer abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(&header("Basic dXNlcg==")), Err(AuthError::WrongScheme));
        assert_eq!(bearer_token(&header("Bearr abc")), Err(AuthError::WrongScheme));
        assert_eq!(bearer_token(&header("abc")), Err(AuthError::WrongScheme));
        assert_eq!(bearer_token(&header("Bearer")), Err(AuthError::Malformed));
    }
}
