//! What an operator relies on: metrics that move, rate limits and the upload cap, CORS, request-head
//! limits, HTTPS with certificate reload, the OpenAPI document covering every route, readiness of
//! the keyring, and logs that never carry a secret (checked on the real binary's output).

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::support::app::{spawn_app_with, Stack, STACKS};
use crate::support::limits::metric;
use crate::support::media::{json_of, media_app, png};
use crate::support::process::{binary_vars, run, token, var, Service};

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    response.text().await.unwrap()
}

#[tokio::test]
async fn metrics_move_with_traffic() {
    let m = media_app(Stack::PostgresS3, &[]).await;
    let alice = m.alice();
    let before = scrape(m.http(), &m.url("/metrics")).await;

    let (status, uploaded) = json_of(m.upload_raw(&alice, "image/png", png(4000, 41)).await).await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let id = uploaded["id"].as_str().unwrap().to_owned();
    assert_eq!(m.upload_raw(&alice, "image/png", b"<html>".to_vec()).await.status(), 415);
    assert_eq!(m.get(&alice, &format!("/v1/media/{id}/presign")).send().await.unwrap().status(), 200);
    let (status, _) = m.resolve(&alice, &json!({"payload": {"a": id, "b": format!("data:image/png;{id}")}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m.get("not-a-token", "/v1/auth/whoami").send().await.unwrap().status(), 401);

    let after = scrape(m.http(), &m.url("/metrics")).await;
    let moved = |name: &str, labels: &[(&str, &str)]| metric(&after, name, labels) - metric(&before, name, labels);
    let upload_route = [("route", "/v1/media"), ("method", "POST"), ("status", "200")];
    assert!(moved("media_http_requests_total", &upload_route) >= 1.0, "{after}");
    assert!(moved("media_http_requests_total", &[("route", "/v1/media/{id}/presign"), ("status", "200")]) >= 1.0);
    assert!(moved("media_http_request_duration_seconds_count", &[("route", "/v1/media/resolve")]) >= 1.0);
    assert!(moved("media_upload_bytes_total", &[]) >= 4000.0);
    assert!(moved("media_uploads_total", &[("result", "stored")]) >= 1.0);
    assert!(moved("media_upload_rejections_total", &[("reason", "unsupported_type")]) >= 1.0);
    assert!(moved("media_presigns_total", &[]) >= 3.0, "upload answer, presign and resolve each sign");
    assert!(moved("media_resolve_placeholders_count", &[]) >= 1.0);
    assert!(moved("media_auth_failures_total", &[("reason", "malformed")]) >= 1.0, "{after}");
    assert!(metric(&after, "media_db_pool_max_connections", &[]) >= 1.0);
    // The read lane's gauges (their values: `read_lane::a_finished_read_keeps…`; the recorder is
    // shared by the apps of this test process, so another one may have set them last).
    assert!(metric(&after, "media_db_read_lane_max_connections", &[]) >= 1.0, "{after}");
    assert!(after.contains("media_db_read_lane_connections{state=\"idle\"}"), "{after}");
    for counter in ["media_db_read_lane_reads_total", "media_db_read_lane_statements_total"] {
        assert!(after.contains(counter), "{counter} is exported (values: `read_lane::reads_that_wait…`)");
    }
    assert!(after.contains("media_rotation_rows_pending"), "the rotation backlog gauge is exported");
    for gauge in ["media_rotation_object_rows_pending", "media_plain_object_rows"] {
        assert!(after.contains(gauge), "{gauge} is exported");
    }
    assert!(!after.contains(&id), "no media ID reaches a metric label");
}

#[tokio::test]
async fn metrics_can_move_to_an_internal_listener() {
    let app = spawn_app_with(Stack::SqliteFs, &[("MEDIA_METRICS_ADDR", "127.0.0.1:0")]).await;
    assert_eq!(app.http.get(app.url("/metrics")).send().await.unwrap().status(), 404, "not on the public port");
    let port = app.metrics_port.expect("a metrics listener");
    let text = scrape(&app.http, &format!("http://127.0.0.1:{port}/metrics")).await;
    assert!(text.contains("media_db_pool_connections"), "{text}");
    let other = app.http.get(format!("http://127.0.0.1:{port}/v1/version")).send().await.unwrap();
    assert_eq!(other.status(), 404, "the internal listener serves metrics only");
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after_per_principal_and_per_ip() {
    let limits = [
        ("MEDIA_RATE_LIMIT_RPS", "1"),
        ("MEDIA_RATE_LIMIT_BURST", "2"),
        ("MEDIA_RATE_LIMIT_IP_RPS", "1"),
        ("MEDIA_RATE_LIMIT_IP_BURST", "2"),
    ];
    let m = media_app(Stack::SqliteFs, &limits).await;
    let (alice, bob) = (m.alice(), m.token("tenant-a", "bob", &[]));
    for _ in 0..2 {
        assert_eq!(m.get(&alice, "/v1/auth/whoami").send().await.unwrap().status(), 200);
    }
    let limited = m.get(&alice, "/v1/auth/whoami").send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&limited) >= 1);
    let (_, body) = json_of(limited).await;
    assert_eq!(body["code"], "rate_limited", "{body}");
    assert!(body["request_id"].is_string());
    assert_eq!(m.get(&bob, "/v1/auth/whoami").send().await.unwrap().status(), 200, "bob has his own bucket");

    // Unauthenticated routes and refused tokens spend the client IP's bucket; probes never do.
    let statuses: Vec<u16> = futures::future::join_all(
        (0..3).map(|_| async { m.http().get(m.url("/v1/version")).send().await.unwrap().status().as_u16() }),
    )
    .await;
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1, "{statuses:?}");
    for _ in 0..10 {
        assert_eq!(m.http().get(m.url("/healthz")).send().await.unwrap().status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let bad: Vec<u16> = futures::future::join_all(
        (0..3).map(|_| async { m.get("bad-token", "/v1/auth/whoami").send().await.unwrap().status().as_u16() }),
    )
    .await;
    assert_eq!(bad.iter().filter(|s| **s == 401).count(), 2, "{bad:?}");
    assert_eq!(bad.iter().filter(|s| **s == 429).count(), 1, "a flood of bad tokens is throttled: {bad:?}");
}

/// Waits (≤ 10 s) until the service has exactly `free` upload slots left: the held upload reached
/// its handler.
async fn wait_for_free_slots(m: &crate::support::media::MediaApp, free: usize) {
    for _ in 0..200 {
        if m.app.state.limits.free_upload_slots() == free {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the held upload never took its slot");
}

/// An upload by `token` whose body is held open after its first half: it keeps its slot until the
/// returned sender gets the rest (and is dropped). Returns once the slot is taken (`free` left).
async fn held_upload(
    m: &crate::support::media::MediaApp,
    token: &str,
    image: &[u8],
    free: usize,
) -> (mpsc::Sender<Result<Bytes, std::io::Error>>, tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>) {
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media")).bearer_auth(token).header("content-type", "image/png");
    let response = tokio::spawn(request.body(body).send());
    tx.send(Ok(Bytes::copy_from_slice(&image[..image.len() / 2]))).await.unwrap();
    wait_for_free_slots(m, free).await;
    (tx, response)
}

fn channel_body() -> (mpsc::Sender<Result<Bytes, std::io::Error>>, reqwest::Body) {
    let (tx, mut rx) = mpsc::channel(4);
    (tx, reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

#[tokio::test]
async fn uploads_past_the_concurrency_cap_get_503_busy_and_nothing_is_stored() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_MAX_CONCURRENT_UPLOADS", "1"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "8")]).await;
        let alice = m.alice();
        let image = png(200_000, 7);
        let (tx, first) = held_upload(&m, &alice, &image, 0).await;

        // Refused before their bodies are read, large streamed uploads still get their answer
        // (lingering close) instead of a connection reset.
        let streamed = (0..6).map(|_| {
            let chunks =
                futures::stream::iter((0..384).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 64 * 1024]))));
            m.http()
                .post(m.url("/v1/media"))
                .bearer_auth(&alice)
                .header("content-type", "image/png")
                .header("content-length", 384 * 64 * 1024)
                .body(reqwest::Body::wrap_stream(chunks))
                .send()
        });
        for answer in futures::future::join_all(streamed).await {
            let status = answer.map(|r| r.status()).map_err(|e| e.to_string());
            assert_eq!(status, Ok(StatusCode::SERVICE_UNAVAILABLE), "{stack:?}");
        }
        let busy = m.upload_raw(&alice, "image/png", png(5000, 8)).await;
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE, "{stack:?}");
        assert_eq!(retry_after(&busy), 1);
        let (_, body) = json_of(busy).await;
        assert_eq!(body["code"], "busy", "{body}");
        let data_url = crate::support::media::data_url("image/png", &png(5000, 9));
        assert_eq!(m.upload_data_url(&alice, &data_url).await.status(), 503, "data URLs count too");

        tx.send(Ok(Bytes::copy_from_slice(&image[100_000..]))).await.unwrap();
        drop(tx);
        assert_eq!(first.await.unwrap().unwrap().status(), 200, "{stack:?}");
        assert_eq!(m.counts().await, (1, 1), "{stack:?}: only the admitted upload is stored");
        assert_eq!(m.upload_raw(&alice, "image/png", png(5000, 10)).await.status(), 200, "the slot is free again");
    }
}

#[tokio::test]
async fn cors_headers_only_for_configured_origins() {
    let preflight = |app: &crate::support::app::TestApp, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/v1/media"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let closed = spawn_app_with(Stack::SqliteFs, &[]).await;
    let response = preflight(&closed, "https://app.example.com").await.unwrap();
    assert!(!response.headers().contains_key("access-control-allow-origin"), "no CORS without configuration");

    let open = spawn_app_with(Stack::SqliteFs, &[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let allowed = preflight(&open, "https://app.example.com").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example.com");
    let methods = allowed.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
    assert!(methods.contains("POST") && methods.contains("DELETE"), "{methods}");
    let other = preflight(&open, "https://evil.example.net").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    let get = open.http.get(open.url("/healthz")).header("origin", "https://app.example.com").send().await.unwrap();
    assert_eq!(get.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(get.headers()["access-control-expose-headers"].to_str().unwrap().contains("x-request-id"));
}

#[tokio::test]
async fn oversized_request_heads_are_refused_with_431() {
    let app = spawn_app_with(Stack::SqliteFs, &[("MEDIA_MAX_HEADER_BYTES", "16KiB")]).await;
    let big = "x".repeat(40 * 1024);
    let response = app.http.get(app.url("/healthz")).header("x-padding", big).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let fine = app.http.get(app.url("/healthz")).header("x-padding", "x".repeat(4 * 1024)).send().await.unwrap();
    assert_eq!(fine.status(), StatusCode::OK);
}

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn self_signed() -> (String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (cert.cert.pem(), cert.key_pair.serialize_pem())
}

fn trusting(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .no_proxy()
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_serves_uploads_with_hsts_and_reloads_a_replaced_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (first_cert, cert_file, key_file) = write_pair(dir.path(), "tls");
    let tls_vars = [
        ("MEDIA_TLS_CERT_FILE", cert_file.to_str().unwrap()),
        ("MEDIA_TLS_KEY_FILE", key_file.to_str().unwrap()),
        ("MEDIA_TLS_RELOAD_INTERVAL", "200ms"),
    ];
    let m = media_app(Stack::PostgresS3, &tls_vars).await;
    let base = format!("https://127.0.0.1:{}", m.app.port);
    let client = trusting(&first_cert);
    let upload = client
        .post(format!("{base}/v1/media"))
        .bearer_auth(m.alice())
        .header("content-type", "image/png")
        .body(png(70_000, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::OK);
    assert_eq!(upload.headers()["strict-transport-security"], "max-age=63072000; includeSubDomains");
    let body: Value = upload.json().await.unwrap();
    assert_eq!(body["bytes"], 70_000);
    assert!(m.http().get(m.url("/healthz")).send().await.is_err(), "plain HTTP is not served on the TLS port");

    // A broken pair is refused and the current one keeps serving.
    std::fs::write(&cert_file, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = trusting(&first_cert).get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(still.status(), 200);

    // A new pair is picked up without a restart.
    let (second_cert, second_key) = self_signed();
    std::fs::write(&key_file, &second_key).unwrap();
    std::fs::write(&cert_file, &second_cert).unwrap();
    let mut switched = false;
    for _ in 0..50 {
        if trusting(&second_cert).get(format!("{base}/healthz")).send().await.is_ok() {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "the new certificate was never served");
    assert!(trusting(&first_cert).get(format!("{base}/healthz")).send().await.is_err(), "the old one is gone");
}

/// A concrete path for an OpenAPI template.
fn concrete(path: &str) -> String {
    path.replace("{id}", "jan_00000000000000000000000000").replace("{key}", "m/none")
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_every_documented_route_exists() {
    let app = spawn_app_with(Stack::SqliteFs, &[]).await;
    let served: Value = app.http.get(app.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(served, serde_json::to_value(media_api::http::openapi_document()).unwrap());
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    let paths = served["paths"].as_object().unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(operation["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}");
            operations.insert(format!("{} {path}", method.to_uppercase()));
            // The router has it: no "no such endpoint" and no "method not allowed".
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app.http.request(method.clone(), app.url(&concrete(path))).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(
                status != StatusCode::METHOD_NOT_ALLOWED && body["code"] != "no_route",
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    // The contract of DESIGN §3 (plus the operator routes) is documented.
    for expected in [
        "POST /v1/media",
        "POST /v1/media/upload",
        "POST /v1/media/prepare-upload",
        "POST /v1/media/{id}/complete",
        "POST /v1/media/resolve",
        "GET /v1/media/{id}",
        "GET /v1/media/{id}/presign",
        "DELETE /v1/media/{id}",
        "GET /healthz",
        "GET /readyz",
        "GET /v1/version",
        "GET /metrics",
        "GET /openapi.json",
        "GET /v1/auth/whoami",
        "GET /v1/dev/jwks.json",
        "GET /v1/blobs/{key}",
        "PUT /v1/blobs/{key}",
    ] {
        assert!(operations.contains(expected), "{expected} is missing from {operations:?}");
    }
    assert_eq!(operations.len(), 17, "a route was added: document it and add it above: {operations:?}");
    let schemas = served["components"]["schemas"].as_object().unwrap();
    for schema in ["ErrorBody", "UploadResponse", "PresignResponse", "ResolveRequest", "Principal", "Readiness"] {
        assert!(schemas.contains_key(schema), "{schema} missing");
    }
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn readyz_says_when_stored_keys_need_a_master_key_the_keyring_lacks() {
    let first_key = media_api::crypto::keyring::Keyring::generate_key();
    let url = crate::support::app::fresh_postgres_url().await;
    let keys = format!("old:{first_key}");
    let m = media_app(Stack::PostgresS3, &[("MEDIA_DATABASE_URL", &url), ("MEDIA_MASTER_KEYS", &keys)]).await;
    assert_eq!(m.upload_raw(&m.alice(), "image/png", png(3000, 5)).await.status(), 200);

    let other = format!("new:{}", media_api::crypto::keyring::Keyring::generate_key());
    let app = spawn_app_with(Stack::PostgresS3, &[("MEDIA_DATABASE_URL", &url), ("MEDIA_MASTER_KEYS", &other)]).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["keyring"], "down", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    // Which key is missing goes to the log, not to this unauthenticated answer.
    assert!(body["error"].as_str().unwrap().contains("keyring"), "{body}");
    assert!(!body["error"].as_str().unwrap().contains("old"), "{body}");
}

/// Sends a request and parses its JSON answer.
async fn json_body(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// A self-signed pair written to `dir`: (certificate PEM, certificate file, key file).
fn write_pair(dir: &std::path::Path, name: &str) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = self_signed();
    let (cert_file, key_file) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_file, &cert).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    (cert, cert_file, key_file)
}

/// Values of the query parameters of `url` that carry signatures or credentials.
fn signature_values(url: &str) -> Vec<String> {
    let url = url::Url::parse(url).unwrap();
    url.query_pairs()
        .filter(|(k, _)| {
            ["x-amz-signature", "x-amz-credential", "x-media-signature"].contains(&k.to_lowercase().as_str())
        })
        .flat_map(|(_, v)| {
            let raw = v.into_owned();
            // Logged either decoded or percent-encoded.
            [url::form_urlencoded::byte_serialize(raw.as_bytes()).collect::<String>(), raw]
        })
        .collect()
}

#[tokio::test]
async fn logs_of_an_upload_resolve_rotate_cycle_hold_no_token_key_or_signature() {
    for stack in STACKS {
        let dir = tempfile::tempdir().unwrap();
        let vars = binary_vars(stack, dir.path(), &[("LOG_LEVEL", "debug"), ("MEDIA_LOG_FORMAT", "json")]).await;
        let master = var(&vars, "MEDIA_MASTER_KEYS").trim_start_matches("k1:").to_owned();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut service = Service::start(&vars);
        service.wait_up(&http).await;
        let token = token(&vars, "tenant-a", "alice");
        let url = |path: &str| format!("{}{path}", service.base);

        let uploaded: Value = json_body(
            http.post(url("/v1/media?filename=cat.png"))
                .bearer_auth(&token)
                .header("content-type", "image/png")
                .header("cookie", "session=cookie-secret-value")
                .body(png(5000, 11)),
        )
        .await;
        let id = uploaded["id"].as_str().unwrap_or_else(|| panic!("{stack:?}: {uploaded}")).to_owned();
        let mut secrets: Vec<String> =
            vec![token.clone(), master.clone(), "cookie-secret-value".into(), issuer_seed(dir.path())];
        secrets.extend(signature_values(uploaded["url"].as_str().unwrap()));
        let resolved: Value = http
            .post(url("/v1/media/resolve"))
            .bearer_auth(&token)
            .json(&json!({"payload": {"image": format!("data:image/png;{id}")}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        secrets.extend(signature_values(resolved["payload"]["image"].as_str().unwrap()));
        let prepared: Value = json_body(
            http.post(url("/v1/media/prepare-upload"))
                .bearer_auth(&token)
                .json(&json!({"mime_type": "image/png", "bytes": 100})),
        )
        .await;
        secrets.extend(signature_values(prepared["upload_url"].as_str().unwrap()));
        let refused = http.get(url("/v1/auth/whoami")).bearer_auth(format!("{token}x")).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        if stack == Stack::PostgresS3 {
            secrets.push(crate::support::app::s3_env().secret_key);
        }

        let rotate = run(&vars, &["rotate-keys"]);
        assert!(rotate.status.success(), "{}", String::from_utf8_lossy(&rotate.stderr));
        let mut logs = service.stop();
        logs.push_str(&String::from_utf8_lossy(&rotate.stdout));
        logs.push_str(&String::from_utf8_lossy(&rotate.stderr));

        assert!(logs.lines().count() > 20, "{stack:?}: debug logging produced lines");
        for secret in secrets.iter().filter(|s| s.len() >= 8) {
            assert!(!logs.contains(secret.as_str()), "{stack:?}: a secret reached the logs: {secret}");
        }
        assert!(!logs.contains("gAAAAA"), "{stack:?}: a Fernet token (wrapped key) reached the logs");
        // One access line per request, with the route template and the caller; never the raw path.
        let access: Vec<Value> = logs
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["target"] == "media_api::access")
            .collect();
        let resolve_line = access.iter().find(|l| l["route"] == "/v1/media/resolve").expect("a resolve line");
        assert_eq!(
            (resolve_line["tenant"].as_str(), resolve_line["subject"].as_str(), resolve_line["status"].as_u64()),
            (Some("tenant-a"), Some("alice"), Some(200))
        );
        assert!(resolve_line["request_id"].as_str().is_some_and(|r| !r.is_empty()));
        assert!(resolve_line["bytes_in"].as_u64().unwrap() > 0 && resolve_line["bytes_out"].as_u64().unwrap() > 0);
        assert!(resolve_line["latency_ms"].is_number());
        let upload_line = access.iter().find(|l| l["route"] == "/v1/media").expect("an upload line");
        assert_eq!(upload_line["bytes_in"], 5000, "{upload_line}");
        assert!(access.iter().any(|l| l["status"] == 401), "refusals are logged too");
    }
}

/// The dev issuer's private seed as stored on disk (must never be logged).
fn issuer_seed(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("keys/dev-issuer.key")).unwrap_or_default().trim().to_owned()
}

#[tokio::test]
async fn media_ca_file_makes_a_private_ca_trusted_for_outbound_tls() {
    // Origin: an HTTPS service with a self-signed certificate serving a PNG through a signed link.
    let dir = tempfile::tempdir().unwrap();
    let (cert, cert_file, key_file) = write_pair(dir.path(), "origin");
    let tls =
        [("MEDIA_TLS_CERT_FILE", cert_file.to_str().unwrap()), ("MEDIA_TLS_KEY_FILE", key_file.to_str().unwrap())];
    let origin = media_app(Stack::SqliteFs, &tls).await;
    let uploaded: Value = json_body(
        trusting(&cert)
            .post(format!("https://127.0.0.1:{}/v1/media", origin.app.port))
            .bearer_auth(origin.alice())
            .header("content-type", "image/png")
            .body(png(3000, 21)),
    )
    .await;
    let link = uploaded["url"].as_str().unwrap().to_owned();
    assert!(link.starts_with("https://127.0.0.1:"), "{link}");

    let allow = format!("127.0.0.1:{}", origin.app.port);
    let fetch = |m: &crate::support::media::MediaApp| {
        let body = json!({"source": {"type": "remote_url", "url": link}});
        m.http().post(m.url("/v1/media")).bearer_auth(m.alice()).json(&body).send()
    };
    let without = media_app(Stack::SqliteFs, &[("MEDIA_REMOTE_FETCH_ALLOW_HOSTS", &allow)]).await;
    let (status, body) = json_of(fetch(&without).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "an unknown CA is refused: {body}");
    let ca = cert_file.to_str().unwrap();
    let with = media_app(Stack::SqliteFs, &[("MEDIA_REMOTE_FETCH_ALLOW_HOSTS", &allow), ("MEDIA_CA_FILE", ca)]).await;
    let (status, body) = json_of(fetch(&with).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["bytes"], 3000);
}

#[tokio::test]
async fn one_caller_cannot_take_every_upload_slot() {
    let vars = [("MEDIA_MAX_CONCURRENT_UPLOADS", "4"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "1")];
    let m = media_app(Stack::SqliteFs, &vars).await;
    let (alice, bob) = (m.alice(), m.token("tenant-a", "bob", &[]));
    let image = png(100_000, 30);
    let (tx, held) = held_upload(&m, &alice, &image, 3).await;

    let second = m.upload_raw(&alice, "image/png", png(5000, 31)).await;
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after(&second), 1);
    let (_, body) = json_of(second).await;
    assert_eq!(body["code"], "too_many_uploads", "{body}");
    assert_eq!(m.upload_raw(&bob, "image/png", png(5000, 32)).await.status(), 200, "bob is not held back");

    tx.send(Ok(Bytes::copy_from_slice(&image[50_000..]))).await.unwrap();
    drop(tx);
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    assert_eq!(m.upload_raw(&alice, "image/png", png(5000, 33)).await.status(), 200, "her count went back down");
}

#[tokio::test]
async fn an_upload_slower_than_its_deadline_gets_408_and_stores_nothing() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_UPLOAD_TIMEOUT", "1s")]).await;
        let image = png(100_000, 40);
        let (tx, body) = channel_body();
        let upload = m.http().post(m.url("/v1/media")).bearer_auth(m.alice()).header("content-type", "image/png");
        let upload = tokio::spawn(upload.body(body).send());
        tx.send(Ok(Bytes::copy_from_slice(&image[..10_000]))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = tx.send(Ok(Bytes::copy_from_slice(&image[10_000..]))).await;
        drop(tx);
        let (status, body) = json_of(upload.await.unwrap().unwrap()).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT, "{stack:?}: {body}");
        assert_eq!(body["code"], "upload_timeout", "{body}");
        assert!(body["error"].as_str().unwrap().contains("MEDIA_UPLOAD_TIMEOUT"), "{body}");
        assert_eq!(m.counts().await, (0, 0), "{stack:?}: nothing stored");
    }
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let app = spawn_app_with(Stack::SqliteFs, &[("MEDIA_MAX_CONNECTIONS", "2")]).await;
    let addr = format!("127.0.0.1:{}", app.port);
    let first = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(800)).build().unwrap();
    assert!(client.get(app.url("/healthz")).send().await.is_err(), "a third connection is not served");
    drop(first);
    let mut served = false;
    for _ in 0..20 {
        if client.get(app.url("/healthz")).send().await.is_ok_and(|r| r.status() == 200) {
            served = true;
            break;
        }
    }
    assert!(served, "a closed connection frees its place");
}
