//! Limits shared across replicas through Redis (`MEDIA_REDIS_URL`): a caller's rate limit and
//! upload cap hold across two replicas (and, without Redis, each replica gives its own), and when
//! Redis goes away a replica keeps serving under its own limits, says so in `/readyz` and
//! `/metrics`, and shares again once Redis is back.

use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;

use crate::support::app::{random_hex, Stack};
use crate::support::limits::{
    channel_body, metric, redis_url, serve_with_shared_limits, stalled_json_upload, wait_for_limits, OwnRedis,
};
use crate::support::media::{json_of, media_app, png, MediaApp};
use crate::support::process::{binary_vars, token, Service};

/// Two replicas (own SQLite databases, one key directory: a token works on both) with `vars`,
/// and, when given, one Redis.
async fn two_replicas(redis: Option<&str>, vars: &[(&str, &str)]) -> (MediaApp, MediaApp) {
    let mut vars = vars.to_vec();
    if let Some(url) = redis {
        vars.push(("MEDIA_REDIS_URL", url));
    }
    let a = media_app(Stack::SqliteFs, &vars).await;
    let keys = a.app.dir.path().join("keys").display().to_string();
    let mut shared = vars.clone();
    shared.push(("MEDIA_KEYS_DIR", &keys));
    let b = media_app(Stack::SqliteFs, &shared).await;
    if redis.is_some() {
        wait_for_limits(a.http(), &a.app.address, "ok").await;
        wait_for_limits(b.http(), &b.app.address, "ok").await;
    }
    (a, b)
}

const BURST: usize = 10;

/// Sends `3 × BURST` requests of one caller, alternating between the replicas; returns the
/// successes and the seconds it took (the bucket refills one token a second meanwhile).
async fn burst_over_two(redis: Option<&str>) -> (usize, u64) {
    let burst = BURST.to_string();
    let vars = [("MEDIA_RATE_LIMIT_RPS", "1"), ("MEDIA_RATE_LIMIT_BURST", burst.as_str())];
    let (a, b) = two_replicas(redis, &vars).await;
    let caller = a.token("tenant-a", &format!("burst-{}", random_hex(6)), &[]);
    let started = Instant::now();
    let mut ok = 0;
    for i in 0..3 * BURST {
        let replica = if i % 2 == 0 { &a } else { &b };
        let response = replica.get(&caller, "/v1/auth/whoami").send().await.unwrap();
        if response.status() == StatusCode::OK {
            ok += 1;
            continue;
        }
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1);
        let (_, body) = json_of(response).await;
        assert_eq!(body["code"], "rate_limited", "{body}");
    }
    (ok, started.elapsed().as_secs() + 1)
}

#[tokio::test]
async fn a_burst_spread_over_two_replicas_is_limited_once_with_redis_and_twice_without() {
    let url = redis_url();
    let (shared_ok, seconds) = burst_over_two(Some(&url)).await;
    assert!(seconds < BURST as u64 / 2, "the burst took {seconds} s: too slow to tell the limits apart");
    assert!(
        (BURST..=BURST + seconds as usize).contains(&shared_ok),
        "with Redis one bucket serves both replicas: {shared_ok} of {} passed in ≤ {seconds} s (burst {BURST}, 1/s)",
        3 * BURST
    );

    let (local_ok, seconds) = burst_over_two(None).await;
    assert!(
        (2 * BURST..=2 * BURST + 2 * seconds as usize).contains(&local_ok),
        "without Redis each replica has its own bucket: {local_ok} passed in ≤ {seconds} s"
    );
}

/// Starts an upload of `image` by `token` on `m` whose body stays open after its first half;
/// returns once it holds its slot (this replica has `free` slots left).
async fn held_upload(
    m: &MediaApp,
    token: &str,
    image: &[u8],
    free: usize,
) -> (
    tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let (tx, body) = channel_body();
    let request = m.http().post(m.url("/v1/media")).bearer_auth(token).header("content-type", "image/png");
    let response = tokio::spawn(request.body(body).send());
    tx.send(Ok(Bytes::copy_from_slice(&image[..image.len() / 2]))).await.unwrap();
    let started = Instant::now();
    while m.app.state.limits.free_upload_slots() != free {
        assert!(started.elapsed() < Duration::from_secs(10), "the held upload never took its slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (tx, response)
}

#[tokio::test]
async fn the_per_caller_upload_cap_holds_across_replicas() {
    let url = redis_url();
    let vars = [("MEDIA_MAX_CONCURRENT_UPLOADS", "8"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "2")];
    let (a, b) = two_replicas(Some(&url), &vars).await;
    let subject = format!("uploader-{}", random_hex(6));
    let (alice, bob) = (a.token("tenant-a", &subject, &[]), a.token("tenant-a", &format!("{subject}-bob"), &[]));
    let (image, other) = (png(100_000, 50), png(100_000, 54));
    let (first_tx, first) = held_upload(&a, &alice, &image, 7).await;
    let (second_tx, second) = held_upload(&a, &alice, &other, 6).await;

    let refused = b.upload_raw(&alice, "image/png", png(5000, 51)).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "the other replica sees her two uploads");
    assert_eq!(refused.headers()["retry-after"], "1");
    let (_, body) = json_of(refused).await;
    assert_eq!(body["code"], "too_many_uploads", "{body}");
    assert_eq!(b.app.state.limits.free_upload_slots(), 8, "a refused upload holds no slot");
    assert_eq!(b.upload_raw(&bob, "image/png", png(5000, 52)).await.status(), 200, "bob has his own count");

    first_tx.send(Ok(Bytes::copy_from_slice(&image[50_000..]))).await.unwrap();
    drop(first_tx);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    // The lease is removed right after the upload ends (a ZREM sent when its slot is dropped).
    let started = Instant::now();
    loop {
        let response = b.upload_raw(&alice, "image/png", png(5000, 53)).await;
        if response.status() == StatusCode::OK {
            break;
        }
        let (status, body) = json_of(response).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_uploads")));
        assert!(started.elapsed() < Duration::from_secs(10), "the finished upload's lease was never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    second_tx.send(Ok(Bytes::copy_from_slice(&other[50_000..]))).await.unwrap();
    drop(second_tx);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    assert_eq!(a.counts().await.0 + b.counts().await.0, 4, "every admitted upload is stored (distinct bytes)");
}

/// `/metrics` of a process.
async fn scrape(http: &reqwest::Client, service: &Service) -> String {
    http.get(service.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn without_redis_a_replica_keeps_its_own_limits_reports_degraded_and_shares_again_when_it_is_back() {
    let mut redis = OwnRedis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = redis.url();
    let limits = [
        ("MEDIA_REDIS_URL", url.as_str()),
        ("MEDIA_RATE_LIMIT_RPS", "1"),
        ("MEDIA_RATE_LIMIT_BURST", "3"),
        ("LOG_LEVEL", "info"),
    ];
    let vars = binary_vars(Stack::SqliteFs, dir.path(), &limits).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let service = serve_with_shared_limits(&http, &vars).await;
    let before = scrape(&http, &service).await;
    assert_eq!(metric(&before, "media_limits_shared", &[]), 1.0, "{before}");

    redis.kill();
    wait_for_limits(&http, &service.base, "degraded").await;

    // Still served, under this replica's own limits: a burst of 3, then 429.
    let carol = token(&vars, "tenant-a", "carol");
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(http.get(service.url("/v1/auth/whoami")).bearer_auth(&carol).send().await.unwrap().status());
    }
    assert!(statuses[..3].iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "the local bucket limits meanwhile: {statuses:?}");
    let dave = token(&vars, "tenant-a", "dave");
    let upload = http.post(service.url("/v1/media")).bearer_auth(&dave).header("content-type", "image/png");
    let (status, body) = json_of(upload.body(png(3000, 60)).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "uploads count locally meanwhile: {body}");

    let during = scrape(&http, &service).await;
    let fallbacks = |text: &str, check: &str| metric(text, "media_limits_fallback_total", &[("check", check)]);
    assert!(fallbacks(&during, "rate") >= 9.0, "every check fell back and was counted: {during}");
    assert!(fallbacks(&during, "uploads") >= 1.0, "{during}");
    assert_eq!(metric(&during, "media_limits_shared", &[]), 0.0, "{during}");

    redis.restart().await;
    wait_for_limits(&http, &service.base, "ok").await;
    let erin = token(&vars, "tenant-a", "erin");
    assert_eq!(http.get(service.url("/v1/auth/whoami")).bearer_auth(&erin).send().await.unwrap().status(), 200);
    let after = scrape(&http, &service).await;
    assert_eq!(fallbacks(&after, "rate"), fallbacks(&during, "rate"), "checks go to Redis again: {after}");
    assert_eq!(metric(&after, "media_limits_shared", &[]), 1.0, "{after}");

    let logs = service.stop();
    assert_eq!(logs.matches("Redis does not answer").count(), 1, "one line per change, not per request: {logs}");
}

#[tokio::test]
async fn a_callers_upload_weight_counts_on_every_replica() {
    let url = redis_url();
    let vars =
        [("MEDIA_MAX_CONCURRENT_UPLOADS", "16"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "8"), ("MEDIA_MAX_BYTES", "10MiB")];
    let (a, b) = two_replicas(Some(&url), &vars).await;
    let subject = format!("weighty-{}", random_hex(6));
    let mallory = a.token("tenant-a", &subject, &[]);

    // A data-URL upload on replica a, stalled after its first bytes, holds several slots there.
    let ((tx, held), weight) = stalled_json_upload(&a, &mallory, 16).await;
    assert!((2..8).contains(&weight), "a JSON upload weighs several slots, fewer than the cap ({weight})");

    // Replica b sees her weight in Redis: what is left of her cap is 8 - weight slots.
    let mut admitted = Vec::new();
    for i in 0..8 - weight {
        let (tx, body) = channel_body();
        let request = b.http().post(b.url("/v1/media")).bearer_auth(&mallory).header("content-type", "image/png");
        admitted.push((tx, tokio::spawn(request.body(body).send())));
        let image = png(100_000, 70 + i as u64);
        admitted.last().unwrap().0.send(Ok(Bytes::copy_from_slice(&image[..50_000]))).await.unwrap();
        let started = Instant::now();
        while b.app.state.limits.free_upload_slots() != 16 - (i + 1) {
            assert!(started.elapsed() < Duration::from_secs(30), "upload {i} on b never took its slot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let refused = b.upload_raw(&mallory, "image/png", png(5000, 90)).await;
    let (status, body) = json_of(refused).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("too_many_uploads")), "{body}");
    drop(tx);
    drop(admitted);
    let _ = held.await;
}
