//! The test JWKS server itself: tokens it mints verify against the key set it serves.

use serde_json::{json, Value};

use crate::support::jwks::{JwksServer, TestKey};

#[tokio::test]
async fn tokens_minted_by_the_helper_verify_against_the_served_jwks() {
    for key in [TestKey::generate(), TestKey::rsa(), TestKey::p256()] {
        let server = JwksServer::start(&[&key]).await;
        let now = chrono::Utc::now().timestamp();
        let token = key.mint(&json!({ "sub": "u1", "iss": "test", "aud": "media-api", "exp": now + 60 }));
        let set: jsonwebtoken::jwk::JwkSet =
            reqwest::Client::new().get(&server.url).send().await.unwrap().json().await.unwrap();
        assert_eq!(server.fetches(), 1);
        let decoding = jsonwebtoken::DecodingKey::from_jwk(set.find(&key.kid).expect("kid served")).unwrap();
        let mut validation = jsonwebtoken::Validation::new(key.alg());
        validation.set_audience(&["media-api"]);
        validation.set_issuer(&["test"]);
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).expect("valid token");
        assert_eq!(data.claims["sub"], "u1");
    }
}
