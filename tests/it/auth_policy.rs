//! Who may assert and hold what, through real HTTP and JWKS served over sockets: issuers bound to
//! their tenants (`AUTH_ISSUER_TENANTS`), the dev issuer's trust once a real issuer is configured,
//! readiness with several issuers, and roles and scopes granting apart.

use media_api::db::Database;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{spawn_app_with, Stack};
use crate::support::jwks::{JwksServer, TestKey};
use crate::support::media::{json_of, media_app, png, MediaApp};

const ISSUER_A: &str = "https://a.example/realms/one";
const ISSUER_B: &str = "https://b.example/realms/two";

/// A token of `issuer` for `tenant`, signed with `key`.
fn token(key: &TestKey, issuer: &str, tenant: &str, sub: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    key.mint(&json!({"iss": issuer, "aud": "media-api", "sub": sub, "tenant_id": tenant, "exp": now + 300}))
}

/// Two issuers with their own keys and JWKS servers.
struct Issuers {
    a: TestKey,
    b: TestKey,
    jwks_a: JwksServer,
    jwks_b: JwksServer,
}

impl Issuers {
    async fn start() -> Self {
        let (a, b) = (TestKey::generate(), TestKey::generate());
        let (jwks_a, jwks_b) = (JwksServer::start(&[&a]).await, JwksServer::start(&[&b]).await);
        Self { a, b, jwks_a, jwks_b }
    }

    fn urls(&self) -> String {
        format!("{},{}", self.jwks_a.url, self.jwks_b.url)
    }
}

async fn whoami(m: &MediaApp, token: &str) -> (StatusCode, Value) {
    json_of(m.get(token, "/v1/auth/whoami").send().await.unwrap()).await
}

/// The `reason` of every `auth.refused` event so far (the embedded database).
async fn refused_reasons(m: &MediaApp) -> Vec<String> {
    let Database::Sqlite(pool) = &m.app.state.db else { panic!("these tests run on the embedded stack") };
    let rows: Vec<String> = sqlx::query_scalar("SELECT details FROM audit_events WHERE kind = 'auth.refused'")
        .fetch_all(pool)
        .await
        .unwrap();
    rows.iter().map(|d| serde_json::from_str::<Value>(d).unwrap()["reason"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn an_issuer_asserting_a_tenant_bound_to_another_is_refused_403_and_nothing_is_stored() {
    let idp = Issuers::start().await;
    let issuers = format!("{ISSUER_A},{ISSUER_B}");
    let binding = format!("{ISSUER_A}=acme,beta-*;{ISSUER_B}=globex");
    let urls = idp.urls();
    let m = media_app(
        Stack::SqliteFs,
        &[("AUTH_ISSUER", &issuers), ("AUTH_JWKS_URL", &urls), ("AUTH_ISSUER_TENANTS", &binding)],
    )
    .await;

    let foreign = token(&idp.a, ISSUER_A, "globex", "mallory");
    let response = m.upload_raw(&foreign, "image/png", png(600, 1)).await;
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = json_of(response).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::FORBIDDEN, Some("tenant_not_allowed")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("not allowed to assert this tenant"), "{body}");
    assert!(challenge.unwrap().contains("error=\"insufficient_scope\""), "a 403 challenge, not invalid_token");
    assert_eq!(m.counts().await, (0, 0), "nothing stored for the refused upload");
    let mut reasons = Vec::new();
    for _ in 0..100 {
        reasons = refused_reasons(&m).await;
        if !reasons.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(reasons, ["tenant_not_allowed"], "the refusal is audited with its reason");

    for (key, issuer, tenant, expected) in [
        (&idp.a, ISSUER_A, "acme", StatusCode::OK),
        (&idp.a, ISSUER_A, "beta-7", StatusCode::OK),
        (&idp.a, ISSUER_A, "beta", StatusCode::FORBIDDEN),
        (&idp.a, ISSUER_A, "acme-2", StatusCode::FORBIDDEN),
        (&idp.b, ISSUER_B, "globex", StatusCode::OK),
        (&idp.b, ISSUER_B, "acme", StatusCode::FORBIDDEN),
    ] {
        let (status, body) = whoami(&m, &token(key, issuer, tenant, "u")).await;
        assert_eq!(status, expected, "{issuer} asserting {tenant}: {body}");
        if status == StatusCode::OK {
            assert_eq!(body["tenant"], tenant);
        } else {
            assert_eq!(body["code"], "tenant_not_allowed", "{body}");
        }
    }
    let own = token(&idp.a, ISSUER_A, "acme", "alice");
    let (status, body) = json_of(m.upload_raw(&own, "image/png", png(600, 2)).await).await;
    assert_eq!(status, StatusCode::OK, "the issuer's own tenant uploads: {body}");
    assert_eq!(m.counts().await, (1, 1));
    let counts: std::collections::HashMap<_, _> = m.app.state.auth.failure_counts().into_iter().collect();
    assert_eq!(counts["tenant_not_allowed"], 4, "{counts:?}");
}

#[tokio::test]
async fn dev_tokens_are_refused_once_a_real_issuer_is_configured_unless_the_dev_issuer_is_asked_for() {
    let idp = Issuers::start().await;
    let real = [("AUTH_ISSUER", ISSUER_A), ("AUTH_JWKS_URL", idp.jwks_a.url.as_str())];
    let m = media_app(Stack::SqliteFs, &real).await;
    let (status, body) = whoami(&m, &m.alice()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")), "{body}");
    let jwks = m.http().get(m.url("/v1/dev/jwks.json")).send().await.unwrap();
    assert_eq!(jwks.status(), StatusCode::NOT_FOUND, "the dev JWKS is not served");
    assert_eq!(m.upload_raw(&m.alice(), "image/png", png(600, 3)).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(m.counts().await, (0, 0));
    assert_eq!(whoami(&m, &token(&idp.a, ISSUER_A, "acme", "u")).await.0, StatusCode::OK, "the real issuer works");

    let mut asked = real.to_vec();
    asked.push(("AUTH_DEV_ISSUER", "true"));
    let m = media_app(Stack::SqliteFs, &asked).await;
    let (status, body) = whoami(&m, &m.alice()).await;
    assert_eq!((status, body["issuer"].as_str()), (StatusCode::OK, Some("media-api-dev")), "{body}");
    assert_eq!(whoami(&m, &token(&idp.a, ISSUER_A, "acme", "u")).await.0, StatusCode::OK, "both are trusted");
}

#[tokio::test]
async fn with_one_of_two_issuers_down_readyz_is_degraded_and_the_other_issuers_tokens_work() {
    let idp = Issuers::start().await;
    idp.jwks_b.set_down(true);
    let issuers = format!("{ISSUER_A},{ISSUER_B}");
    let urls = idp.urls();
    let vars = [("AUTH_ISSUER", issuers.as_str()), ("AUTH_JWKS_URL", urls.as_str()), ("AUTH_DEV_ISSUER", "false")];
    let app = spawn_app_with(Stack::SqliteFs, &vars).await;
    let (status, body) = json_of(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("degraded")), "{body}");
    assert_eq!(body["checks"][format!("jwks:{ISSUER_A}")], "ok", "{body}");
    assert_eq!(body["checks"][format!("jwks:{ISSUER_B}")], "down", "{body}");
    assert!(body["degraded"].as_str().unwrap().contains(ISSUER_B), "names the issuer without keys: {body}");
    assert!(body.get("error").is_none() && body.get("code").is_none(), "not unready: {body}");

    let whoami = |token: String| app.http.get(app.url("/v1/auth/whoami")).bearer_auth(token).send();
    assert_eq!(whoami(token(&idp.a, ISSUER_A, "acme", "u")).await.unwrap().status(), StatusCode::OK);
    let (status, body) = json_of(whoami(token(&idp.b, ISSUER_B, "globex", "u")).await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("auth_unavailable")));

    idp.jwks_a.set_down(true);
    let both_down = spawn_app_with(Stack::SqliteFs, &vars).await;
    let (status, body) = json_of(both_down.http.get(both_down.url("/readyz")).send().await.unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_ready")), "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(ISSUER_A) && error.contains(ISSUER_B), "no issuer has keys: unready, naming both: {body}");
}

#[tokio::test]
async fn a_scope_named_like_the_admin_role_grants_admin_only_through_the_scope_setting() {
    let m = media_app(Stack::SqliteFs, &[("AUTH_ADMIN_ROLES", "media-admin")]).await;
    let alice = m.alice();
    let bob = m.token_with_scopes("tenant-a", "bob", &[], &["openid", "media-admin"]);
    let (status, body) = json_of(m.upload_raw(&alice, "image/png", png(700, 4)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/v1/media/{}", body["id"].as_str().unwrap());
    let (status, refused) = json_of(m.http().delete(m.url(&path)).bearer_auth(&bob).send().await.unwrap()).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_owner")), "{refused}");
    assert_eq!(m.counts().await, (1, 1), "alice's media is still stored");
    let (_, me) = whoami(&m, &bob).await;
    assert_eq!(me["permissions"], json!(["media:read", "media:write"]), "{me}");

    let m = media_app(Stack::SqliteFs, &[("AUTH_ADMIN_ROLES", ""), ("AUTH_ADMIN_SCOPES", "media-admin")]).await;
    let (alice, bob) = (m.alice(), m.token_with_scopes("tenant-a", "bob", &[], &["media-admin"]));
    let role_only = m.token("tenant-a", "carol", &["media-admin"]);
    let (status, body) = json_of(m.upload_raw(&alice, "image/png", png(700, 5)).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("/v1/media/{}", body["id"].as_str().unwrap());
    let (status, refused) = json_of(m.http().delete(m.url(&path)).bearer_auth(&role_only).send().await.unwrap()).await;
    assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_owner")), "a role is not a scope");
    let deleted = m.http().delete(m.url(&path)).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "AUTH_ADMIN_SCOPES makes the scope an admin");
    assert_eq!(m.counts().await, (0, 0), "row and object gone");
}
