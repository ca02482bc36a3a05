//! The dev profile's local token issuer: an Ed25519 key generated under `keys/` on first start,
//! trusted as issuer `media-api-dev`, its JWKS served at `/v1/dev/jwks.json`, and tokens minted with
//! it by `media-api token`, so a first upload needs no identity provider. The production profile
//! refuses it.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::{AuthConfig, DEV_AUDIENCE, DEV_ISSUER};
use crate::crypto::dev_keys::{self, DevKeyError};

/// File name of the dev issuer's signing key (32-byte Ed25519 seed, hex).
pub const DEV_ISSUER_KEY_FILE: &str = "dev-issuer.key";

/// The dev issuer's key pair.
pub struct DevIssuer {
    signing: SigningKey,
    kid: String,
}

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenRequest<'a> {
    /// `sub`.
    pub subject: &'a str,
    /// Tenant, written at the configured claim path.
    pub tenant: &'a str,
    /// `roles`.
    pub roles: &'a [String],
    /// `scope` (space separated).
    pub scopes: &'a [String],
    /// Validity.
    pub ttl: std::time::Duration,
}

impl DevIssuer {
    /// Loads the key from `keys_dir`, generating it (0600, with a warning) on first use.
    pub fn load_or_create(keys_dir: &Path) -> Result<Self, DevKeyError> {
        let text = Zeroizing::new(dev_keys::load_or_create(keys_dir, DEV_ISSUER_KEY_FILE, || {
            hex::encode(SigningKey::generate(&mut rand::rngs::OsRng).to_bytes())
        })?);
        let invalid = || DevKeyError {
            path: keys_dir.join(DEV_ISSUER_KEY_FILE),
            reason: "expected 64 hex characters (an Ed25519 seed)".into(),
        };
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut_slice()).map_err(|_| invalid())?;
        let signing = SigningKey::from_bytes(&seed);
        let kid = hex::encode(&Sha256::digest(signing.verifying_key().as_bytes())[..8]);
        Ok(Self { signing, kid })
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.signing.verifying_key().as_bytes()),
            "kid": self.kid,
            "use": "sig",
            "alg": "EdDSA",
        })
    }

    /// The public key set (`{"keys": [...]}`).
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    /// The public key parsed for verification.
    pub fn verification_key(&self) -> Option<Jwk> {
        serde_json::from_value(self.jwk()).ok()
    }

    /// A token for `request`, for the first audience the service accepts.
    pub fn mint(&self, config: &AuthConfig, request: &TokenRequest<'_>) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": DEV_ISSUER,
            "aud": config.audiences.first().map_or(DEV_AUDIENCE, String::as_str),
            "sub": request.subject,
            "iat": now,
            "nbf": now,
            "exp": now + i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX / 2),
        });
        if !request.roles.is_empty() {
            claims["roles"] = json!(request.roles);
        }
        if !request.scopes.is_empty() {
            claims["scope"] = json!(request.scopes.join(" "));
        }
        set_path(&mut claims, &config.tenant_claim, json!(request.tenant));
        let der = self.signing.to_pkcs8_der().map_err(|_| jsonwebtoken::errors::ErrorKind::InvalidEddsaKey)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(der.as_bytes()))
    }
}

/// Writes `value` at a dotted path, creating objects on the way.
fn set_path(claims: &mut Value, path: &str, value: Value) {
    let mut target = claims;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(object) = target.as_object_mut() else { return };
        if parts.peek().is_none() {
            object.insert(part.to_owned(), value);
            return;
        }
        target = object.entry(part.to_owned()).or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_stable_across_loads_and_tokens_carry_the_tenant_at_the_claim_path() {
        let dir = tempfile::tempdir().unwrap();
        let first = DevIssuer::load_or_create(dir.path()).unwrap();
        let second = DevIssuer::load_or_create(dir.path()).unwrap();
        assert_eq!(first.jwk(), second.jwk());
        let vars = [("AUTH_TENANT_CLAIM".to_owned(), "org.tenant".to_owned())].into_iter().collect();
        let config = crate::config::Config::from_vars(&vars).unwrap().auth;
        let request = TokenRequest {
            subject: "alice",
            tenant: "acme",
            roles: &["uploader".into()],
            scopes: &[],
            ttl: std::time::Duration::from_secs(60),
        };
        let token = first.mint(&config, &request).unwrap();
        let claims: Value = jsonwebtoken::dangerous::insecure_decode(&token).unwrap().claims;
        assert_eq!(claims["org"]["tenant"], "acme");
        assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(DEV_ISSUER), Some(DEV_AUDIENCE)));
        std::fs::write(dir.path().join(DEV_ISSUER_KEY_FILE), "zz").unwrap();
        assert!(DevIssuer::load_or_create(dir.path()).is_err());
    }
}
