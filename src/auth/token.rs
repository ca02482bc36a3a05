//! Reading a compact JWS before and after its signature is checked.
//!
//! [`inspect`] runs the checks that come before any key is looked up: the size cap, the shape (three
//! non-empty base64url parts), the header (`alg` accepted, `typ` absent/`JWT`/`at+jwt`, no `crit`,
//! a sane `kid`) and the unverified `iss`, which only selects one of the configured issuers. Header
//! parameters that point at keys (`jku`, `x5u`, `jwk`, `x5c`) are ignored: keys come only from the
//! configured issuer's JWKS. [`verify`] then checks the signature and the claims with
//! `jsonwebtoken` (`exp`, `iss`, `aud` required, `nbf` checked, leeway from config).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde_json::Value;

use super::jwks::VerifyKey;
use super::AuthError;

/// Longest token accepted (checked before any decoding).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest `kid` accepted.
const MAX_KID_BYTES: usize = 256;

/// What is known of a token before its signature is checked.
#[derive(Debug)]
pub struct Inspected {
    /// The parsed header.
    pub header: Header,
    /// The claimed issuer (unverified: it only picks which keys to try).
    pub issuer: String,
}

/// The pre-signature checks (see the module docs).
pub fn inspect(token: &str, algorithms: &[Algorithm]) -> Result<Inspected, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    let header_json: Value = decode_part(header)?;
    if header_json.get("alg").and_then(Value::as_str).is_none_or(|alg| alg.eq_ignore_ascii_case("none")) {
        return Err(AuthError::Algorithm);
    }
    let header: Header = serde_json::from_value(header_json).map_err(|_| AuthError::Algorithm)?;
    check_header(&header, algorithms)?;
    let claims: Value = decode_part(payload)?;
    let issuer = match claims.get("iss") {
        Some(Value::String(iss)) => iss.clone(),
        Some(_) => return Err(AuthError::Claims("the `iss` claim must be a string")),
        None => return Err(AuthError::Claims("the token has no `iss` claim")),
    };
    Ok(Inspected { header, issuer })
}

fn decode_part(part: &str) -> Result<Value, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        _ => Err(AuthError::Malformed),
    }
}

fn check_header(header: &Header, algorithms: &[Algorithm]) -> Result<(), AuthError> {
    if !algorithms.contains(&header.alg) {
        return Err(AuthError::Algorithm);
    }
    if let Some(typ) = &header.typ {
        let typ = typ.to_ascii_lowercase();
        if !matches!(typ.as_str(), "jwt" | "at+jwt" | "application/jwt" | "application/at+jwt") {
            return Err(AuthError::Header("the token's typ must be JWT or at+jwt"));
        }
    }
    if header.crit.as_ref().is_some_and(|crit| !crit.is_empty()) {
        return Err(AuthError::Header("the token names critical header parameters this service does not support"));
    }
    if header.kid.as_ref().is_some_and(|kid| kid.is_empty() || kid.len() > MAX_KID_BYTES) {
        return Err(AuthError::Header("the token's kid is empty or too long"));
    }
    Ok(())
}

/// The validation rules for one algorithm: `exp`, `iss`, `aud` required, `nbf` checked.
pub fn validation(alg: Algorithm, issuers: &[String], audiences: &[String], leeway_secs: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(issuers);
    validation.set_audience(audiences);
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.leeway = leeway_secs;
    validation
}

/// Checks the signature with `key` and the claims with `validation`; returns the claims.
pub fn verify(token: &str, key: &VerifyKey, validation: &Validation) -> Result<Value, AuthError> {
    jsonwebtoken::decode::<Value>(token, &key.decoding, validation).map(|data| data.claims).map_err(|err| {
        match err.kind() {
            ErrorKind::InvalidSignature => AuthError::Signature,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidIssuer => AuthError::Issuer,
            ErrorKind::InvalidAudience => AuthError::Audience,
            ErrorKind::MissingRequiredClaim(_) => {
                AuthError::Claims("the token lacks a required claim (exp, iss or aud)")
            }
            ErrorKind::InvalidClaimFormat(_) => AuthError::Claims("a time or audience claim has the wrong type"),
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::KeyMismatch,
            ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
                AuthError::KeyMismatch
            }
            _ => AuthError::Malformed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn part(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(value.to_string())
    }

    fn token(header: Value, claims: Value) -> String {
        format!("{}.{}.c2ln", part(&header), part(&claims))
    }

    const ALGS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::EdDSA];

    #[test]
    fn shape_size_and_header_are_checked_before_any_key() {
        let claims = json!({"iss": "i"});
        let ok = inspect(&token(json!({"alg": "EdDSA", "kid": "k"}), claims.clone()), &ALGS).unwrap();
        assert_eq!((ok.issuer.as_str(), ok.header.kid.as_deref()), ("i", Some("k")));
        let cases: Vec<(String, AuthError)> = vec![
            ("x".repeat(MAX_TOKEN_BYTES + 1), AuthError::TooLarge),
            (String::new(), AuthError::Malformed),
            ("a.b".into(), AuthError::Malformed),
            ("a.b.c.d".into(), AuthError::Malformed),
            (format!("{}.{}.", part(&json!({"alg":"EdDSA"})), part(&claims)), AuthError::Malformed),
            ("!!!.###.$$$".into(), AuthError::Malformed),
            (token(json!({"alg": "none"}), claims.clone()), AuthError::Algorithm),
            (token(json!({"alg": "HS256"}), claims.clone()), AuthError::Algorithm),
            (token(json!({"alg": "ES256"}), claims.clone()), AuthError::Algorithm),
            (token(json!({"alg": "EdDSA", "typ": "JOSE+JSON"}), claims.clone()), AuthError::Header("")),
            (token(json!({"alg": "EdDSA", "crit": ["exp"]}), claims.clone()), AuthError::Header("")),
            (token(json!({"alg": "EdDSA", "kid": "k".repeat(300)}), claims.clone()), AuthError::Header("")),
            (token(json!({"alg": "EdDSA"}), json!({"sub": "x"})), AuthError::Claims("")),
            (token(json!({"alg": "EdDSA"}), json!({"iss": 7})), AuthError::Claims("")),
        ];
        for (token, expected) in cases {
            let got = inspect(&token, &ALGS).unwrap_err();
            assert_eq!(got.reason(), expected.reason(), "{token:.80}");
        }
        for typ in ["JWT", "at+jwt", "application/at+JWT"] {
            assert!(inspect(&token(json!({"alg": "EdDSA", "typ": typ}), claims.clone()), &ALGS).is_ok(), "{typ}");
        }
    }
}
