//! Health, readiness, version, error bodies and the headers every response carries.

use std::net::IpAddr;
use std::time::Instant;

use secrecy::ExposeSecret;
use sqlx::Connection;

use crate::support::app::{spawn_app, spawn_app_with, Stack, STACKS};
use crate::support::connections::HANG_GUARD;

#[tokio::test]
async fn healthz_readyz_and_version_answer_without_auth() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let health = app.http.get(app.url("/healthz")).send().await.expect("healthz");
        assert_eq!(health.status(), 200);
        assert_eq!(health.json::<serde_json::Value>().await.unwrap(), serde_json::json!({"status": "ok"}));

        let ready = app.http.get(app.url("/readyz")).send().await.expect("readyz");
        assert_eq!(ready.status(), 200, "{stack:?}");
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["status"], "ready", "{stack:?}: {body}");
        assert_eq!(body["checks"]["database"], "ok");
        assert_eq!(body["checks"]["storage"], "ok");

        let version: serde_json::Value =
            app.http.get(app.url("/v1/version")).send().await.unwrap().json().await.unwrap();
        assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    }
}

#[tokio::test]
async fn readyz_names_the_storage_when_the_bucket_is_missing() {
    let app = spawn_app_with(Stack::PostgresS3, &[("MEDIA_S3_BUCKET", "no-such-bucket-for-media-api")]).await;
    let ready = app.http.get(app.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["storage"], "down", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(body["code"], "not_ready");
    assert!(body["error"].as_str().unwrap().contains("storage"), "{body}");
}

#[tokio::test]
async fn readyz_names_the_database_when_it_is_unreachable() {
    // Nothing listens on port 9 of loopback; the pool connects lazily, so the service still starts.
    let app = spawn_app_with(
        Stack::PostgresS3,
        &[
            ("MEDIA_DATABASE_URL", "postgres://postgres@127.0.0.1:9/none"),
            ("MEDIA_MIGRATE_ON_START", "false"),
            ("MEDIA_DATABASE_ACQUIRE_TIMEOUT", "1s"),
        ],
    )
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "down", "{body}");
    assert_eq!(body["checks"]["storage"], "ok", "{body}");
}

#[tokio::test]
async fn errors_are_json_with_a_code_and_the_request_id_and_security_headers_are_set() {
    let app = spawn_app(Stack::SqliteFs).await;
    let response = app.http.get(app.url("/v1/nothing-here")).send().await.expect("request");
    assert_eq!(response.status(), 404);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 32);
    for (name, value) in
        [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer")]
    {
        assert_eq!(response.headers()[name], value, "{name}");
    }
    assert!(response.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(!body["error"].as_str().unwrap().is_empty());

    let sent =
        app.http.get(app.url("/v1/nothing-here")).header("x-request-id", "client-42.a:b_c").send().await.unwrap();
    assert_eq!(sent.headers()["x-request-id"], "client-42.a:b_c", "a sane inbound request ID is kept");
    assert_eq!(sent.json::<serde_json::Value>().await.unwrap()["request_id"], "client-42.a:b_c");
    for insane in ["has space", "quote\"d", &"x".repeat(129), "<script>"] {
        let answer = app.http.get(app.url("/healthz")).header("x-request-id", insane).send().await.unwrap();
        let echoed = answer.headers()["x-request-id"].to_str().unwrap();
        assert!(echoed != insane && echoed.len() == 32, "{insane:?} was echoed as {echoed:?}");
    }

    let wrong_method = app.http.delete(app.url("/healthz")).send().await.expect("request");
    assert_eq!(wrong_method.status(), 405);
    let body: serde_json::Value = wrong_method.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
}

#[tokio::test]
async fn a_link_without_a_signature_is_refused_with_a_clear_code() {
    let app = spawn_app(Stack::SqliteFs).await;
    let response = app.http.get(app.url("/v1/blobs/some/key")).send().await.expect("request");
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "invalid_signature");
}

#[tokio::test]
async fn blob_links_do_not_exist_on_the_s3_backend() {
    let app = spawn_app(Stack::PostgresS3).await;
    let response = app.http.get(app.url("/v1/blobs/some/key?X-Media-Expires=1")).send().await.expect("request");
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn concurrent_readyz_calls_share_one_check() {
    const CALLERS: usize = 20;
    let app = spawn_app(Stack::PostgresS3).await;
    // The keyring check reads tenant_keys: while this lock is held the check stays in flight, so
    // every caller below arrives while it runs.
    let url = app.state.config.database.url.expose_secret().to_owned();
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE tenant_keys IN ACCESS EXCLUSIVE MODE").execute(&mut holder).await.unwrap();
    let runs_before = app.state.readiness.runs();

    let calls: Vec<_> = (0..CALLERS).map(|_| tokio::spawn(app.http.get(app.url("/readyz")).send())).collect();
    let started = Instant::now();
    while app.state.readiness.waiting() < CALLERS {
        assert!(started.elapsed() < HANG_GUARD, "only {} callers joined the check", app.state.readiness.waiting());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let mut bodies = Vec::new();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        bodies.push(response.json::<serde_json::Value>().await.unwrap());
    }
    assert_eq!(bodies[0]["status"], "ready", "{}", bodies[0]);
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every caller got the one result");
    assert_eq!(app.state.readiness.runs() - runs_before, 1, "{CALLERS} concurrent calls ran the checks once");
}

#[tokio::test]
async fn readyz_past_its_per_address_rate_is_429_rate_limited_and_other_addresses_and_healthz_go_on() {
    let app = spawn_app_with(
        Stack::SqliteFs,
        &[("MEDIA_RATE_LIMIT_READYZ_RPS", "1"), ("MEDIA_RATE_LIMIT_READYZ_BURST", "3")],
    )
    .await;
    let started = Instant::now();
    let mut ready = 0;
    let mut refused = None;
    for _ in 0..20 {
        let response = app.http.get(app.url("/readyz")).send().await.unwrap();
        match response.status().as_u16() {
            200 => ready += 1,
            429 => {
                refused = Some(response);
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let refused = refused.expect("20 calls in a row pass a rate of 1/s with a burst of 3");
    assert!(ready >= 3, "the burst passes: {ready}");
    assert!(ready <= 3 + started.elapsed().as_secs() + 1, "then one a second: {ready}");
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");

    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "liveness is never limited");
    let elsewhere = reqwest::Client::builder().no_proxy().local_address(IpAddr::from([127, 0, 0, 2])).build().unwrap();
    let other = elsewhere.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(other.status(), 200, "another address has its own bucket");
}

#[tokio::test]
async fn database_connections_cut_while_idle_are_replaced_before_a_request_uses_them() {
    use crate::support::media::{media_app, png};
    let media = media_app(Stack::PostgresS3, &[("MEDIA_RECORD_CACHE_TTL", "0")]).await;
    let alice = media.alice();
    let uploaded = media.upload_raw(&alice, "image/png", png(2048, 7)).await;
    assert_eq!(uploaded.status(), 200);
    let id = uploaded.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let presign = || media.http().get(media.url(&format!("/v1/media/{id}/presign"))).bearer_auth(&alice).send();
    assert_eq!(presign().await.unwrap().status(), 200);

    // The server drops every connection the pool holds (a restart, a failover, a proxy's idle
    // timeout); the pool does not know until it uses them.
    let url = media.app.state.config.database.url.expose_secret().to_owned();
    let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!cut.is_empty() && cut.iter().all(|c| *c), "the service's connections were cut: {cut:?}");
    // Past the idle time after which a connection is pinged before use (db::PING_WHEN_IDLE_FOR).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // Each cut connection is handed out once at most (the idle queue is FIFO), so this many calls
    // meet all of them.
    for _ in 0..=cut.len() {
        let answer = presign().await.unwrap();
        assert_eq!(answer.status(), 200, "a cut connection was handed to a request: {}", answer.text().await.unwrap());
    }
}
