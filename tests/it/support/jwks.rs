//! A JWKS (and OIDC discovery document) served over a real socket from keys the test generates, and
//! tokens minted with them: what the authentication tests use in place of an OIDC provider.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// The private half of a test key.
#[derive(Clone)]
pub enum Material {
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
}

/// One signing key with its `kid`.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub material: Material,
}

/// RSA key generation is slow in debug builds: one key per test binary, under different kids.
fn shared_rsa() -> rsa::RsaPrivateKey {
    static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa key")).clone()
}

impl TestKey {
    /// A new Ed25519 key.
    pub fn generate() -> Self {
        Self::with(Material::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)))
    }

    /// The test binary's RSA key under a new kid.
    pub fn rsa() -> Self {
        Self::with(Material::Rsa(Box::new(shared_rsa())))
    }

    /// A new P-256 key.
    pub fn p256() -> Self {
        Self::with(Material::P256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)))
    }

    fn with(material: Material) -> Self {
        Self { kid: crate::support::app::random_hex(8), material }
    }

    /// The same key material under another kid (or another key under this kid, with `with_kid`).
    pub fn with_kid(&self, kid: &str) -> Self {
        Self { kid: kid.to_owned(), material: self.material.clone() }
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        match self.material {
            Material::Ed25519(_) => Algorithm::EdDSA,
            Material::Rsa(_) => Algorithm::RS256,
            Material::P256(_) => Algorithm::ES256,
        }
    }

    /// The public JWK (`use: sig`, `alg` set).
    pub fn jwk(&self) -> Value {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let mut jwk = match &self.material {
            Material::Ed25519(key) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes())}),
            Material::Rsa(key) => {
                json!({"kty": "RSA", "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be())})
            }
            Material::P256(key) => {
                let point = key.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
            }
        };
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk["alg"] = json!(format!("{:?}", self.alg()));
        jwk
    }

    pub fn encoding_key(&self) -> EncodingKey {
        match &self.material {
            Material::Ed25519(key) => EncodingKey::from_ed_der(key.to_pkcs8_der().unwrap().as_bytes()),
            Material::Rsa(key) => EncodingKey::from_rsa_der(key.to_pkcs1_der().unwrap().as_bytes()),
            Material::P256(key) => {
                use p256::pkcs8::EncodePrivateKey;
                EncodingKey::from_ec_der(key.to_pkcs8_der().unwrap().as_bytes())
            }
        }
    }

    /// The default header: this key's algorithm and kid.
    pub fn header(&self) -> Header {
        let mut header = Header::new(self.alg());
        header.kid = Some(self.kid.clone());
        header
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn mint(&self, claims: &Value) -> String {
        self.mint_with(&self.header(), claims)
    }

    /// Signs `claims` with this key under `header`.
    pub fn mint_with(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding_key()).expect("sign token")
    }
}

/// A JWKS endpoint on 127.0.0.1 whose key set a test can change, or take down, while it runs; it
/// also serves an OIDC discovery document naming its base URL as the issuer. Counts JWKS fetches.
pub struct JwksServer {
    /// Base URL (the issuer for discovery), without a trailing slash.
    pub base: String,
    /// The JWKS URL.
    pub url: String,
    pub keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl JwksServer {
    pub async fn start(keys: &[&TestKey]) -> Self {
        Self::start_with(keys.iter().map(|k| k.jwk()).collect()).await
    }

    /// Serves these JWKs as they are (for keys a test shapes itself).
    pub async fn start_with(jwks: Vec<Value>) -> Self {
        let keys = Arc::new(Mutex::new(jwks));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (served, counter, is_down) = (keys.clone(), fetches.clone(), down.clone());
        let jwks = get(move || {
            let (served, counter, is_down) = (served.clone(), counter.clone(), is_down.clone());
            async move {
                if is_down.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
                counter.fetch_add(1, Ordering::SeqCst);
                Json(json!({ "keys": *served.lock().unwrap() })).into_response()
            }
        });
        let discovery = json!({ "issuer": base, "jwks_uri": format!("{base}/jwks.json") });
        let router = Router::new()
            .route("/jwks.json", jwks)
            .route("/.well-known/openid-configuration", get(move || async move { Json(discovery) }));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url: format!("{base}/jwks.json"), base, keys, fetches, down }
    }

    /// JWKS fetches answered so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Makes the endpoint answer 503 (or serve again).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Replaces the served key set.
    pub fn serve(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }
}
