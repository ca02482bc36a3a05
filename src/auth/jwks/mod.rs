//! Signing keys: a parsed, filtered [`KeySet`] and the per-issuer [`JwksCache`] that keeps one fresh.
//!
//! Parsing drops what must never verify a token: symmetric (`oct`) keys, keys whose `use` is not
//! `sig`, and keys this crate cannot read. Lookup checks that the key's type (and `alg`, when the
//! JWK has one) fits the token's algorithm, so an RS256 header cannot be checked against an EC key.
//!
//! The cache is fetched at start, refreshed every `AUTH_JWKS_REFRESH`, and refreshed when a token
//! names an unknown `kid` — at most once per [`ON_DEMAND_INTERVAL`], by one fetch that concurrent
//! requests wait for (bounded by the fetch timeout). Unknown kids are remembered for that interval,
//! so a flood of made-up kids costs a map lookup each. A failed fetch keeps the last good set.

mod cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AuthError;

pub use cache::{http_client, CacheStatus, JwksCache, KeySource};

/// Shortest time between two refreshes caused by unknown kids.
pub const ON_DEMAND_INTERVAL: Duration = Duration::from_secs(30);
/// Timeout of one JWKS or discovery fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS or discovery document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most unknown kids remembered per issuer (the memory is cleared when full).
pub(super) const MAX_UNKNOWN_KIDS: usize = 4096;

/// The kind of public key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA: RS* and PS*.
    Rsa,
    /// EC on P-256: ES256.
    P256,
    /// EC on P-384: ES384.
    P384,
    /// Ed25519: EdDSA.
    Ed25519,
}

impl KeyKind {
    fn of(jwk: &Jwk) -> Option<Self> {
        match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Self::Rsa),
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => Some(Self::P256),
                EllipticCurve::P384 => Some(Self::P384),
                _ => None,
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Some(Self::Ed25519),
            _ => None,
        }
    }

    /// Whether a key of this kind may verify `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            Self::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Self::P256 => alg == ES256,
            Self::P384 => alg == ES384,
            Self::Ed25519 => alg == EdDSA,
        }
    }
}

/// One usable verification key.
pub struct VerifyKey {
    /// Its `kid`, if it has one.
    pub kid: Option<String>,
    /// Its type.
    pub kind: KeyKind,
    /// Its `alg`, when the JWK pins one.
    pub alg: Option<String>,
    /// The key itself.
    pub decoding: DecodingKey,
}

impl VerifyKey {
    fn fits(&self, alg: Algorithm) -> bool {
        self.kind.fits(alg) && self.alg.as_deref().is_none_or(|pinned| pinned == format!("{alg:?}"))
    }
}

/// A parsed key set.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    by_kid: HashMap<String, Arc<VerifyKey>>,
    /// SHA-256 over every usable key (kid, type, alg and key material), in order: two sets with the
    /// same fingerprint verify exactly the same tokens.
    fingerprint: [u8; 32],
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`), dropping every key that must not or cannot verify.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        let value: Value = serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
        let keys = value.get("keys").and_then(Value::as_array).ok_or("no `keys` array")?;
        Ok(Self::from_jwks(keys.iter().filter_map(usable_key)))
    }

    /// A set of already-parsed keys.
    pub fn from_jwks(jwks: impl IntoIterator<Item = Jwk>) -> Self {
        let mut set = Self::default();
        let mut fingerprint = Sha256::new();
        for jwk in jwks {
            let Some(kind) = KeyKind::of(&jwk) else { continue };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else { continue };
            fingerprint.update(serde_json::to_vec(&jwk).unwrap_or_default());
            fingerprint.update([0]);
            let key = Arc::new(VerifyKey {
                kid: jwk.common.key_id.clone(),
                kind,
                alg: jwk.common.key_algorithm.map(|a| a.to_string()),
                decoding,
            });
            if let Some(kid) = &key.kid {
                set.by_kid.insert(kid.clone(), key.clone());
            }
            set.keys.push(key);
        }
        set.fingerprint = fingerprint.finalize().into();
        set
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token: by `kid`, or — for a token without one — the only key fitting `alg`.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyKey>, AuthError> {
        let key = match kid {
            Some(kid) => self.by_kid.get(kid).ok_or(AuthError::UnknownKey)?.clone(),
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => return Ok(key.clone()),
                    _ => return Err(AuthError::Header("the token has no kid and the issuer has several keys")),
                }
            }
        };
        if key.fits(alg) {
            Ok(key)
        } else {
            Err(AuthError::KeyMismatch)
        }
    }
}

/// A JWK from a JWKS entry, or `None` when it must not be used for signatures.
fn usable_key(value: &Value) -> Option<Jwk> {
    if value.get("kty").and_then(Value::as_str) == Some("oct") {
        return None;
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => Some(jwk),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ed_jwk(kid: &str, extra: Value) -> Value {
        let mut jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        jwk.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        jwk
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped_and_types_must_fit() {
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            ed_jwk("enc", json!({"use": "enc"})),
            ed_jwk("sig", json!({"use": "sig", "alg": "EdDSA"})),
            ed_jwk("pinned-wrong", json!({"alg": "ES256"})),
            {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "nonsense"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(matches!(set.find(Some("hmac"), Algorithm::EdDSA), Err(AuthError::UnknownKey)));
        assert!(matches!(set.find(Some("enc"), Algorithm::EdDSA), Err(AuthError::UnknownKey)));
        assert!(set.find(Some("sig"), Algorithm::EdDSA).is_ok());
        assert!(matches!(set.find(Some("sig"), Algorithm::RS256), Err(AuthError::KeyMismatch)));
        assert!(matches!(set.find(Some("pinned-wrong"), Algorithm::EdDSA), Err(AuthError::KeyMismatch)));
        let only = set.find(None, Algorithm::EdDSA).unwrap();
        assert_eq!(only.kid.as_deref(), Some("sig"), "without a kid, the one fitting key is used");
        let two = json!({"keys": [ed_jwk("a", json!({})), ed_jwk("b", json!({}))]});
        let two = KeySet::parse(two.to_string().as_bytes()).unwrap();
        assert!(matches!(two.find(None, Algorithm::EdDSA), Err(AuthError::Header(_))), "two fitting keys, no kid");
        assert!(KeySet::parse(b"{}").is_err() && KeySet::parse(b"not json").is_err());
    }
}
