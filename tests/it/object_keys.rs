//! Objects moved to new keys beside the running service (issue 17 item 5), on PostgreSQL and
//! Garage: `rotate-keys --objects` then `encrypt-objects` while two replicas behind HAProxy take
//! uploads, direct uploads, dedup joins and deletes; and a `rotate-keys --objects` killed (`kill -9`)
//! at points of its run, again and again, then run to its end. (`object_moves.rs`: the same work
//! in-process on both stacks.)

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media_api::crypto::object::ObjectHeader;
use serde_json::Value;

use crate::support::app::{sha256_hex, Stack};
use crate::support::faults::{assert_readable_at, assert_rows_match_objects, http, rows_and_objects, Rotation};
use crate::support::fleet::{answer, bucket_objects, direct_upload, Fleet};
use crate::support::media::{holds, marked};
use crate::support::own::S3Target;
use crate::support::process::{binary_vars, run, token, var, Service};

/// Written into every test image: what must not be found in the bucket once objects are encrypted.
pub const MARKER: &str = "OBJECT-KEYS-PLAINTEXT-MARKER";
const TENANT: &str = "acme";

/// A stored upload: (tenant, id, sha256 of its bytes).
type Stored = (String, String, String);

/// One operation of the load and what came of it.
#[derive(Debug, Clone)]
struct Op {
    kind: &'static str,
    answered: Instant,
    /// The id stored (or deleted), else the status and code.
    result: Result<String, String>,
    sha: String,
}

/// A raw upload of `body` through `base`; the id on 200.
async fn upload(http: &reqwest::Client, base: &str, token: &str, body: Vec<u8>) -> Result<String, String> {
    let request = http.post(format!("{base}/v1/media")).bearer_auth(token).header("content-type", "image/png");
    answer(request.body(body)).await.map(|v| v["id"].as_str().unwrap_or_default().to_owned())
}

/// A DELETE: `Ok(id)` on 204.
async fn delete(http: &reqwest::Client, base: &str, token: &str, id: String) -> Result<String, String> {
    let response = http.delete(format!("{base}/v1/media/{id}")).bearer_auth(token).send().await;
    let response = response.map_err(|e| format!("transport: {e}"))?;
    match response.status().as_u16() {
        204 => Ok(id),
        status => Err(format!("{status} {}", response.text().await.unwrap_or_default())),
    }
}

/// `n` marked images uploaded by `token` through `base` (seeds `seed..`), and each image's bytes.
async fn seed(base: &str, token: &str, n: u64, seed: u64) -> Vec<(Stored, Vec<u8>)> {
    let http = http();
    let mut out = Vec::new();
    for i in 0..n {
        let body = marked(3_000 + (i as usize % 5) * 40_000, seed + i, MARKER);
        let id = upload(&http, base, token, body.clone()).await.expect("a seed upload");
        out.push(((TENANT.to_owned(), id, sha256_hex(&body)), body));
    }
    out
}

/// The load beside the commands: `clients` tasks through `base` until `stop` (at most 300 operations
/// each): fresh uploads by alice, direct uploads, another uploader joining the group of seeded bytes
/// (`joinable`), and deletes — of alice's own fresh uploads, and of seeded rows whose group keeps
/// another row (`shared`).
fn load(
    vars: &[(String, String)],
    base: &str,
    clients: u64,
    joinable: &Arc<Vec<Vec<u8>>>,
    shared: &Arc<Mutex<Vec<String>>>,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<Vec<Op>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let alice = token(vars, TENANT, "alice");
            let joiner = token(vars, TENANT, &format!("joiner-{client}"));
            let (base, joinable, shared, stop, log) =
                (base.to_owned(), joinable.clone(), shared.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let http = http();
                let mut mine: Vec<String> = Vec::new();
                for j in 0..300u64 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seed = 5_000_000 + client * 100_000 + j;
                    let fresh = marked(2_000 + (j as usize % 4) * 30_000, seed, MARKER);
                    let (kind, sha, result) = match j % 5 {
                        1 => {
                            let bytes = joinable[(j as usize / 5 + client as usize) % joinable.len()].clone();
                            ("join", sha256_hex(&bytes), upload(&http, &base, &joiner, bytes).await)
                        }
                        2 => {
                            let victim = match j % 10 {
                                2 => shared.lock().unwrap().pop(),
                                _ => mine.pop(),
                            };
                            let Some(id) = victim.or_else(|| mine.pop()) else { continue };
                            ("delete", String::new(), delete(&http, &base, &alice, id).await)
                        }
                        4 => ("direct", sha256_hex(&fresh), direct_upload(&http, &base, &alice, fresh).await),
                        _ => ("upload", sha256_hex(&fresh), upload(&http, &base, &alice, fresh).await),
                    };
                    if let (Ok(id), "upload" | "direct") = (&result, kind) {
                        mine.push(id.clone());
                    }
                    log.lock().unwrap().push(Op { kind, answered: Instant::now(), result, sha });
                }
            })
        })
        .collect()
}

/// What was acknowledged and not deleted afterwards (with the seeds), and the deleted ids.
fn kept(seeded: &[Stored], ops: &[Op]) -> (Vec<Stored>, Vec<String>) {
    let deleted: BTreeSet<String> =
        ops.iter().filter(|o| o.kind == "delete").filter_map(|o| o.result.clone().ok()).collect();
    let stored = ops
        .iter()
        .filter(|o| o.kind != "delete")
        .filter_map(|o| o.result.as_ref().ok().map(|id| (TENANT.to_owned(), id.clone(), o.sha.clone())));
    let mut kept: Vec<Stored> =
        seeded.iter().cloned().chain(stored).filter(|(_, id, _)| !deleted.contains(id)).collect();
    kept.sort();
    kept.dedup();
    (kept, deleted.into_iter().collect())
}

/// One scalar of the service's database.
async fn scalar(vars: &[(String, String)], sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(var(vars, "MEDIA_DATABASE_URL")).await.unwrap();
    sqlx::query_scalar(sql).bind(TENANT).fetch_one(&mut conn).await.unwrap()
}

/// Every object under the service's prefix is sealed under `version` (its header says so) and holds
/// no test plaintext; returns how many there are.
async fn assert_all_sealed_under(vars: &[(String, String)], version: u32) -> usize {
    let objects = bucket_objects(var(vars, "MEDIA_STORAGE_PREFIX")).await;
    for (key, bytes) in &objects {
        assert!(!holds(bytes, MARKER.as_bytes()), "{key} holds plaintext");
        let header = ObjectHeader::parse(bytes).unwrap_or_else(|_| panic!("{key} is not an encrypted object"));
        assert_eq!(header.dek_version, version, "{key} is sealed under another version");
    }
    objects.len()
}

/// The DEK versions of the tenant in `keys status`: (version, state, rows, object rows), and its
/// rows whose object is in the clear.
fn dek_inventory(vars: &[(String, String)]) -> (Vec<(u64, String, i64, i64)>, Value) {
    let output = run(vars, &["keys", "status", "--tenant", TENANT, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let deks = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["purpose"] == "dek")
        .map(|k| {
            let count = |name: &str| k[name].as_i64().unwrap();
            (
                k["version"].as_u64().unwrap(),
                k["state"].as_str().unwrap().to_owned(),
                count("rows"),
                count("object_rows"),
            )
        })
        .collect();
    (deks, status["plain_object_rows"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_objects_then_encrypt_objects_beside_two_replicas_lose_nothing_and_leave_nothing_old() {
    let fleet = Fleet::start(2, &[("MEDIA_OBJECT_ENCRYPTION", "on")]).await;
    let vars = fleet.vars.clone();
    let (alice, bob) = (fleet.token(TENANT), token(&vars, TENANT, "bob"));
    // Before encryption was turned on: a replica of then, storing in the clear.
    let plain_vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| match k.as_str() {
            "MEDIA_OBJECT_ENCRYPTION" => (k.clone(), "off".to_owned()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut legacy = Service::start(&plain_vars);
    legacy.wait_up(&fleet.http).await;
    let plain = seed(&legacy.base, &alice, 12, 1_000).await;
    legacy.stop();
    let sealed = seed(&fleet.balancer, &alice, 24, 2_000).await;
    // Bob has the same bytes as alice for a third of each: dedup groups of two rows, one object.
    let mut seeded: Vec<Stored> = Vec::new();
    let mut shared = Vec::new();
    for ((stored, bytes), i) in plain.iter().chain(&sealed).zip(0..) {
        seeded.push(stored.clone());
        if i % 3 == 0 {
            let id = upload(&fleet.http, &fleet.balancer, &bob, bytes.clone()).await.unwrap();
            seeded.push((TENANT.to_owned(), id, stored.2.clone()));
            shared.push(stored.1.clone());
        }
    }
    let (deks, plain_rows) = dek_inventory(&vars);
    assert_eq!(deks, [(1, "active".to_owned(), seeded.len() as i64, 32)], "{deks:?}");
    assert_eq!(plain_rows[TENANT], 16, "{plain_rows}");

    // The load runs from before the first command starts until after the second ends.
    let joinable = Arc::new(plain.iter().chain(&sealed).map(|(_, bytes)| bytes.clone()).collect::<Vec<_>>());
    let (stop, log, shared) =
        (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(shared)));
    let clients = load(&vars, &fleet.balancer, 2, &joinable, &shared, &stop, &log);
    let started = Instant::now();
    let commands = {
        let vars = vars.clone();
        tokio::task::spawn_blocking(move || {
            let grace = ["--old-object-grace", "1s", "--batch-size", "4"];
            let rotation = Rotation::start_with(&vars, &[&["--objects", "--tenant", TENANT][..], &grace].concat());
            let rotated = rotation.finish(Duration::from_secs(300));
            let encryption = Rotation::command(&vars, "encrypt-objects", &grace);
            (rotated, encryption.finish(Duration::from_secs(300)), Instant::now())
        })
    };
    let (rotated, encrypted, ended) = commands.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (rotated, encrypted) = (rotated.unwrap_or_else(|e| panic!("{e}")), encrypted.unwrap_or_else(|e| panic!("{e}")));
    let ops = log.lock().unwrap().clone();
    let failed: Vec<_> = ops.iter().filter(|o| o.result.is_err()).collect();
    assert!(failed.is_empty(), "operations failed beside the commands: {failed:?}");
    let during = ops.iter().filter(|o| o.answered > started && o.answered < ended).count();
    let kinds: BTreeSet<&str> = ops.iter().filter(|o| o.answered < ended).map(|o| o.kind).collect();
    assert!(during > 0 && kinds.len() == 4, "the commands ended before the load got going: {kinds:?}");
    eprintln!("object keys: {during} operations answered while the commands ran; {rotated}\n{encrypted}");

    // The rotation moved every sealed object and retired version 1; encrypt-objects sealed every
    // plain one under version 2; nothing failed or is left.
    let objects = &rotated["objects"];
    assert!(objects["objects_moved"].as_u64().unwrap() > 0, "{rotated}");
    assert_eq!(
        (objects["objects_failed"].as_u64(), objects["object_rows_pending"].as_i64()),
        (Some(0), Some(0)),
        "{rotated}"
    );
    assert!(rotated["versions_retired"].as_array().unwrap().iter().any(|r| r["version"] == 1), "{rotated}");
    assert!(encrypted["objects_moved"].as_u64().unwrap() > 0, "{encrypted}");
    assert_eq!(
        (encrypted["objects_failed"].as_u64(), encrypted["object_rows_pending"].as_i64()),
        (Some(0), Some(0)),
        "{encrypted}"
    );
    // Old objects are kept for their grace (1 s) and what a run did not delete itself is left to
    // the sweeper: once the last grace has ended, a sweep takes every one.
    let mut last_kept = None;
    for objects in [&rotated["objects"], &encrypted] {
        let (moved, deleted, kept) =
            (&objects["objects_moved"], &objects["old_objects_deleted"], &objects["old_objects_kept"]);
        assert_eq!(moved.as_u64(), Some(deleted.as_u64().unwrap() + kept.as_u64().unwrap()), "{objects}");
        let until =
            objects["old_objects_kept_until"].as_str().map(|t| chrono::DateTime::parse_from_rfc3339(t).unwrap());
        last_kept = last_kept.max(until);
    }
    if let Some(wait) = last_kept.and_then(|at| (at.to_utc() - chrono::Utc::now()).to_std().ok()) {
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
    // A replica's background sweeper may hold the sweep lock at that moment (the pass is then
    // skipped): sweep until a pass ran.
    for attempt in 0.. {
        let sweep = run(&vars, &["sweep"]);
        assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
        let report: Value = serde_json::from_slice(&sweep.stdout).unwrap();
        if report["skipped"] == false {
            break;
        }
        assert!(attempt < 100, "every sweep was skipped: {report}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still_kept = "SELECT COUNT(*) FROM blob_journal WHERE delete_after IS NOT NULL AND tenant_id = $1";
    assert_eq!(scalar(&vars, still_kept).await, 0, "old objects kept past their grace and a sweep");
    let (kept, deleted) = kept(&seeded, &ops);
    let old = "SELECT COUNT(*) FROM media_objects WHERE tenant_id = $1 \
               AND (object_dek_version IS NULL OR object_dek_version <> 2 OR dek_version <> 2)";
    assert_eq!(scalar(&vars, old).await, 0, "rows left under version 1 or in the clear");
    let (deks, plain_rows) = dek_inventory(&vars);
    let rows = kept.len() as i64;
    assert_eq!(deks, [(1, "retired".to_owned(), 0, 0), (2, "active".to_owned(), rows, rows)], "{deks:?}");
    assert_eq!(plain_rows, serde_json::json!({}), "plain objects left");
    // In the bucket: every object sealed under version 2, no plaintext; every row's object there and
    // every object a row's; every acknowledged upload reads back, every deleted one is gone.
    let objects = assert_all_sealed_under(&vars, 2).await;
    assert_eq!(assert_rows_match_objects(&vars, &S3Target::shared()).await, objects);
    assert_readable_at(&fleet.balancer, |_| alice.clone(), &kept).await;
    for id in &deleted {
        let response = fleet.http.get(fleet.url(&format!("/v1/media/{id}"))).bearer_auth(&alice).send().await;
        assert_eq!(response.unwrap().status(), 404, "{id} was deleted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_objects_killed_at_eight_points_then_run_to_its_end_loses_nothing_and_sweeps_clean() {
    let dir = tempfile::tempdir().unwrap();
    // No background sweeper: the test counts what its own sweeps take.
    let env = [("MEDIA_OBJECT_ENCRYPTION", "on"), ("MEDIA_SWEEP_INTERVAL", "0")];
    let vars = binary_vars(Stack::PostgresS3, dir.path(), &env).await;
    let http = http();
    let mut service = Service::start(&vars);
    service.wait_up(&http).await;
    let (alice, bob) = (token(&vars, TENANT, "alice"), token(&vars, TENANT, "bob"));
    let mut acknowledged: Vec<Stored> = Vec::new();
    let mut joined = 0;
    for ((stored, bytes), i) in seed(&service.base, &alice, 40, 7_000).await.into_iter().zip(0..) {
        acknowledged.push(stored.clone());
        if i % 4 == 0 {
            let id = upload(&http, &service.base, &bob, bytes).await.unwrap();
            acknowledged.push((TENANT.to_owned(), id, stored.2));
            joined += 1;
        }
    }

    // Uploads keep coming while the run is killed: between batches, mid-batch, before retiring, with
    // old objects kept for their grace (journaled as kept, not yet deleted).
    let (stop, writing) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let writer = {
        let (base, alice, stop, writing) = (service.base.clone(), alice.clone(), stop.clone(), writing.clone());
        tokio::spawn(async move {
            let http = crate::support::faults::http();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = marked(4_000, 9_000_000 + i, MARKER);
                let id = upload(&http, &base, &alice, body.clone()).await.expect("an upload beside the kills");
                writing.lock().unwrap().push((TENANT.to_owned(), id, sha256_hex(&body)));
                i += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let points = [
        ("moving objects", 1, 0),
        ("moving objects", 2, 4),
        ("moving objects", 3, 15),
        ("retiring unused", 1, 0),
        ("moving objects", 5, 1),
        ("moving objects", 8, 0),
        ("moving objects", 1, 30),
        ("moving objects", 4, 60),
    ];
    let args = ["--objects", "--batch-size", "2", "--old-object-grace", "5s"];
    let mut landed = 0;
    for (event, nth, delay) in points {
        let rotation = Rotation::start_with(&vars, &args);
        if tokio::task::spawn_blocking(move || rotation.kill_at(event, nth, Duration::from_millis(delay)))
            .await
            .unwrap()
        {
            landed += 1;
        }
    }
    assert_eq!(landed, points.len(), "every kill point was reached while the run was going");

    // The run to the end: every object under the last version, every older version retired.
    let rerun = run(&vars, &["rotate-keys", "--objects", "--old-object-grace", "0s"]);
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    let summary: Value = serde_json::from_slice(&rerun.stdout).unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    acknowledged.extend(writing.lock().unwrap().clone());
    assert_eq!(summary["objects"]["object_rows_pending"], 0, "{summary}");
    assert_eq!(summary["objects"]["objects_failed"], 0, "{summary}");
    let last = points.len() as u32 + 2;
    let (deks, _) = dek_inventory(&vars);
    let rows = acknowledged.len() as i64;
    assert_eq!(deks.last(), Some(&(u64::from(last), "active".to_owned(), rows, rows)), "{deks:?}");
    assert!(deks[..deks.len() - 1].iter().all(|(_, state, n, m)| state == "retired" && *n == 0 && *m == 0), "{deks:?}");

    // What the kills left behind (copies never referenced, old objects not yet deleted) is journaled,
    // never unreachable; the sweeper deletes it, and then rows and objects match one to one.
    let (referenced, stored, _) = rows_and_objects(&vars, &S3Target::shared()).await;
    let journal: BTreeSet<String> = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(var(&vars, "MEDIA_DATABASE_URL")).await.unwrap();
        sqlx::query_scalar("SELECT storage_key FROM blob_journal")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect()
    };
    let unreachable: Vec<_> = stored.iter().filter(|k| !referenced.contains(*k) && !journal.contains(*k)).collect();
    assert!(unreachable.is_empty(), "objects neither referenced nor journaled: {unreachable:?}");
    // The killed runs' old objects are journaled as kept until their grace ends (the last run kept
    // none: grace 0s). Once it has, a sweep takes them — not the copies the kills cut off, younger
    // than the abandoned-upload age — and then one that takes every abandoned write takes the rest.
    assert_eq!((summary["objects"]["old_objects_kept"].as_u64(), journal.is_empty()), (Some(0), false), "{summary}");
    let (kept, last_kept): (i64, Option<chrono::DateTime<chrono::Utc>>) = {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(var(&vars, "MEDIA_DATABASE_URL")).await.unwrap();
        let sql = "SELECT COUNT(delete_after), MAX(delete_after) FROM blob_journal";
        sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap()
    };
    assert!(kept > 0, "no kill left an old object kept");
    if let Some(wait) = last_kept.and_then(|at| (at - chrono::Utc::now()).to_std().ok()) {
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
    let sweep = run(&vars, &["sweep", "--abandoned-after", "1h"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    let swept: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(swept["orphans_deleted"].as_i64(), Some(kept), "{swept}");
    let sweep = run(&vars, &["sweep", "--abandoned-after", "0s"]);
    assert!(sweep.status.success(), "{}", String::from_utf8_lossy(&sweep.stderr));
    let objects = acknowledged.len() - joined;
    assert_eq!(assert_rows_match_objects(&vars, &S3Target::shared()).await, objects, "one object per group");
    assert_eq!(assert_all_sealed_under(&vars, last).await, objects);
    assert_readable_at(&service.base, |_| alice.clone(), &acknowledged).await;
    service.stop();
}
