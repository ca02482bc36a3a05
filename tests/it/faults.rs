//! Fault injection on the real stack (the binary, PostgreSQL, Garage): `kill -9` during 50 uploads,
//! `kill -9` of `rotate-keys` at ten points while uploads go on, and PostgreSQL then Garage stopped
//! under a steady load — each followed by the proof that nothing acknowledged was lost and nothing
//! unreachable was left behind. The outage test runs its own PostgreSQL cluster and Garage node, so
//! stopping them touches nothing else.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use media_api::config::Config;
use media_api::services::{Role, Services};
use serde_json::Value;

use crate::support::app::{sha256_hex, Stack};
use crate::support::faults::*;
use crate::support::media::png;
use crate::support::own::{OwnGarage, OwnPostgres, S3Target};
use crate::support::process::{binary_vars, run, token, Service};

#[tokio::test]
async fn kill_9_during_fifty_uploads_then_restart_and_sweep_loses_nothing_acknowledged_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        ("MEDIA_MAX_CONCURRENT_UPLOADS", "64"),
        ("MEDIA_MAX_UPLOADS_PER_CALLER", "64"),
        ("MEDIA_UPLOAD_IDLE_TIMEOUT", "10m"),
    ];
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &limits).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    let token = token(&vars, "tenant-a", "alice");

    // 50 uploads from 10 KiB to 12 MiB; every tenth repeats earlier bytes (the dedup path); ten
    // (i % 5 == 2) send their first chunk and stall, so the kill surely cuts uploads mid-way.
    const SIZES: [usize; 6] = [10 << 10, 100 << 10, 700 << 10, 2 << 20, 5 << 20, 12 << 20];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spawn = |i: u64| {
        let seed = if i % 10 == 9 { i - 5 } else { i };
        // The stalled ones are 2 MiB: their first 256 KiB are surely read and journaled.
        let size = if i % 5 == 2 { 2 << 20 } else { SIZES[seed as usize % SIZES.len()] };
        let body = Bytes::from(png(size, 9000 + seed));
        let (http, url, token, tx) = (http.clone(), service.url("/v1/media"), token.clone(), tx.clone());
        tokio::spawn(async move {
            let sha = sha256_hex(&body);
            let id = match i % 5 {
                2 => upload_stalled(&http, &url, &token, body, i % 2 == 0).await,
                _ => upload_framed(&http, &url, &token, body, Duration::from_millis(20), i % 2 == 0).await,
            };
            let _ = tx.send(id.map(|id| (id, sha)));
        });
    };
    // The stalled ones first, until each has begun writing (journaled), then the others.
    (0..50u64).filter(|i| i % 5 == 2).for_each(spawn);
    let started = std::time::Instant::now();
    while journaled(&vars).await < 10 {
        assert!(started.elapsed() < Duration::from_secs(60), "the stalled uploads never began writing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (0..50u64).filter(|i| i % 5 != 2).for_each(spawn);
    drop(tx);
    // Kill once a third has been acknowledged: the rest are in flight at every stage.
    let mut outcomes = Vec::new();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
        if outcomes.iter().flatten().count() >= 15 {
            break;
        }
    }
    service.kill9();
    while let Some(outcome) = rx.recv().await {
        outcomes.push(outcome);
    }
    let acknowledged: Vec<(String, String, String)> =
        outcomes.iter().flatten().map(|(id, sha)| ("tenant-a".to_owned(), id.clone(), sha.clone())).collect();
    let cut = outcomes.iter().filter(|o| o.is_none()).count();
    assert!(acknowledged.len() >= 15 && cut >= 10, "acknowledged {}, cut {cut}", acknowledged.len());

    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    // The cut uploads left their keys in the journal (and, sent chunked, multipart uploads).
    let left = journaled(&vars).await;
    assert!(left > 0, "the kill left no journaled write: the test did not cut any upload mid-way");
    let sweep = run(&vars, &["sweep", "--abandoned-after", "0s"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    let report: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    let outcome = (report["failed"].as_u64(), report["orphans_deleted"].as_u64());
    assert_eq!(outcome, (Some(0), Some(left)), "{report}");
    assert_eq!(journaled(&vars).await, 0);
    assert_readable(&service, |_| token.clone(), &acknowledged).await;
    let distinct: BTreeSet<&String> = acknowledged.iter().map(|(_, id, _)| id).collect();
    let rows = assert_rows_match_objects(&vars, &S3Target::shared()).await;
    assert!(rows >= distinct.len(), "{rows} rows for {} acknowledged ids", distinct.len());
    // The service works after the crash.
    let again = upload(&http, &service.url("/v1/media"), &token, Bytes::from(png(5000, 1)), Duration::ZERO).await;
    assert!(again.is_some());
    service.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_rotate_keys_at_ten_points_then_a_rerun_finishes_and_uploads_meanwhile_survive() {
    let dir = tempfile::tempdir().unwrap();
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &[]).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    let tenants = ["tenant-a", "tenant-b", "tenant-c"];
    let tokens: HashMap<String, String> = tenants.iter().map(|t| (t.to_string(), token(&vars, t, "alice"))).collect();
    let url = service.url("/v1/media");
    // 3 × 60 rows: 6 batches of 10 per tenant and run.
    let mut acknowledged = Vec::new();
    for (t, tenant) in tenants.iter().enumerate() {
        let uploads = (0..60u64).map(|i| {
            let body = Bytes::from(png(2000, 100_000 * t as u64 + i));
            let (http, url, token) = (&http, &url, &tokens[*tenant]);
            async move {
                let sha = sha256_hex(&body);
                (upload(http, url, token, body, Duration::ZERO).await.expect("a setup upload"), sha)
            }
        });
        for (id, sha) in futures::stream::iter(uploads).buffer_unordered(8).collect::<Vec<_>>().await {
            acknowledged.push((tenant.to_string(), id, sha));
        }
    }

    // Uploads keep coming while rotate-keys is killed again and again.
    let writing = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, url, writing, stop, tokens) =
            (http.clone(), url.clone(), writing.clone(), stop.clone(), tokens.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tenant = ["tenant-a", "tenant-b", "tenant-c"][i as usize % 3];
                let body = Bytes::from(png(3000, 900_000 + i));
                let sha = sha256_hex(&body);
                let id = upload(&http, &url, &tokens[tenant], body, Duration::ZERO).await;
                writing.lock().unwrap().push((tenant.to_owned(), id.expect("an upload during rotation failed"), sha));
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };

    // Between batches (right after one was written), mid-batch (a few ms later) and during
    // retirement (after "retiring", before or inside the one retiring statement).
    let points = [
        ("re-encrypting", 1, 0),
        ("re-encrypting", 2, 3),
        ("retiring unused", 1, 0),
        ("re-encrypting", 4, 0),
        ("re-encrypting", 1, 8),
        ("retiring unused", 2, 0),
        ("re-encrypting", 7, 1),
        ("retiring unused", 1, 4),
        ("re-encrypting", 3, 15),
        ("re-encrypting", 12, 0),
    ];
    let rotation_vars: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| k != "LOG_LEVEL")
        .cloned()
        .chain([("MEDIA_LOG_FORMAT".into(), "json".into())])
        .collect();
    let mut landed = 0;
    for (event, nth, delay) in points {
        let rotation = Rotation::start(&rotation_vars);
        let delay = Duration::from_millis(delay);
        if tokio::task::spawn_blocking(move || rotation.kill_at(event, nth, delay)).await.unwrap() {
            landed += 1;
        }
    }
    assert_eq!(landed, points.len(), "every kill point was reached while the run was going");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let written = writing.lock().unwrap().clone();
    assert!(written.len() >= 10, "only {} uploads ran during the kills", written.len());
    acknowledged.extend(written);

    let rerun = run(&vars, &["rotate-keys", "--batch-size", "50"]);
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let summary: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    assert_eq!(summary["rows_pending"], 0, "{summary}");

    // Every row decrypts (storage keys of all rows, and each object is there), the row count is
    // what was acknowledged, every tenant is on one DEK version, every upload reads back.
    let rows = assert_rows_match_objects(&vars, &S3Target::shared()).await;
    assert_eq!(rows, acknowledged.len(), "row count changed");
    let config = Config::from_vars(&vars.iter().cloned().collect()).unwrap();
    let services = Services::open(&config, Role::Admin).await.unwrap();
    let versions: Vec<(String, i32)> = media_api::with_pool!(&services.db, |pool| sqlx::query_as(
        "SELECT DISTINCT tenant_id, dek_version FROM media_objects ORDER BY 1"
    )
    .fetch_all(pool)
    .await)
    .unwrap();
    assert_eq!(versions.len(), 3, "a tenant is left on several versions: {versions:?}");
    for (tenant, id, _) in &acknowledged {
        let row = services.media.get(tenant, id).await.unwrap_or_else(|e| panic!("{tenant}/{id}: {e}"));
        assert!(row.is_some(), "{tenant}/{id} lost");
    }
    services.db.close().await;
    assert_readable(&service, |tenant| tokens[tenant].clone(), &acknowledged).await;
    service.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_then_garage_stopped_under_load_fail_fast_with_503_and_recover_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let postgres = OwnPostgres::create();
    let mut garage = OwnGarage::create(dir.path());
    let own = [
        ("MEDIA_DATABASE_URL", postgres.url()),
        ("MEDIA_S3_ENDPOINT", garage.s3.endpoint.clone()),
        ("MEDIA_S3_REGION", "garage".into()),
        ("MEDIA_S3_BUCKET", garage.s3.bucket.clone()),
        ("MEDIA_S3_ACCESS_KEY", garage.s3.access_key.clone()),
        ("MEDIA_S3_SECRET_KEY", garage.s3.secret_key.clone()),
        ("MEDIA_DATABASE_ACQUIRE_TIMEOUT", "2s".into()),
        ("MEDIA_RECORD_CACHE_TTL", "0".into()),
    ];
    let own: Vec<(&str, &str)> = own.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Built from the SQLite defaults so that nothing is created on the shared PostgreSQL server.
    let vars = binary_vars(Stack::SqliteFs, dir.path(), &own).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    wait_ready(&http, &service, 200, Duration::from_secs(10)).await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stored = Arc::new(Mutex::new(Vec::new()));
    let token = token(&vars, "tenant-a", "alice");
    let t_load = Instant::now();
    let load = steady_load(service.base.clone(), token.clone(), stop.clone(), log.clone(), stored.clone());
    wait_for_acknowledged(&stored, 10).await;

    // PostgreSQL goes away, then Garage.
    let t_healthy = Instant::now();
    let (t_pg_down, t_pg_back, t_pg_ready) =
        outage(&http, &service, &log, "database", |up| if up { postgres.start() } else { postgres.stop() }).await;
    let (t_s3_down, t_s3_back, t_s3_ready) =
        outage(&http, &service, &log, "storage", |up| if up { garage.start() } else { garage.stop() }).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();
    let t_end = Instant::now();

    let log = log.lock().unwrap().clone();
    let healthy = tally(&log, t_load, t_healthy);
    assert!(healthy.keys().all(|(_, status, _)| *status == 200), "before any fault: {healthy:?}");
    // While a dependency is down, and until the service reports ready again, every failure is a 503
    // with the dependency's code, answered within a few seconds (the pool's 2 s acquire timeout, the
    // S3 client's retries); at least one upload failed while it was down.
    for (from, back, to, code) in [
        (t_pg_down, t_pg_back, t_pg_ready, "database_unavailable"),
        (t_s3_down, t_s3_back, t_s3_ready, "storage_unavailable"),
    ] {
        let window: Vec<&Outcome> = log.iter().filter(|o| o.at >= from && o.at < to).collect();
        let failed: Vec<&&Outcome> = window.iter().filter(|o| o.status != 200).collect();
        let outage = back.duration_since(from);
        let down_failed = failed.iter().any(|o| o.kind == "upload" && o.at < back);
        assert!(down_failed, "{code}: no upload failed in {outage:?}: {window:?}");
        for outcome in &failed {
            assert_eq!((outcome.status, outcome.code.as_str()), (503, code), "{outcome:?}");
            assert!(outcome.latency < Duration::from_secs(8), "not fast: {outcome:?}");
        }
    }
    // Once the service reports ready again, every request sent succeeds, with no restart: uploads,
    // presigns and resolves alike.
    for (from, to) in [(t_pg_ready, t_s3_down), (t_s3_ready, t_end)] {
        let after = tally(&log, from, to);
        for kind in KINDS {
            let served = after.iter().any(|((k, status, _), _)| *k == kind && *status == 200);
            assert!(served, "no {kind} succeeded after recovery: {after:?}");
        }
        let ok = after.keys().all(|(_, status, _)| *status == 200);
        assert!(ok, "after recovery: {after:?}\n{}\ngarage:\n{}", service.logs(), garage.logs());
    }
    // Nothing acknowledged was lost, nothing is left unreferenced.
    let stored = stored.lock().unwrap().clone();
    assert!(stored.len() >= 10, "{} uploads acknowledged", stored.len());
    assert_readable(&service, |_| token.clone(), &stored).await;
    let sweep = run(&vars, &["sweep", "--abandoned-after", "0s"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    // More rows than acknowledgements only when a commit went through but its answer was lost.
    assert!(assert_rows_match_objects(&vars, &garage.s3).await >= stored.len());
    service.stop();
}
