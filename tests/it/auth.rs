//! Authentication through real HTTP: the service validates tokens against a JWKS served over a
//! socket by the test, every refusal is a 401/403 with an RFC 6750 challenge, and the handler
//! behind the extractor never runs for a refused request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::{get, MethodRouter};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use media_api::http::extract::{AnyCaller, Authenticated, CanAdmin, CanRead, CanWrite, Requirement};
use media_api::http::state::AppState;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{spawn_app_with, Stack, TestApp};
use crate::support::jwks::{JwksServer, TestKey};

const ISSUER: &str = "https://idp.example/realms/jan";
const AUDIENCE: &str = "media-api";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims of a good token; tests change what they test.
fn claims() -> Value {
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "tenant_id": "acme",
        "exp": now() + 300, "iat": now(), "jti": crate::support::app::random_hex(8),
    })
}

/// A router behind the service's own extractor whose handlers count how often they ran.
struct Probe {
    base: String,
    runs: Arc<AtomicUsize>,
}

fn counting<R: Requirement>(runs: &Arc<AtomicUsize>) -> MethodRouter<AppState> {
    let runs = runs.clone();
    get(move |_: Authenticated<R>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        "ran"
    })
}

impl Probe {
    async fn start(state: AppState) -> Self {
        let runs = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route("/any", counting::<AnyCaller>(&runs))
            .route("/read", counting::<CanRead>(&runs))
            .route("/write", counting::<CanWrite>(&runs))
            .route("/admin", counting::<CanAdmin>(&runs))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            async move { axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await },
        );
        Self { base, runs }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

struct Harness {
    app: TestApp,
    provider: JwksServer,
    key: TestKey,
    probe: Probe,
}

async fn harness_with(key: TestKey, extra: &[(&str, &str)]) -> Harness {
    let provider = JwksServer::start(&[&key]).await;
    let mut vars = vec![
        ("AUTH_ISSUER", ISSUER),
        ("AUTH_AUDIENCE", AUDIENCE),
        ("AUTH_JWKS_URL", provider.url.as_str()),
        ("AUTH_DEV_ISSUER", "false"),
    ];
    vars.extend_from_slice(extra);
    let app = spawn_app_with(Stack::SqliteFs, &vars).await;
    let probe = Probe::start(app.state.clone()).await;
    Harness { app, provider, key, probe }
}

async fn harness(extra: &[(&str, &str)]) -> Harness {
    harness_with(TestKey::generate(), extra).await
}

impl Harness {
    /// `GET /v1/auth/whoami` with this Authorization header value.
    async fn whoami(&self, authorization: Option<&str>) -> reqwest::Response {
        let mut request = self.app.http.get(self.app.url("/v1/auth/whoami"));
        if let Some(value) = authorization {
            request = request.header("Authorization", value);
        }
        request.send().await.unwrap()
    }

    async fn probe(&self, path: &str, token: &str) -> StatusCode {
        let url = format!("{}{path}", self.probe.base);
        self.app.http.get(url).bearer_auth(token).send().await.unwrap().status()
    }

    /// Asserts the refusal on the service's route and that the probe's handler did not run.
    async fn assert_refused(&self, case: &str, authorization: Option<&str>, status: StatusCode, code: &str) {
        let response = self.whoami(authorization).await;
        assert_eq!(response.status(), status, "{case}");
        let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
        let challenge = challenge.unwrap_or_else(|| panic!("{case}: no WWW-Authenticate header"));
        assert!(challenge.starts_with("Bearer realm=\"media-api\""), "{case}: {challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], code, "{case}: {body}");
        assert!(body["request_id"].is_string() && body["error"].is_string(), "{case}: {body}");
        if let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            let before = self.probe.runs();
            let status = self.probe("/any", token).await;
            assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN, "{case}: probe {status}");
            assert_eq!(self.probe.runs(), before, "{case}: the handler ran");
        }
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn a_good_token_reaches_the_handler_and_names_subject_and_tenant() {
    let h = harness(&[]).await;
    let token = h.key.mint(&claims());
    let response = h.whoami(Some(&format!("Bearer {token}"))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["subject"].as_str(), body["tenant"].as_str()), (Some("user-1"), Some("acme")));
    assert_eq!(h.probe("/write", &token).await, StatusCode::OK, "read and write: every valid token by default");
    assert_eq!(h.probe.runs(), 1);
    assert_eq!(h.probe("/admin", &token).await, StatusCode::FORBIDDEN, "admin is never implied");
    assert_eq!(h.probe.runs(), 1);
    for key in [TestKey::rsa(), TestKey::p256()] {
        let h = harness_with(key, &[]).await;
        let token = h.key.mint(&claims());
        assert_eq!(h.whoami(Some(&format!("Bearer {token}"))).await.status(), StatusCode::OK, "{:?}", h.key.alg());
    }
}

#[tokio::test]
async fn every_forged_or_malformed_token_is_refused_before_the_handler() {
    let rsa = TestKey::rsa();
    let ec = TestKey::p256();
    let key = TestKey::generate();
    let h = harness_with(key.clone(), &[]).await;
    h.provider.serve(&[&key, &rsa, &ec]);
    let mut enc_key = TestKey::generate().jwk();
    enc_key["use"] = json!("enc");
    let enc_signer = TestKey::generate();
    enc_key["x"] = enc_signer.jwk()["x"].clone();
    enc_key["kid"] = json!("enc-key");
    h.provider.keys.lock().unwrap().push(enc_key);
    // Make the service see the new set (the unknown kid below triggers one refresh).
    let _ = h.whoami(Some(&format!("Bearer {}", rsa.mint(&claims())))).await;

    let attacker = TestKey::generate();
    let attacker_jwks = JwksServer::start(&[&attacker]).await;
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = claims();
        f(&mut c);
        c
    };
    let good = key.mint(&claims());
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, _sig) = rest.split_once('.').unwrap();

    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push(("alg none", format!("{}.{}.", b64(&json!({"alg": "none", "kid": key.kid})), payload)));
    cases.push(("alg none with a signature", format!("{}.{}.AAAA", b64(&json!({"alg": "none"})), payload)));
    let public_pem = {
        use rsa::pkcs8::EncodePublicKey;
        let public = match &rsa.material {
            crate::support::jwks::Material::Rsa(k) => k.to_public_key(),
            _ => unreachable!(),
        };
        public.to_public_key_pem(rsa::pkcs8::LineEnding::LF).unwrap()
    };
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(rsa.kid.clone());
    let hs_token = jsonwebtoken::encode(&hs, &claims(), &EncodingKey::from_secret(public_pem.as_bytes())).unwrap();
    cases.push(("HS256 signed with the RSA public key", hs_token));
    let mut rs_on_ec = Header::new(Algorithm::RS256);
    rs_on_ec.kid = Some(ec.kid.clone());
    cases.push(("RS256 header on an EC key", rsa.mint_with(&rs_on_ec, &claims())));
    cases.push(("expired", key.mint(&with(&|c| c["exp"] = json!(now() - 3600)))));
    cases.push(("nbf beyond leeway", key.mint(&with(&|c| c["nbf"] = json!(now() + 3600)))));
    cases.push(("exp as a string", key.mint(&with(&|c| c["exp"] = json!((now() + 300).to_string())))));
    cases.push(("nbf as a string", key.mint(&with(&|c| c["nbf"] = json!((now() + 3600).to_string())))));
    cases.push(("wrong iss", key.mint(&with(&|c| c["iss"] = json!("https://evil.example")))));
    cases.push(("missing iss", key.mint(&with(&|c| drop(c.as_object_mut().unwrap().remove("iss"))))));
    cases.push(("wrong aud", key.mint(&with(&|c| c["aud"] = json!("another-api")))));
    cases.push(("missing aud", key.mint(&with(&|c| drop(c.as_object_mut().unwrap().remove("aud"))))));
    cases.push(("missing exp", key.mint(&with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))))));
    cases.push(("unknown kid", TestKey::generate().mint(&claims())));
    cases.push(("kid with ../", attacker.with_kid("../../etc/passwd").mint(&claims())));
    cases.push(("kid with SQL", attacker.with_kid("' OR '1'='1'; DROP TABLE media_objects; --").mint(&claims())));
    let mut jku = attacker.header();
    jku.jku = Some(attacker_jwks.url.clone());
    cases.push(("jku at another JWKS", attacker.mint_with(&jku, &claims())));
    let mut x5u = attacker.header();
    x5u.x5u = Some(attacker_jwks.url.clone());
    cases.push(("x5u at another JWKS", attacker.mint_with(&x5u, &claims())));
    let mut embedded = key.header();
    embedded.jwk = Some(serde_json::from_value(attacker.with_kid(&key.kid).jwk()).unwrap());
    cases.push(("jwk header with the attacker's key", attacker.with_kid(&key.kid).mint_with(&embedded, &claims())));
    let mut crit = key.header();
    crit.crit = Some(vec!["exp".into()]);
    cases.push(("non-empty crit", key.mint_with(&crit, &claims())));
    // 40 KiB: past the token cap (8 KiB), within the request-head limit (64 KiB, 431 beyond).
    cases.push(("40 KiB token", key.mint(&with(&|c| c["pad"] = json!("a".repeat(40 * 1024))))));
    cases.push(("garbage", "not-a-token".into()));
    cases.push(("two parts", format!("{head}.{payload}")));
    cases.push(("signature stripped", format!("{head}.{payload}.")));
    cases.push(("another key, same kid", TestKey::generate().with_kid(&key.kid).mint(&claims())));
    cases.push(("key marked use: enc", enc_signer.with_kid("enc-key").mint(&claims())));
    let mut typ = key.header();
    typ.typ = Some("JWE".into());
    cases.push(("typ not JWT", key.mint_with(&typ, &claims())));
    for (case, token) in &cases {
        h.assert_refused(case, Some(&format!("Bearer {token}")), StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    assert_eq!(attacker_jwks.fetches(), 0, "a URL in a token header is never fetched");

    h.assert_refused("empty token", Some("Bearer "), StatusCode::UNAUTHORIZED, "invalid_token").await;
    h.assert_refused("no header", None, StatusCode::UNAUTHORIZED, "missing_token").await;
    h.assert_refused("misspelled scheme", Some(&format!("Bearr {good}")), StatusCode::UNAUTHORIZED, "invalid_request")
        .await;
    h.assert_refused("no scheme", Some(&good), StatusCode::UNAUTHORIZED, "invalid_request").await;
    let missing = h.whoami(None).await;
    assert_eq!(missing.headers()["www-authenticate"], "Bearer realm=\"media-api\"", "no error code without a token");
    let expired = h.whoami(Some(&format!("Bearer {}", cases[4].1))).await;
    let challenge = expired.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("error=\"invalid_token\"") && challenge.contains("error_description="), "{challenge}");

    let counts: std::collections::HashMap<_, _> = h.app.state.auth.failure_counts().into_iter().collect();
    for reason in ["algorithm", "expired", "not_yet_valid", "issuer", "audience", "claims", "unknown_kid", "signature"]
    {
        assert!(counts[reason] > 0, "no {reason} counted: {counts:?}");
    }
    assert!(counts["key_mismatch"] > 0 && counts["too_large"] > 0 && counts["malformed"] > 0, "{counts:?}");
    assert_eq!(h.whoami(Some(&format!("Bearer {good}"))).await.status(), StatusCode::OK, "the good token still works");
}

#[tokio::test]
async fn permissions_come_from_the_role_maps_and_refusals_say_insufficient_scope() {
    let h = harness(&[
        ("AUTH_READ_ROLES", "viewer,uploader"),
        ("AUTH_WRITE_ROLES", "uploader"),
        ("AUTH_ADMIN_ROLES", "media-admin"),
        ("AUTH_CLIENT_ID", "media-api"),
    ])
    .await;
    let viewer = h.key.mint(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "v", "tenant_id": "acme", "exp": now() + 300,
        "typ": "Bearer", "azp": "web-app",
        "realm_access": {"roles": ["viewer"]},
        "resource_access": {"media-api": {"roles": []}, "other-client": {"roles": ["media-admin", "uploader"]}},
    }));
    assert_eq!(h.probe("/read", &viewer).await, StatusCode::OK);
    let runs = h.probe.runs();
    for path in ["/write", "/admin"] {
        assert_eq!(h.probe(path, &viewer).await, StatusCode::FORBIDDEN, "{path}");
    }
    assert_eq!(h.probe.runs(), runs, "refused handlers did not run");
    let response = h.app.http.get(format!("{}/write", h.probe.base)).bearer_auth(&viewer).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.contains("error=\"insufficient_scope\"") && challenge.contains("media:write"), "{challenge}");

    let keycloak_admin = h.key.mint(&json!({
        "iss": ISSUER, "aud": [AUDIENCE, "account"], "sub": "a", "tenant_id": "acme", "exp": now() + 300,
        "typ": "Bearer", "azp": "media-api",
        "realm_access": {"roles": ["offline_access"]},
        "resource_access": {"media-api": {"roles": ["uploader", "media-admin"]}},
    }));
    let whoami: Value = h.whoami(Some(&format!("Bearer {keycloak_admin}"))).await.json().await.unwrap();
    assert_eq!(whoami["permissions"], json!(["media:read", "media:write", "media:admin"]), "{whoami}");
    assert_eq!(h.probe("/admin", &keycloak_admin).await, StatusCode::OK);
    let scoped = h.key.mint(&json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "svc", "tenant_id": "acme", "exp": now() + 300, "scope": "openid uploader",
    }));
    assert_eq!(h.probe("/write", &scoped).await, StatusCode::FORBIDDEN, "a scope never matches AUTH_WRITE_ROLES");
}

#[tokio::test]
async fn a_token_without_a_tenant_is_refused_unless_a_default_tenant_is_set() {
    let h = harness(&[]).await;
    let no_tenant = h.key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now() + 300}));
    h.assert_refused("no tenant", Some(&format!("Bearer {no_tenant}")), StatusCode::FORBIDDEN, "no_tenant").await;
    let bad = h.key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now() + 300, "tenant_id": "../x"}));
    h.assert_refused("bad tenant", Some(&format!("Bearer {bad}")), StatusCode::FORBIDDEN, "invalid_tenant").await;

    let h = harness(&[("MEDIA_DEFAULT_TENANT", "main"), ("AUTH_TENANT_CLAIM", "org.tenant")]).await;
    let token = h.key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now() + 300}));
    let body: Value = h.whoami(Some(&format!("Bearer {token}"))).await.json().await.unwrap();
    assert_eq!(body["tenant"], "main");
    let nested =
        h.key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "exp": now() + 300, "org": {"tenant": "t9"}}));
    let body: Value = h.whoami(Some(&format!("Bearer {nested}"))).await.json().await.unwrap();
    assert_eq!(body["tenant"], "t9", "dotted claim path");
}

#[tokio::test]
async fn two_hundred_unknown_kids_in_a_second_cause_at_most_one_fetch() {
    let h = harness(&[]).await;
    let before = h.provider.fetches();
    let tokens: Vec<String> = (0..200).map(|_| TestKey::generate().mint(&claims())).collect();
    let requests = tokens.iter().map(|t| h.app.http.get(h.app.url("/v1/auth/whoami")).bearer_auth(t).send());
    let responses = futures::future::join_all(requests).await;
    assert!(responses.iter().all(|r| r.as_ref().unwrap().status() == StatusCode::UNAUTHORIZED));
    assert!(h.provider.fetches() - before <= 1, "{} fetches", h.provider.fetches() - before);
}

#[tokio::test]
async fn a_rotated_provider_key_is_picked_up_and_cached_keys_survive_the_provider_going_down() {
    let h = harness(&[]).await;
    let old = h.key.mint(&claims());
    assert_eq!(h.whoami(Some(&format!("Bearer {old}"))).await.status(), StatusCode::OK);

    let rotated = TestKey::generate();
    h.provider.serve(&[&h.key, &rotated]);
    let fresh = rotated.mint(&claims());
    assert_eq!(h.whoami(Some(&format!("Bearer {fresh}"))).await.status(), StatusCode::OK, "new kid without restart");

    h.provider.set_down(true);
    for key in [&h.key, &rotated] {
        let token = key.mint(&claims());
        assert_eq!(h.whoami(Some(&format!("Bearer {token}"))).await.status(), StatusCode::OK, "cached key while down");
    }
    let unknown = TestKey::generate().mint(&claims());
    assert_eq!(h.whoami(Some(&format!("Bearer {unknown}"))).await.status(), StatusCode::UNAUTHORIZED);
    let ready = h.app.http.get(h.app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "the last good key set keeps the service ready");
}

#[tokio::test]
async fn a_provider_down_at_start_does_not_stop_the_service_and_readyz_says_so() {
    let key = TestKey::generate();
    let provider = JwksServer::start(&[&key]).await;
    provider.set_down(true);
    let app = spawn_app_with(
        Stack::SqliteFs,
        &[
            ("AUTH_ISSUER", ISSUER),
            ("AUTH_AUDIENCE", AUDIENCE),
            ("AUTH_JWKS_URL", &provider.url),
            ("AUTH_DEV_ISSUER", "false"),
            ("AUTH_JWKS_REFRESH", "1s"),
        ],
    )
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"][format!("jwks:{ISSUER}")], "down", "{body}");
    let token = key.mint(&claims());
    let response = app.http.get(app.url("/v1/auth/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "auth_unavailable");

    provider.set_down(false);
    let mut ready = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..100 {
        ready = app.http.get(app.url("/readyz")).send().await.unwrap().status();
        if ready == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ready, StatusCode::OK, "the background refresh loads the keys once the provider is back");
    let response = app.http.get(app.url("/v1/auth/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn keys_are_found_by_oidc_discovery_when_no_jwks_url_is_set() {
    let key = TestKey::generate();
    let provider = JwksServer::start(&[&key]).await;
    let app = spawn_app_with(
        Stack::SqliteFs,
        &[("AUTH_ISSUER", &provider.base), ("AUTH_AUDIENCE", AUDIENCE), ("AUTH_DEV_ISSUER", "false")],
    )
    .await;
    let mut c = claims();
    c["iss"] = json!(provider.base);
    let response = app.http.get(app.url("/v1/auth/whoami")).bearer_auth(key.mint(&c)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(provider.fetches(), 1);
}

#[tokio::test]
async fn optional_mode_lets_anonymous_callers_in_but_still_refuses_bad_tokens() {
    let h =
        harness(&[("AUTH_MODE", "optional"), ("MEDIA_DEFAULT_TENANT", "public"), ("AUTH_ADMIN_ROLES", "admin")]).await;
    let body: Value = h.whoami(None).await.json().await.unwrap();
    assert_eq!((body["anonymous"].as_bool(), body["tenant"].as_str()), (Some(true), Some("public")));
    assert_eq!(body["permissions"], json!(["media:read", "media:write"]), "never admin without a token");
    let expired =
        h.key.mint(&json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "tenant_id": "t", "exp": now() - 3600}));
    h.assert_refused(
        "bad token in optional mode",
        Some(&format!("Bearer {expired}")),
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;

    let disabled = spawn_app_with(Stack::SqliteFs, &[("AUTH_MODE", "disabled")]).await;
    let body: Value = disabled.http.get(disabled.url("/v1/auth/whoami")).send().await.unwrap().json().await.unwrap();
    assert_eq!(body["tenant"], "default");
    assert_eq!(body["permissions"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn refusals_are_audited_but_a_flood_from_one_address_is_capped() {
    let h = harness(&[]).await;
    for _ in 0..40 {
        assert_eq!(h.whoami(Some("Bearer garbage")).await.status(), StatusCode::UNAUTHORIZED);
    }
    let db = &h.app.state.db;
    let mut events = 0;
    for _ in 0..50 {
        events = media_api::db::audit::count_kind(db, "auth.refused").await.unwrap();
        if events >= 10 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let settled = media_api::db::audit::count_kind(db, "auth.refused").await.unwrap();
    assert_eq!((events, settled), (10, 10), "10 events per source address per minute, not 40");
    let report = media_api::db::audit::AuditLog::new(h.app.state.keys.clone()).verify(None).await.unwrap();
    assert!(report.broken.is_empty(), "{report:?}");
}

#[tokio::test]
async fn the_dev_issuer_serves_its_jwks_and_the_token_command_mints_accepted_tokens() {
    let app = spawn_app_with(Stack::SqliteFs, &[]).await;
    let jwks: Value = app.http.get(app.url("/v1/dev/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert!(jwks["keys"][0].get("d").is_none(), "public key only");

    let keys_dir = app.dir.path().join("keys");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
        .args(["token", "--tenant", "acme", "--sub", "alice", "--roles", "uploader,viewer", "--ttl", "10m"])
        .env_clear()
        .env("MEDIA_KEYS_DIR", &keys_dir)
        .env("MEDIA_DATA_DIR", app.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let response = app.http.get(app.url("/v1/auth/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["tenant"].as_str(), body["subject"].as_str()), (Some("acme"), Some("alice")));
    assert_eq!(body["roles"], json!(["uploader", "viewer"]));

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
        .args(["token", "--tenant", "acme", "--sub", "alice"])
        .env_clear()
        .env("MEDIA_KEYS_DIR", &keys_dir)
        .env("AUTH_DEV_ISSUER", "false")
        .env("AUTH_ISSUER", ISSUER)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("dev token issuer is off"));

    let provider = JwksServer::start(&[&TestKey::generate()]).await;
    let vars = [("AUTH_ISSUER", ISSUER), ("AUTH_JWKS_URL", provider.url.as_str()), ("AUTH_DEV_ISSUER", "false")];
    let production = spawn_app_with(Stack::SqliteFs, &vars).await;
    let status = production.http.get(production.url("/v1/dev/jwks.json")).send().await.unwrap().status();
    assert_eq!(status, StatusCode::NOT_FOUND, "no dev JWKS without the dev issuer");
    let response = production.http.get(production.url("/v1/auth/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "dev tokens are not accepted without the dev issuer");
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_stops_accepting_tokens_it_verified_before() {
    let h = harness(&[("AUTH_JWKS_REFRESH", "1s")]).await;
    let token = h.key.mint(&claims());
    assert_eq!(h.whoami(Some(&format!("Bearer {token}"))).await.status(), StatusCode::OK);
    let replacement = TestKey::generate().with_kid(&h.key.kid);
    h.provider.serve(&[&replacement]);
    let before = h.provider.fetches();
    for _ in 0..50 {
        if h.provider.fetches() > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let status = h.whoami(Some(&format!("Bearer {token}"))).await.status();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the verified-token cache was cleared when the key changed");
    let fresh = replacement.mint(&claims());
    assert_eq!(h.whoami(Some(&format!("Bearer {fresh}"))).await.status(), StatusCode::OK);
}
