//! Three `media-api serve` replicas on one PostgreSQL and one Garage behind HAProxy (round-robin),
//! as deployed (`support::fleet`): `rotate-keys` beside 200 operations through the balancer, a
//! tenant shred beside that tenant's uploads, `kill -9` of a replica during uploads, and how soon a
//! DELETE through one replica is seen by the others.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::app::sha256_hex;
use crate::support::faults::{assert_readable_at, assert_rows_match_objects, journaled, rows_and_objects, Rotation};
use crate::support::fleet::{answer, bucket_count, direct_upload, Fleet};
use crate::support::media::png;
use crate::support::own::S3Target;
use crate::support::process::{run, var};

/// One operation of a client, and what came of it: `Ok(id)` (stored, or deleted), else the
/// status and code.
#[derive(Debug, Clone)]
struct Op {
    kind: &'static str,
    answered: Instant,
    result: Result<String, String>,
    sha: String,
}

/// `clients` tasks, each doing at most `ops` operations through `base` until `stop`: raw uploads,
/// every fourth a direct upload (prepare, PUT, complete) and, with `deletes`, every fourth a DELETE
/// of the client's last stored upload. Every body is distinct (`salt`), so no upload is deduplicated
/// into another. A refusal for a tenant being shredded stops every client.
fn clients(
    base: &str,
    token: &str,
    (clients, ops, deletes): (usize, usize, bool),
    salt: u64,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<Vec<Op>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|client| {
            let (base, token, stop, log) = (base.to_owned(), token.to_owned(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let http = crate::support::faults::http();
                let mut mine: Vec<String> = Vec::new();
                for j in 0..ops {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let seed = salt + client as u64 * 100_000 + j as u64;
                    let body = png(2_000 + (seed % 7) as usize * 25_000, seed);
                    let sha = sha256_hex(&body);
                    let (kind, result) = match j % 4 {
                        3 if deletes && !mine.is_empty() => {
                            let id = mine.pop().unwrap();
                            let request = http.delete(format!("{base}/v1/media/{id}")).bearer_auth(&token);
                            ("delete", remove(request, id).await)
                        }
                        2 => ("direct", direct_upload(&http, &base, &token, body).await),
                        _ => {
                            let request = http.post(format!("{base}/v1/media")).bearer_auth(&token);
                            let request = request.header("content-type", "image/png").body(body);
                            ("upload", answer(request).await.map(|v| v["id"].as_str().unwrap_or_default().to_owned()))
                        }
                    };
                    if let (Ok(id), "upload" | "direct") = (&result, kind) {
                        mine.push(id.clone());
                    }
                    if result.as_ref().is_err_and(|e| e.contains("tenant_shredding")) {
                        stop.store(true, Ordering::Relaxed);
                    }
                    log.lock().unwrap().push(Op { kind, answered: Instant::now(), result, sha });
                }
            })
        })
        .collect()
}

/// A DELETE: `Ok(id)` on 204.
async fn remove(request: reqwest::RequestBuilder, id: String) -> Result<String, String> {
    let response = request.send().await.map_err(|e| format!("transport: {e}"))?;
    match response.status().as_u16() {
        204 => Ok(id),
        status => {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            Err(format!("{status} {}", body["code"].as_str().unwrap_or_default()))
        }
    }
}

/// Runs the clients to the end of their operations.
async fn operations(base: &str, token: &str, shape: (usize, usize, bool), salt: u64) -> Vec<Op> {
    let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    for client in clients(base, token, shape, salt, &stop, &log) {
        client.await.unwrap();
    }
    Arc::try_unwrap(log).unwrap().into_inner().unwrap()
}

/// Waits (at most 120 s) until `count` uploads answered after `since` are stored.
async fn wait_for_stored(log: &Mutex<Vec<Op>>, since: Instant, count: usize) {
    let started = Instant::now();
    let stored =
        || log.lock().unwrap().iter().filter(|o| o.kind != "delete" && o.answered > since && o.result.is_ok()).count();
    while stored() < count {
        assert!(started.elapsed() < Duration::from_secs(120), "fewer than {count} uploads stored in 120 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (tenant, id, sha256) of every stored upload not deleted afterwards, and the deleted ids.
fn stored(tenant: &str, ops: &[Op]) -> (Vec<(String, String, String)>, Vec<String>) {
    let deleted: Vec<String> =
        ops.iter().filter(|o| o.kind == "delete").filter_map(|o| o.result.clone().ok()).collect();
    let kept = ops
        .iter()
        .filter(|o| o.kind != "delete")
        .filter_map(|o| o.result.as_ref().ok().map(|id| (tenant.to_owned(), id.clone(), o.sha.clone())))
        .filter(|(_, id, _)| !deleted.contains(id))
        .collect();
    (kept, deleted)
}

/// Media rows of `tenant` in the fleet's database.
async fn rows_of(fleet: &Fleet, tenant: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(var(&fleet.vars, "MEDIA_DATABASE_URL")).await.unwrap();
    let sql = "SELECT COUNT(*) FROM media_objects WHERE tenant_id = $1";
    sqlx::query_scalar(sql).bind(tenant).fetch_one(&mut conn).await.unwrap()
}

/// A one-shot subcommand that must succeed; its JSON output.
fn admin(fleet: &Fleet, args: &[&str]) -> Value {
    let output = run(&fleet.vars, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?} printed no JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_keys_beside_two_hundred_uploads_completes_and_deletes_through_the_balancer_loses_nothing() {
    let fleet = Fleet::start(3, &[]).await;
    let token = fleet.token("acme");
    // Rows for the rotation to move one per batch while the operations go on.
    let seeded = operations(&fleet.balancer, &token, (4, 30, false), 1_000_000).await;
    let failed: Vec<_> = seeded.iter().filter(|o| o.result.is_err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let mut rotation = Rotation::start_with(&fleet.vars, &["--tenant", "acme", "--batch-size", "1"]);
    let (running, rotation) = tokio::task::spawn_blocking(move || {
        let running = rotation.wait_for("re-encrypting", Duration::from_secs(120));
        (running, rotation)
    })
    .await
    .unwrap();
    assert!(running, "rotate-keys never reported re-encrypting");

    let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let load = clients(&fleet.balancer, &token, (4, 50, true), 2_000_000, &stop, &log);
    let summary = tokio::task::spawn_blocking(move || (rotation.finish(Duration::from_secs(300)), Instant::now()));
    for client in load {
        client.await.unwrap();
    }
    let (summary, rotation_ended) = summary.await.unwrap();
    let summary = summary.unwrap_or_else(|e| panic!("{e}"));
    let ops = log.lock().unwrap().clone();
    assert_eq!(ops.len(), 200);
    let failed: Vec<_> = ops.iter().filter(|o| o.result.is_err()).collect();
    assert!(failed.is_empty(), "operations failed beside the rotation: {failed:?}");
    let during = ops.iter().filter(|o| o.answered < rotation_ended).count();
    assert!(during > 0, "the rotation ended before any operation was answered: {summary}");
    eprintln!("fleet rotation: {during} of 200 operations answered while rotate-keys ran; {summary}");

    // Nothing is left under the old version: the run moved every row and retired version 1.
    assert_eq!(summary["rows_pending"], 0, "{summary}");
    let retired = summary["versions_retired"].as_array().unwrap();
    assert!(retired.iter().any(|r| r["tenant"] == "acme" && r["version"] == 1), "{summary}");
    let (kept, deleted) = stored("acme", &[seeded, ops].concat());
    assert!(deleted.len() >= 40, "{} deletes", deleted.len());
    let status = admin(&fleet, &["keys", "status", "--tenant", "acme", "--json"]);
    let deks: Vec<(u64, String, i64)> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["purpose"] == "dek")
        .map(|k| (k["version"].as_u64().unwrap(), k["state"].as_str().unwrap().to_owned(), k["rows"].as_i64().unwrap()))
        .collect();
    assert_eq!(deks, [(1, "retired".to_owned(), 0), (2, "active".to_owned(), kept.len() as i64)], "{status}");
    // Every acknowledged upload reads back through the balancer; every deleted one is gone on
    // every replica; every row decrypts, and rows and objects match one to one.
    assert_readable_at(&fleet.balancer, |_| token.clone(), &kept).await;
    for id in &deleted {
        for i in 0..fleet.count() {
            let response =
                fleet.http.get(format!("{}/v1/media/{id}", fleet.replica(i))).bearer_auth(&token).send().await;
            assert_eq!(response.unwrap().status(), 404, "{id}, deleted, is served by replica {i}");
        }
    }
    assert_eq!(assert_rows_match_objects(&fleet.vars, &S3Target::shared()).await, kept.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_shred_while_its_uploads_go_through_every_replica_leaves_nothing_of_it_in_the_bucket() {
    let fleet = Fleet::start(3, &[]).await;
    let (doomed, bystander) = (fleet.token("doomed"), fleet.token("bystander"));
    let others = operations(&fleet.balancer, &bystander, (2, 6, false), 3_000_000).await;
    let (others, _) = stored("bystander", &others);
    assert_eq!(others.len(), 12);

    // The doomed tenant's uploads (raw and direct) go round-robin through the three replicas;
    // the shred runs as its own process once 60 are stored.
    let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let started = Instant::now();
    let load = clients(&fleet.balancer, &doomed, (4, 400, false), 4_000_000, &stop, &log);
    wait_for_stored(&log, started, 60).await;
    let vars = fleet.vars.clone();
    let shred_started = Instant::now();
    let shred = tokio::task::spawn_blocking(move || run(&vars, &["tenant", "shred", "doomed", "--yes"]));
    let shred = shred.await.unwrap();
    let shred_ended = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for client in load {
        client.await.unwrap();
    }
    assert!(shred.status.success(), "{}", String::from_utf8_lossy(&shred.stderr));
    let report: Value = serde_json::from_slice(&shred.stdout).unwrap();
    assert_eq!(report["objects_unreadable"], 0, "{report}");
    let ops = log.lock().unwrap().clone();
    // Every answer was a success or the clear refusal of a tenant being shredded (a completion
    // whose pending row the shred removed answers 404); the shred did overlap the uploads.
    let unexpected: Vec<_> = ops
        .iter()
        .filter(|o| {
            o.result
                .as_ref()
                .is_err_and(|e| e != "409 tenant_shredding" && !(o.kind == "direct" && e == "404 not_found"))
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    assert!(
        ops.iter().any(|o| o.result.as_ref().is_err_and(|e| e == "409 tenant_shredding")),
        "no upload met the shred"
    );

    // One sweep (no upload is in flight any more), then count: nothing of the shredded tenant is
    // left. An upload answered after the shred ended belongs to the tenant started afresh.
    let sweep = admin(&fleet, &["sweep", "--abandoned-after", "0s"]);
    let (doomed_ops, _) = stored("doomed", &ops);
    let afresh: Vec<_> = ops.iter().filter(|o| o.answered > shred_ended && o.result.is_ok()).collect();
    let rows = rows_of(&fleet, "doomed").await;
    let prefix = fleet.prefix();
    let (objects, uploads) = bucket_count(&format!("{prefix}m/")).await;
    let (staging, _) = bucket_count(&format!("{prefix}staging/")).await;
    eprintln!(
        "fleet shred: {} uploads stored, shred {:?} ({report}), sweep {sweep}; left: {rows} rows, {objects} objects \
         ({} the bystander's), {staging} staging, {uploads} multipart; {} stored after the shred",
        doomed_ops.len(),
        shred_ended - shred_started,
        others.len(),
        afresh.len()
    );
    assert_eq!(rows, afresh.len() as i64, "rows of the shredded tenant left");
    assert_eq!((objects, staging, uploads), (others.len() + afresh.len(), 0, 0), "objects left in the bucket");
    // Nothing unreadable anywhere: every row left decrypts and has its object, and the bystander's
    // uploads read back.
    assert_eq!(assert_rows_match_objects(&fleet.vars, &S3Target::shared()).await, others.len() + afresh.len());
    assert_readable_at(&fleet.balancer, |_| bystander.clone(), &others).await;
    for (_, id, _) in doomed_ops.iter().filter(|(_, id, _)| !afresh.iter().any(|o| o.result.as_ref() == Ok(id))) {
        let response = fleet.http.get(fleet.url(&format!("/v1/media/{id}"))).bearer_auth(&doomed).send().await;
        assert_eq!(response.unwrap().status(), 404, "{id} survived the shred");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_during_uploads_loses_no_acknowledged_upload_and_reconcile_removes_the_leftovers() {
    let mut fleet = Fleet::start(3, &[]).await;
    let token = fleet.token("acme");
    let (stop, log) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let started = Instant::now();
    let load = clients(&fleet.balancer, &token, (4, 150, false), 5_000_000, &stop, &log);
    wait_for_stored(&log, started, 20).await;
    fleet.kill9(1);
    let killed = Instant::now();
    // The balancer notices, and uploads go on through the other two.
    fleet.wait_server(1, "DOWN").await;
    wait_for_stored(&log, Instant::now(), 20).await;
    stop.store(true, Ordering::Relaxed);
    for client in load {
        client.await.unwrap();
    }
    let ops = log.lock().unwrap().clone();
    let (acknowledged, _) = stored("acme", &ops);
    let failed: Vec<_> = ops
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| (o.kind, e, o.answered.saturating_duration_since(killed))))
        .collect();
    eprintln!(
        "fleet kill -9: {} uploads stored, {} failed (kind, answer, time after the kill): {failed:?}",
        acknowledged.len(),
        failed.len()
    );
    assert_readable_at(&fleet.balancer, |_| token.clone(), &acknowledged).await;

    // What the kill left: objects no row references (writes cut off mid-way, journaled). The sweep
    // takes the journaled ones, reconcile anything else; then rows and objects match one to one.
    let s3 = S3Target::shared();
    let (referenced, objects, uploads) = rows_and_objects(&fleet.vars, &s3).await;
    let leftovers = objects.difference(&referenced).count();
    let sweep = admin(&fleet, &["sweep", "--abandoned-after", "0s"]);
    let reconcile = admin(&fleet, &["reconcile", "--grace", "0s"]);
    eprintln!("fleet kill -9: left {leftovers} objects without a row and {uploads} multipart uploads; sweep {sweep}; reconcile {reconcile}");
    assert_eq!(reconcile["failed"], 0, "{reconcile}");
    let (referenced, objects, uploads) = rows_and_objects(&fleet.vars, &s3).await;
    let orphans: Vec<_> = objects.difference(&referenced).collect();
    assert!(orphans.is_empty() && uploads == 0, "left: {orphans:?}, {uploads} multipart uploads");
    // A prepare-upload whose answer the kill cut off leaves a pending row the client never heard
    // of, whose object was never PUT (the sweeper removes it once its URL has expired, plus an
    // hour); every other row has its object.
    let missing: Vec<_> = referenced.difference(&objects).collect();
    assert!(missing.iter().all(|key| key.contains("/staging/")), "rows without an object: {missing:?}");
    let rows = referenced.len();
    assert!(rows >= acknowledged.len(), "{rows} rows for {} acknowledged uploads", acknowledged.len());
    assert_eq!(journaled(&fleet.vars).await, 0, "journal entries left");
    let again = admin(&fleet, &["reconcile", "--grace", "0s", "--dry-run"]);
    assert_eq!(again["orphans"], 0, "{again}");
}

/// The status of a presign of `id` through replica `i`.
async fn presign(fleet: &Fleet, i: usize, token: &str, id: &str) -> u16 {
    let url = format!("{}/v1/media/{id}/presign", fleet.replica(i));
    fleet.http.get(url).bearer_auth(token).send().await.unwrap().status().as_u16()
}

/// Uploads through the balancer and presigns through every replica (so each caches the row).
async fn cached_upload(fleet: &Fleet, token: &str, seed: u64) -> String {
    let request = fleet.http.post(fleet.url("/v1/media")).bearer_auth(token).header("content-type", "image/png");
    let id = answer(request.body(png(3_000, seed))).await.unwrap()["id"].as_str().unwrap().to_owned();
    for i in 0..fleet.count() {
        assert_eq!(presign(fleet, i, token, &id).await, 200, "replica {i} serves {id}");
    }
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_through_one_replica_is_seen_by_every_other_replica_at_once() {
    let fleet = Fleet::start(3, &[("MEDIA_RECORD_CACHE_TTL", "300s")]).await;
    let token = fleet.token("acme");
    // A row removed behind every replica's back (no notification) is still served by each: their
    // caches are on, so what follows is the notification at work.
    let id = cached_upload(&fleet, &token, 6_000_000).await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(var(&fleet.vars, "MEDIA_DATABASE_URL")).await.unwrap();
        let gone = sqlx::query("DELETE FROM media_objects WHERE id = $1").bind(&id).execute(&mut conn).await.unwrap();
        assert_eq!(gone.rows_affected(), 1);
    }
    for i in 0..fleet.count() {
        assert_eq!(presign(&fleet, i, &token, &id).await, 200, "replica {i} does not cache");
    }

    // DELETE through replica r (each in turn), then presign through each other replica until 404.
    let mut seen = Vec::new();
    for round in 0..9u64 {
        let id = cached_upload(&fleet, &token, 6_000_001 + round).await;
        let deleting = round as usize % fleet.count();
        let url = format!("{}/v1/media/{id}", fleet.replica(deleting));
        let deleted = fleet.http.delete(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(deleted.status(), 204);
        let answered = Instant::now();
        let others = (0..fleet.count()).filter(|i| *i != deleting).map(|i| {
            let (fleet, token, id) = (&fleet, &token, &id);
            async move {
                while presign(fleet, i, token, id).await != 404 {
                    assert!(answered.elapsed() < Duration::from_secs(10), "replica {i} still serves {id} after 10 s");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                answered.elapsed()
            }
        });
        seen.extend(futures::future::join_all(others).await);
    }
    seen.sort();
    eprintln!(
        "fleet: a DELETE through one replica is seen by another after {:?} (median of {}), at most {:?}",
        seen[seen.len() / 2],
        seen.len(),
        seen[seen.len() - 1]
    );
}
