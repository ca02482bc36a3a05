//! A JWKS served over a real socket from keys the test generates, and tokens minted with them: what
//! the authentication tests use in place of an OIDC provider.

use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// One Ed25519 signing key with its `kid`.
pub struct TestKey {
    pub kid: String,
    signing: SigningKey,
}

impl TestKey {
    pub fn generate() -> Self {
        Self { kid: crate::helpers::random_hex(8), signing: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    /// The public JWK (`OKP`/`Ed25519`, `use: sig`, `alg: EdDSA`).
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

    /// Signs `claims` with this key, `kid` in the header.
    pub fn mint(&self, claims: &Value) -> String {
        let der = self.signing.to_pkcs8_der().expect("pkcs8");
        let key = EncodingKey::from_ed_der(der.as_bytes());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &key).expect("sign token")
    }
}

/// A JWKS endpoint on 127.0.0.1 whose key set a test can change while it runs; counts fetches.
pub struct JwksServer {
    pub url: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    pub fetches: Arc<Mutex<usize>>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let keys = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()));
        let fetches = Arc::new(Mutex::new(0usize));
        let (served, counter) = (keys.clone(), fetches.clone());
        let router = Router::new().route(
            "/jwks.json",
            get(move || {
                let (served, counter) = (served.clone(), counter.clone());
                async move {
                    *counter.lock().unwrap() += 1;
                    Json(json!({ "keys": *served.lock().unwrap() }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, keys, fetches }
    }
}

#[tokio::test]
async fn tokens_minted_by_the_helper_verify_against_the_served_jwks() {
    let key = TestKey::generate();
    let server = JwksServer::start(&[&key]).await;
    let now = chrono::Utc::now().timestamp();
    let token = key.mint(&json!({ "sub": "u1", "iss": "test", "aud": "media-api", "exp": now + 60 }));

    let set: jsonwebtoken::jwk::JwkSet =
        reqwest::Client::new().get(&server.url).send().await.unwrap().json().await.unwrap();
    assert_eq!(*server.fetches.lock().unwrap(), 1);
    let jwk = set.find(&key.kid).expect("kid served");
    let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["media-api"]);
    validation.set_issuer(&["test"]);
    let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("valid token");
    assert_eq!(data.claims["sub"], "u1");

    let other = TestKey { kid: key.kid.clone(), ..TestKey::generate() };
    let forged = other.mint(&json!({ "sub": "u1", "iss": "test", "aud": "media-api", "exp": now + 60 }));
    assert!(jsonwebtoken::decode::<Value>(&forged, &decoding, &validation).is_err(), "another key's signature");

    let rotated = TestKey::generate();
    *server.keys.lock().unwrap() = vec![rotated.jwk()];
    let set: jsonwebtoken::jwk::JwkSet =
        reqwest::Client::new().get(&server.url).send().await.unwrap().json().await.unwrap();
    assert!(set.find(&key.kid).is_none() && set.find(&rotated.kid).is_some(), "the served set can be rotated");
    assert_eq!(*server.fetches.lock().unwrap(), 2);
}
