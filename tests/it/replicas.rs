//! Several service processes on one database: what one deletes, the others stop serving at once —
//! their caches hear it (Postgres `NOTIFY`), they do not wait for a TTL; and a shred run beside two
//! replicas taking the tenant's uploads leaves no row under a destroyed key and no orphaned object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media_api::config::Config;
use media_api::crypto::keyring::Keyring;
use media_api::db::Database;
use media_api::jobs::reconcile::reconcile;
use media_api::services::{Role, Services};
use media_api::with_pool;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::app::{sha256_hex, Stack};
use crate::support::media::{json_of, media_app, png, MediaApp};
use crate::support::process::{binary_vars, run, token, Service};

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

/// One upload of the load: which replica, when it was sent and answered, what came back.
#[derive(Debug, Clone)]
struct Sent {
    sent: Instant,
    answered: Instant,
    status: u16,
    code: String,
    id: Option<String>,
    sha: String,
}

/// Uploads into `tenant` through the replicas in turn, from `clients` tasks, until `stop`.
fn upload_load(
    bases: Vec<String>,
    token: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Sent>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let (bases, token, stop, log) = (bases.clone(), token.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = png(3000, 9_000_000 + client as u64 * 100_000 + i);
                    let sha = sha256_hex(&body);
                    let base = &bases[(client + i as usize) % bases.len()];
                    let sent = Instant::now();
                    let request = http.post(format!("{base}/v1/media")).bearer_auth(&token);
                    let response = request.header("content-type", "image/png").body(body).send().await.unwrap();
                    let status = response.status().as_u16();
                    let answer: Value = response.json().await.unwrap_or(Value::Null);
                    let (code, id) = (answer["code"].as_str().unwrap_or_default(), answer["id"].as_str());
                    let entry = Sent {
                        sent,
                        answered: Instant::now(),
                        status,
                        code: code.to_owned(),
                        id: id.map(str::to_owned),
                        sha,
                    };
                    log.lock().unwrap().push(entry);
                    i += 1;
                }
            })
        })
        .collect()
}

/// Waits until `count` uploads sent after `since` have been answered 200.
async fn wait_for_stored(log: &Mutex<Vec<Sent>>, since: Instant, count: usize) {
    let started = Instant::now();
    while log.lock().unwrap().iter().filter(|s| s.sent > since && s.status == 200).count() < count {
        assert!(started.elapsed() < Duration::from_secs(60), "fewer than {count} uploads stored in 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_beside_two_replicas_taking_uploads_leaves_nothing_readable_unreadable_or_orphaned() {
    let dir = tempfile::tempdir().unwrap();
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &[]).await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut replicas = [Service::start(&vars), Service::start(&vars)];
    for replica in &mut replicas {
        replica.wait_up(&http).await;
    }
    let token = token(&vars, "acme", "alice");
    let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let bases = replicas.iter().map(|r| r.base.clone()).collect();
    let started = Instant::now();
    let load = upload_load(bases, token.clone(), 4, stop.clone(), log.clone());
    wait_for_stored(&log, started, 20).await;

    // The shred runs as its own process while both replicas keep taking the tenant's uploads.
    let shred_vars = vars.clone();
    let shred_started = Instant::now();
    let shred = tokio::task::spawn_blocking(move || run(&shred_vars, &["tenant", "shred", "acme", "--yes"]));
    let shred = shred.await.unwrap();
    let shred_ended = Instant::now();
    assert!(shred.status.success(), "{}", String::from_utf8_lossy(&shred.stderr));
    wait_for_stored(&log, shred_ended, 20).await;
    stop.store(true, Ordering::Relaxed);
    for client in load {
        client.await.unwrap();
    }
    let log = log.lock().unwrap().clone();

    // Every answer was a success or the clear refusal of a tenant being shredded.
    for sent in &log {
        let refused = (sent.status, sent.code.as_str()) == (409, "tenant_shredding");
        let errors = || {
            replicas
                .iter()
                .flat_map(|r| r.logs().lines().filter(|l| l.contains("ERROR")).map(str::to_owned).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert!(sent.status == 200 || refused, "{sent:?}\n{:#?}", errors());
    }
    assert!(log.iter().any(|s| s.status == 200 && s.sent < shred_started), "no upload before the shred");
    // Uploads answered before the shred began are gone; uploads sent after it ended read back.
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let services = Services::open(&config, Role::Admin).await.unwrap();
    for sent in log.iter().filter(|s| s.status == 200) {
        let id = sent.id.as_deref().unwrap();
        let row = services.media.get("acme", id).await.unwrap();
        if sent.answered < shred_started {
            assert!(row.is_none(), "{id} survived the shred");
        }
        if sent.sent > shred_ended {
            let response = http.get(replicas[0].url(&format!("/v1/media/{id}"))).bearer_auth(&token).send().await;
            let response = response.unwrap();
            assert_eq!(response.status(), 200, "{id}, stored after the shred, is not readable");
            assert_eq!(sha256_hex(&response.bytes().await.unwrap()), sent.sha);
        }
    }
    // No row is sealed under a destroyed key, and every object under the prefix is a row's: nothing
    // the shred should have removed is left in the bucket.
    let mut rows = 0;
    let mut after: Option<String> = None;
    loop {
        let page = services.media.storage_keys("acme", after.as_deref(), 500).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        for (id, key) in page {
            key.unwrap_or_else(|err| panic!("{id} is unreadable after the shred: {err}"));
            rows += 1;
        }
    }
    let report = reconcile(services.pipeline.removal(), Duration::ZERO, true).await.unwrap();
    assert_eq!((report.orphans, report.objects_listed), (0, rows), "{report:?}");
    services.db.close().await;
    for replica in replicas {
        replica.stop();
    }
}
