//! Several service processes on one database: what one deletes, the others stop serving at once —
//! their caches hear it (Postgres `NOTIFY`), they do not wait for a TTL.

use std::time::{Duration, Instant};

use media_api::crypto::keyring::Keyring;
use media_api::db::Database;
use media_api::with_pool;
use secrecy::ExposeSecret;

use crate::support::app::Stack;
use crate::support::media::{json_of, media_app, png, MediaApp};

/// The status of a presign of `id` through `m`.
async fn presign_status(m: &MediaApp, token: &str, id: &str) -> u16 {
    m.get(token, &format!("/v1/media/{id}/presign")).send().await.unwrap().status().as_u16()
}

async fn wait_until_caching(m: &MediaApp) {
    let started = Instant::now();
    while !m.app.state.cache_gate.is_open() {
        assert!(started.elapsed() < Duration::from_secs(30), "the invalidation listener never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_delete_through_one_replica_stops_the_other_serving_it_at_once() {
    let master = format!("k1:{}", Keyring::generate_key());
    let long_cache = [("MEDIA_MASTER_KEYS", master.as_str()), ("MEDIA_RECORD_CACHE_TTL", "300s")];
    let a = media_app(Stack::PostgresS3, &long_cache).await;
    let url = a.app.state.config.database.url.expose_secret().to_owned();
    let shared = [long_cache[0], long_cache[1], ("MEDIA_DATABASE_URL", &url), ("MEDIA_STORAGE_PREFIX", &a.prefix)];
    let b = media_app(Stack::PostgresS3, &shared).await;
    wait_until_caching(&a).await;
    wait_until_caching(&b).await;
    let (token_a, token_b) = (a.alice(), b.alice());
    let mut ids = Vec::new();
    for seed in 1..=6 {
        let (status, body) = json_of(a.upload_raw(&token_a, "image/png", png(2000, seed)).await).await;
        assert_eq!(status, 200, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(presign_status(&b, &token_b, &id).await, 200, "b reads (and caches) what a stored");
        ids.push(id);
    }
    // A row removed behind every process's back (no notification) is still served from b's cache:
    // b does cache, so what follows is the notification at work, not a cold cache.
    let db: &Database = &a.app.state.db;
    let gone = with_pool!(db, |pool| sqlx::query("DELETE FROM media_objects WHERE id = $1")
        .bind(&ids[0])
        .execute(pool)
        .await
        .map(|done| done.rows_affected()))
    .unwrap();
    assert_eq!(gone, 1);
    assert_eq!(presign_status(&b, &token_b, &ids[0]).await, 200, "b's cache is on");

    // Deletes through a: b stops serving each at once. The times are in docs/performance.md.
    let mut seen_after = Vec::new();
    for id in &ids[1..] {
        let deleted = a.http().delete(a.url(&format!("/v1/media/{id}"))).bearer_auth(&token_a).send().await;
        assert_eq!(deleted.unwrap().status(), 204);
        let started = Instant::now();
        while presign_status(&b, &token_b, id).await != 404 {
            assert!(started.elapsed() < Duration::from_secs(10), "b still serves a deleted media");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seen_after.push(started.elapsed());
    }
    seen_after.sort();
    eprintln!(
        "replicas: a delete through a is seen by b after {:?} (median of 5), at most {:?}",
        seen_after[2], seen_after[4]
    );
}
