//! Objects moved to new keys, in-process on both stacks (PostgreSQL + Garage, SQLite + the blob
//! directory): moves that lose to a changed group, `encrypt-objects` and `rotate-keys --objects` end
//! to end, old objects kept for their grace, a retired version refusing new objects, and an upload
//! in flight across a retirement.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use media_api::crypto::envelope::KeyPurpose;
use media_api::crypto::object::ObjectHeader;
use media_api::db::media::{MediaRecord, MediaRepo, MediaStatus, MoveOutcome, ObjectsToMove};
use media_api::db::tenant_keys::{KeySettings, TenantKeys};
use media_api::db::DbError;
use media_api::jobs::objects::{encrypt_objects, ObjectWork};
use media_api::jobs::removal::Removal;
use media_api::jobs::rotate::{rotate, rotate_with_objects, RotateOptions};
use media_api::jobs::shred::shred;
use media_api::jobs::sweep::{sweep_once, SweepAges};
use media_api::media::rekey::ObjectMover;
use reqwest::StatusCode;

use crate::object_keys::MARKER;
use crate::support::app::STACKS;
use crate::support::media::{holds, json_of, marked, media_app, MediaApp};

/// The details of tenant-a's audit events of `kind`, oldest first.
async fn audit(db: &media_api::db::Database, kind: &str) -> Vec<serde_json::Value> {
    let sql = "SELECT details FROM audit_events WHERE tenant_id = 'tenant-a' AND kind = $1 ORDER BY seq";
    let details: Vec<String> =
        media_api::with_pool!(db, |pool| sqlx::query_scalar(sql).bind(kind).fetch_all(pool).await).unwrap();
    details.iter().map(|d| serde_json::from_str(d).unwrap()).collect()
}

/// tenant-a's DEK versions in `keys status`: (state, rows, object rows).
async fn deks(repo: &media_api::db::media::MediaRepo) -> Vec<(&'static str, i64, i64)> {
    let status = media_api::admin::keys::status(repo, Some("tenant-a")).await.unwrap();
    let deks = status.keys.iter().filter(|k| k.key.purpose == "dek");
    let state = |k: &media_api::admin::keys::StatusRow| {
        ["active", "retired", "destroyed"].into_iter().find(|s| *s == k.key.state)
    };
    deks.map(|k| (state(k).unwrap(), k.rows.unwrap(), k.object_rows.unwrap())).collect()
}

/// The id of `body` uploaded to `m` by `token`.
async fn posted(m: &MediaApp, token: &str, body: &[u8]) -> String {
    let (status, answer) = json_of(m.upload_raw(token, "image/png", body.to_vec()).await).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// The bytes of `id` as `token` downloads them from `m`.
async fn download(m: &MediaApp, token: &str, id: &str) -> Vec<u8> {
    let response = m.http().get(m.url(&format!("/v1/media/{id}"))).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{id}");
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn on_both_stacks_a_move_lost_to_a_changed_group_keeps_one_object_and_the_jobs_leave_every_object_sealed() {
    for stack in STACKS {
        // Written in the clear (encryption off); the jobs seal whatever the service's setting.
        let m = media_app(stack, &[("MEDIA_OBJECT_ENCRYPTION", "off")]).await;
        let (alice, bob) = (m.alice(), m.token("tenant-a", "bob", &[]));
        let (x, y) = (marked(150_000, 1, MARKER), marked(5_000, 2, MARKER));
        let x_alice = posted(&m, &alice, &x).await;
        let x_bob = posted(&m, &bob, &x).await;
        let y_alice = posted(&m, &alice, &y).await;
        let state = &m.app.state;
        assert_eq!(state.keys.rotation_backlog().await.unwrap(), (1, 0, 0, 3), "{stack:?}: the metrics' counts");
        let (repo, mover) = (&state.media, ObjectMover::new(state.pipeline.clone()));
        let batch = repo.objects_to_move("tenant-a", ObjectsToMove::Plain, None, 10).await.unwrap();
        assert_eq!((batch.rows, batch.objects.len()), (3, 2), "{stack:?}: a group's object is listed once");
        let object = |size: usize| batch.objects.iter().find(|o| o.size == size as u64).unwrap().clone();
        let (stale_x, stale_y) = (object(x.len()), object(y.len()));
        assert!(stale_x.mac.is_some() && [&x_alice, &x_bob].contains(&&stale_x.id), "{stack:?}");

        // A move of an object whose rows moved meanwhile, or went, writes nothing and keeps no copy.
        let version = state.keys.current("tenant-a", KeyPurpose::Dek).await.unwrap().version;
        let kept = Duration::from_secs(86_400);
        // A copy whose journal entry is gone (swept as an abandoned write: the copy took longer than
        // the abandoned-upload age) is never made the rows' object.
        let swept = format!("{}m/swept-copy", m.prefix);
        let lost = repo.move_object(&stale_x, &swept, version, kept).await.unwrap();
        assert_eq!(lost, MoveOutcome::Lost("its copy was swept as abandoned"), "{stack:?}");
        assert_eq!(m.journaled().await, 0, "{stack:?}: nothing journaled, the rows unchanged");
        assert_eq!(
            mover.move_object(&stale_x, version, kept).await.unwrap(),
            MoveOutcome::Moved { rows: 2 },
            "{stack:?}"
        );
        let lost = mover.move_object(&stale_x, version, kept).await.unwrap();
        assert_eq!(lost, MoveOutcome::Lost("its rows reference another object"), "{stack:?}");
        assert_eq!(m.stored_objects().await.len(), 3, "{stack:?}: old and new x, y; the lost copy is gone");
        // The old object is journaled as kept for its grace: even a sweep that takes every abandoned
        // write at once leaves it.
        let ages = SweepAges { presign_ttl: Duration::from_secs(60), abandoned_after: Duration::ZERO };
        let swept = sweep_once(state.pipeline.removal(), ages).await.unwrap();
        assert_eq!((swept.orphans_deleted, m.stored_objects().await.len()), (0, 3), "{stack:?}");
        state.pipeline.discard(&stale_x.storage_key).await;
        let deleted = m.http().delete(m.url(&format!("/v1/media/{y_alice}"))).bearer_auth(&alice).send().await;
        assert_eq!(deleted.unwrap().status(), 204);
        let lost = mover.move_object(&stale_y, version, kept).await.unwrap();
        assert_eq!(lost, MoveOutcome::Lost("its rows are gone"), "{stack:?}");
        assert_eq!(m.stored_objects().await.len(), 1, "{stack:?}: only x's sealed copy");
        for id in [&x_alice, &x_bob] {
            assert_eq!(download(&m, &alice, id).await, x, "{stack:?} {id}");
        }

        // encrypt-objects seals what is plain; a rotation without --objects leaves the objects under
        // version 1, readable, and retires nothing; rotate-keys --objects moves every object to a new
        // version and retires the old ones, which can then gain no object.
        let z = marked(70_000, 3, MARKER);
        let z_bob = posted(&m, &bob, &z).await;
        let work =
            ObjectWork { mover: &mover, removal: state.pipeline.removal(), batch_size: 1, grace: Duration::ZERO };
        let encrypted = encrypt_objects(&state.keys, work, &[], false).await.unwrap();
        assert_eq!((encrypted.objects.objects_moved, encrypted.objects.object_rows_pending), (1, 0), "{stack:?}");
        let rows_only = rotate(&state.keys, repo, &tenant_a()).await.unwrap();
        assert_eq!((rows_only.rows_reencrypted, rows_only.versions_retired.len()), (3, 0), "{stack:?}");
        assert_eq!(deks(repo).await, [("active", 0, 3), ("active", 3, 0)], "{stack:?}: version 1 seals 3 objects");
        assert_eq!(state.keys.rotation_backlog().await.unwrap(), (1, 0, 3, 0), "{stack:?}: the metrics' counts");
        for (id, bytes) in [(&x_bob, &x), (&z_bob, &z)] {
            assert_eq!(&download(&m, &alice, id).await, bytes, "{stack:?} {id} under version 1");
        }
        let opts = RotateOptions { batch_size: 1, ..tenant_a() };
        let rotated = rotate_with_objects(&state.keys, repo, &opts, work).await.unwrap();
        let moved = rotated.objects.unwrap();
        let old = (moved.old_objects_deleted, moved.old_objects_kept, moved.old_objects_kept_until);
        assert_eq!((moved.objects_moved, moved.object_rows_moved, old), (2, 3, (2, 0, None)), "{stack:?}");
        assert_eq!(rotated.versions_retired.len(), 2, "{stack:?}");
        let stored = m.stored_objects().await;
        assert_eq!(stored.len(), 2, "{stack:?}");
        for (key, bytes) in &stored {
            assert!(!holds(bytes, MARKER.as_bytes()), "{stack:?}: {key} holds plaintext");
            assert_eq!(ObjectHeader::parse(bytes).unwrap().dek_version, version + 2, "{stack:?}: {key}");
        }
        for (id, bytes) in [(&x_alice, &x), (&x_bob, &x), (&z_bob, &z)] {
            assert_eq!(&download(&m, &alice, id).await, bytes, "{stack:?} {id}");
        }
        let events = [audit(&state.db, "objects.encrypted").await, audit(&state.db, "key.rotated").await];
        let moved: Vec<_> = events.concat().iter().map(|e| e["objects_moved"].clone()).collect();
        let (one, none, two) = (serde_json::json!(1), serde_json::Value::Null, serde_json::json!(2));
        assert_eq!(moved, [one, none, two], "{stack:?}: encrypted, rotated without and with objects");
        let expected = [("retired", 0, 0), ("retired", 0, 0), ("active", 3, 3)];
        assert_eq!(deks(repo).await, expected, "{stack:?}");
        assert_eq!(state.keys.rotation_backlog().await.unwrap(), (1, 0, 0, 0), "{stack:?}: the metrics' counts");
        let late = MediaRecord {
            id: media_api::domain::media_id::new_id(),
            tenant_id: "tenant-a".into(),
            status: MediaStatus::Ready,
            mime: "image/png".into(),
            size: 1,
            filename: None,
            uploader: "carol".into(),
            user_hint: None,
            storage_key: format!("{}m/late", m.prefix),
            object_dek_version: Some(version),
            sha256: Some([7; 32]),
            metadata: None,
            retention_until: None,
        };
        let refused = repo.insert(&late).await;
        assert!(
            matches!(refused, Err(DbError::KeyChanged)),
            "{stack:?}: a retired version gained an object: {refused:?}"
        );
    }
}

/// The options of a rotation of `tenant-a`.
fn tenant_a() -> RotateOptions {
    RotateOptions { tenants: vec!["tenant-a".into()], batch_size: 10, rewrap_only: false, dry_run: false }
}

/// A raw upload whose first 70,000 bytes are in: its object is journaled and being sealed.
struct UploadInFlight {
    rest: Bytes,
    tx: futures::channel::mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
    answer: tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl UploadInFlight {
    /// Starts uploading `image` to `m` as `token`; returns once the object is journaled.
    async fn start(m: &MediaApp, token: &str, image: &[u8]) -> Self {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
        tx.unbounded_send(Ok(Bytes::copy_from_slice(&image[..70_000]))).unwrap();
        let request = m.http().post(m.url("/v1/media")).bearer_auth(token).header("content-type", "image/png");
        let answer = tokio::spawn(request.body(reqwest::Body::wrap_stream(rx)).send());
        while m.journaled().await == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Self { rest: Bytes::copy_from_slice(&image[70_000..]), tx, answer }
    }

    /// Sends the rest of the bytes; the service's answer.
    async fn finish(self) -> (StatusCode, serde_json::Value) {
        self.tx.unbounded_send(Ok(self.rest)).unwrap();
        drop(self.tx);
        json_of(self.answer.await.unwrap().unwrap()).await
    }
}

#[tokio::test]
async fn on_both_stacks_an_upload_sealed_under_a_version_retired_before_its_row_is_sealed_again_and_stored() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_OBJECT_ENCRYPTION", "on")]).await;
        let alice = m.alice();
        let image = marked(200_000, 9, MARKER);
        // The upload starts: its first bytes are in, its object is being sealed under version 1.
        let upload = UploadInFlight::start(&m, &alice, &image).await;
        // Meanwhile the tenant's keys rotate with its objects: version 1 is used by no row, and retires.
        let state = &m.app.state;
        let mover = ObjectMover::new(state.pipeline.clone());
        let work =
            ObjectWork { mover: &mover, removal: state.pipeline.removal(), batch_size: 10, grace: Duration::ZERO };
        let rotated = rotate_with_objects(&state.keys, &state.media, &tenant_a(), work).await.unwrap();
        assert_eq!(rotated.versions_retired.len(), 1, "{stack:?}");
        // The upload ends: stored, sealed again under version 2.
        let (status, answer) = upload.finish().await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {answer}");
        let id = answer["id"].as_str().unwrap();
        let row = state.media.get("tenant-a", id).await.unwrap().unwrap().record;
        assert_eq!(row.object_dek_version, Some(2), "{stack:?}");
        assert_eq!(download(&m, &alice, id).await, image, "{stack:?}");
        let stored = m.stored_objects().await;
        assert_eq!(stored.len(), 1, "{stack:?}: the object sealed under version 1 is gone");
        assert_eq!(ObjectHeader::parse(&stored[0].1).unwrap().dek_version, 2, "{stack:?}");
        assert!(!holds(&stored[0].1, MARKER.as_bytes()), "{stack:?}");
        assert_eq!(m.journaled().await, 0, "{stack:?}");
    }
}

#[tokio::test]
async fn on_both_stacks_an_upload_sealed_under_a_version_a_shred_destroyed_before_its_row_is_refused_and_nothing_stays()
{
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_OBJECT_ENCRYPTION", "on")]).await;
        let (alice, state) = (m.alice(), &m.app.state);
        let image = marked(200_000, 10, MARKER);
        // The upload starts: its first bytes are sealed under version 1, which this process caches.
        let upload = UploadInFlight::start(&m, &alice, &image).await;
        // Another process shreds the tenant: on SQLite nothing tells this one, whose cache keeps
        // version 1 (on Postgres the notification may or may not have arrived when the row is written).
        let other = Arc::new(TenantKeys::new(state.db.clone(), state.keyring.clone(), KeySettings::default()));
        let repo = MediaRepo::new(state.db.clone(), other.clone());
        let removal = Removal::new(state.blobs.clone(), repo, state.db.clone(), Duration::from_secs(60), "");
        shred(&other, &removal, "tenant-a").await.unwrap();
        // The upload ends: its version is destroyed, so it is not opened again under a fresh key.
        let (status, answer) = upload.finish().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{stack:?}: {answer}");
        assert_eq!(answer["code"], "key_changed", "{stack:?}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|m| m.contains("try again")), "{stack:?}: {answer}");
        let rows = state.media.storage_keys("tenant-a", None, 10).await.unwrap();
        assert!(rows.is_empty(), "{stack:?}: no row");
        assert_eq!(m.stored_objects().await.len(), 0, "{stack:?}: neither the upload nor a copy of it stays");
        assert_eq!(m.journaled().await, 0, "{stack:?}");
        let deks = deks(&state.media).await;
        // Version 1 stays destroyed; the fresh key the refused row write made seals nothing.
        assert_eq!(deks.first().map(|d| d.0), Some("destroyed"), "{stack:?}: {deks:?}");
        assert!(deks.iter().all(|(_, rows, objects)| *rows == 0 && *objects == 0), "{stack:?}: {deks:?}");
    }
}

#[tokio::test]
async fn on_both_stacks_plain_objects_kept_for_their_grace_outlive_the_run_then_go_with_the_sweeper_or_a_shred() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_OBJECT_ENCRYPTION", "off")]).await;
        let (alice, state) = (m.alice(), &m.app.state);
        let (x, y) = (marked(60_000, 11, MARKER), marked(8_000, 12, MARKER));
        let x_id = posted(&m, &alice, &x).await;
        let y_id = posted(&m, &alice, &y).await;
        let y_key = state.media.get("tenant-a", &y_id).await.unwrap().unwrap().record.storage_key;
        let (status, link) = json_of(m.get(&alice, &format!("/v1/media/{x_id}/presign")).send().await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {link}");

        // A day's grace: the run does not wait for it; both plain objects stay, journaled as kept.
        let mover = ObjectMover::new(state.pipeline.clone());
        let day = Duration::from_secs(86_400);
        let work = ObjectWork { mover: &mover, removal: state.pipeline.removal(), batch_size: 10, grace: day };
        let started = chrono::Utc::now();
        let encrypted = encrypt_objects(&state.keys, work, &[], false).await.unwrap().objects;
        let ended = chrono::Utc::now();
        let counts = (encrypted.objects_moved, encrypted.old_objects_deleted, encrypted.old_objects_kept);
        assert_eq!(counts, (2, 0, 2), "{stack:?}: {encrypted:?}");
        let until = encrypted.old_objects_kept_until.unwrap();
        assert!(
            until >= started + chrono::Duration::days(1) && until <= ended + chrono::Duration::days(1),
            "{stack:?}"
        );
        // The sizes of the plain objects in the store.
        let plain = |stored: Vec<(String, Vec<u8>)>| {
            let mut sizes: Vec<_> =
                stored.iter().filter(|(_, b)| holds(b, MARKER.as_bytes())).map(|(_, b)| b.len()).collect();
            sizes.sort();
            sizes
        };
        let stored = m.stored_objects().await;
        assert_eq!(stored.len(), 4, "{stack:?}: two plain, two sealed");
        assert_eq!(plain(stored), [y.len(), x.len()], "{stack:?}");
        // A link handed out before the move still reads the plain object; the service reads the sealed one.
        let linked = m.http().get(link["url"].as_str().unwrap()).send().await.unwrap();
        assert_eq!(linked.status(), StatusCode::OK, "{stack:?}");
        assert_eq!(linked.bytes().await.unwrap().as_ref(), x.as_slice(), "{stack:?}");
        assert_eq!(download(&m, &alice, &x_id).await, x, "{stack:?}");
        // Within their grace even a sweep that takes every abandoned write at once leaves them.
        assert_eq!((m.sweep_all().await.orphans_deleted, m.stored_objects().await.len()), (0, 4), "{stack:?}");

        // y's grace ends (the clock is not waited for: its entry is dated back): the next sweep
        // deletes it, although its entry is younger than any abandoned-upload age.
        let past = chrono::Utc::now() - chrono::Duration::seconds(1);
        let sql = "UPDATE blob_journal SET delete_after = $1 WHERE storage_key = $2";
        let dated = media_api::with_pool!(&state.db, |pool| {
            sqlx::query(sql).bind(past).bind(&y_key).execute(pool).await.map(|done| done.rows_affected())
        });
        assert_eq!(dated.unwrap(), 1, "{stack:?}");
        let ages = SweepAges { presign_ttl: Duration::from_secs(60), abandoned_after: Duration::from_secs(3600) };
        let swept = sweep_once(state.pipeline.removal(), ages).await.unwrap();
        assert_eq!(swept.orphans_deleted, 1, "{stack:?}: {swept:?}");
        assert_eq!(plain(m.stored_objects().await), [x.len()], "{stack:?}: x's plain object is still kept");

        // A shred does not leave the tenant's plaintext for the rest of the grace.
        let report = shred(&state.keys, state.pipeline.removal(), "tenant-a").await.unwrap();
        assert_eq!((report.kept_objects_deleted, report.objects_deleted), (1, 2), "{stack:?}: {report:?}");
        assert_eq!(m.stored_objects().await.len(), 0, "{stack:?}: nothing of the tenant is left in the store");
        let linked = m.http().get(link["url"].as_str().unwrap()).send().await.unwrap();
        assert!(linked.status().is_client_error(), "{stack:?}: {}", linked.status());
    }
}

#[tokio::test]
async fn the_object_commands_refuse_bad_arguments_and_encryption_off_with_a_sentence_and_move_nothing() {
    let m = media_app(crate::support::app::Stack::SqliteFs, &[("MEDIA_OBJECT_ENCRYPTION", "off")]).await;
    let id = posted(&m, &m.alice(), &marked(5_000, 4, MARKER)).await;
    let dir = m.app.dir.path();
    let command = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
            .args(args)
            .env_clear()
            .env("MEDIA_DATA_DIR", dir.join("data"))
            .env("MEDIA_KEYS_DIR", dir.join("keys"))
            .env("MEDIA_OBJECT_ENCRYPTION", "off")
            .output()
            .unwrap();
        (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned(), output.stdout)
    };
    for (args, code, says) in [
        (&["rotate-keys", "--objects", "--old-object-grace", "8d"][..], 2, "longer than 7d"),
        (&["rotate-keys", "--old-object-grace", "1m"][..], 2, "--objects"),
        (&["rotate-keys", "--objects", "--rewrap-only"][..], 2, "cannot be used with"),
        (&["encrypt-objects", "--old-object-grace", "soon"][..], 2, "is not a duration"),
        (&["encrypt-objects", "--batch-size", "0"][..], 2, "0 is not in 1..=100000"),
        (&["encrypt-objects", "--tenant", "a/b"][..], 1, "is not a tenant id"),
        (&["encrypt-objects"][..], 1, "MEDIA_OBJECT_ENCRYPTION is off"),
    ] {
        let (status, stderr, _) = command(args);
        assert_eq!(status, Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let (status, stderr, stdout) = command(&["encrypt-objects", "--dry-run"]);
    assert_eq!(status, Some(0), "{stderr}");
    let plan: serde_json::Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!((plan["dry_run"].as_bool(), plan["plain_rows"]["tenant-a"].as_i64()), (Some(true), Some(1)), "{plan}");
    let row = m.app.state.media.get("tenant-a", &id).await.unwrap().unwrap();
    assert_eq!(row.record.object_dek_version, None, "the object was moved");
    assert!(holds(&m.stored_objects().await[0].1, MARKER.as_bytes()), "the plain object is as it was");
}
