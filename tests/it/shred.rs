//! `tenant shred`: the tenant's objects, rows and keys go; other tenants are untouched; without
//! `--yes` nothing happens; while it runs the tenant's writes are refused everywhere, and no process
//! can seal a row under the destroyed keys afterwards; a copy of its encrypted objects taken before
//! (a bucket backup) opens under no key the service still holds.

use std::sync::Arc;
use std::time::Duration;

use media_api::crypto::envelope::KeyPurpose;
use media_api::crypto::object::{open_object, ObjectHeader};
use media_api::db::media::{InsertOutcome, MediaRecord};
use media_api::db::tenant_keys::KeySettings;
use media_api::db::{tenants, DbError};
use media_api::jobs::removal::Removal;
use media_api::jobs::shred::shred;
use media_api::storage::fs::FsBlobStore;
use media_api::storage::links::{LinkKey, LinkSigner};
use media_api::storage::StorageError;
use media_api::with_pool;

use crate::support::app::{chunked, collect, payload, random_hex, spawn_app, Stack, TestApp, STACKS};
use crate::support::media::{json_of, media_app, png};
use crate::support::repository::{fixtures, new_media};

/// Stores an object and its row; returns the row.
async fn upload(app: &TestApp, tenant: &str, seed: u64) -> MediaRecord {
    let mut media = new_media(tenant, &payload(64, seed));
    media.storage_key = format!("{tenant}/{}", random_hex(8));
    app.state.blobs.put(&media.storage_key, "image/png", chunked(payload(64, seed))).await.unwrap();
    app.state.media.insert(&media).await.unwrap();
    media
}

#[tokio::test]
async fn shredding_removes_the_tenants_objects_rows_and_keys_and_nothing_else() {
    for stack in STACKS {
        let app = spawn_app(stack).await;
        let (doomed, kept) = (format!("doomed-{}", random_hex(3)), format!("kept-{}", random_hex(3)));
        let mut gone = Vec::new();
        for seed in 0..3 {
            gone.push(upload(&app, &doomed, seed).await);
        }
        let survivor = upload(&app, &kept, 99).await;

        let report = shred(&app.state.keys, app.state.pipeline.removal(), &doomed).await.unwrap();
        assert_eq!((report.objects_deleted, report.rows_deleted, report.keys_destroyed), (3, 3, 2), "{stack:?}");

        for media in &gone {
            assert!(app.state.media.get(&doomed, &media.id).await.unwrap().is_none(), "{stack:?}: row left");
            let head = app.state.blobs.head(&media.storage_key).await;
            assert!(matches!(head, Err(StorageError::NotFound)), "{stack:?}: object left: {head:?}");
        }
        let material: Vec<Option<Vec<u8>>> = with_pool!(&app.state.db, |pool| sqlx::query_scalar(
            "SELECT wrapped_key FROM tenant_keys WHERE tenant_id = $1"
        )
        .bind(&doomed)
        .fetch_all(pool)
        .await)
        .unwrap();
        assert!(!material.is_empty() && material.iter().all(Option::is_none), "{stack:?}: key material left");

        let read = app.state.media.get(&kept, &survivor.id).await.unwrap().expect("other tenant untouched");
        assert_eq!(read.record, survivor);
        assert!(app.state.blobs.head(&survivor.storage_key).await.is_ok(), "{stack:?}");
        // The shredded tenant id can start over with new keys.
        upload(&app, &doomed, 7).await;
    }
}

#[tokio::test]
async fn without_yes_nothing_is_shredded() {
    let app = spawn_app(Stack::SqliteFs).await;
    let media = upload(&app, "acme", 1).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
        .args(["tenant", "shred", "acme"])
        .env_clear()
        .env("MEDIA_DATA_DIR", app.dir.path().join("data"))
        .env("MEDIA_KEYS_DIR", app.dir.path().join("keys"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("without --yes"));
    assert!(app.state.media.get("acme", &media.id).await.unwrap().is_some());
    assert!(app.state.blobs.head(&media.storage_key).await.is_ok());
}

#[tokio::test]
async fn admin_commands_refuse_what_is_not_a_tenant_id_and_touch_no_key() {
    let app = spawn_app(Stack::SqliteFs).await;
    upload(&app, "acme", 1).await;
    let before = app.state.keys.key_rows(None).await.unwrap().len();
    // The empty id is where the audit key lives; it is nobody's tenant.
    for args in [
        &["rotate-keys", "--tenant", ""][..],
        &["tenant", "shred", "", "--yes"][..],
        &["rotate-keys", "--tenant", "a/b"][..],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
            .args(args)
            .env_clear()
            .env("MEDIA_DATA_DIR", app.dir.path().join("data"))
            .env("MEDIA_KEYS_DIR", app.dir.path().join("keys"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("is not a tenant id"), "{args:?}: {stderr}");
    }
    assert_eq!(app.state.keys.key_rows(None).await.unwrap().len(), before, "a key was created or destroyed");
}

#[tokio::test]
async fn while_a_tenant_is_shredding_every_write_is_refused_and_after_it_the_tenant_starts_afresh() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let state = &m.app.state;
        let tenant = format!("shredding-{}", random_hex(3));
        let token = m.token(&tenant, "alice", &[]);
        let (status, before) = json_of(m.upload_raw(&token, "image/png", png(1500, 40)).await).await;
        assert_eq!(status, 200, "{before}");
        let counts = m.counts().await;

        tenants::set_state(&state.db, &tenant, "shredding").await.unwrap();
        let (status, refused) = json_of(m.upload_raw(&token, "image/png", png(1500, 41)).await).await;
        assert_eq!(
            (status.as_u16(), refused["code"].as_str()),
            (409, Some("tenant_shredding")),
            "{stack:?}: {refused}"
        );
        assert!(refused["error"].as_str().unwrap().contains("being destroyed"), "{refused}");
        assert_eq!(m.counts().await, counts, "{stack:?}: a refused upload left something");
        let err = state.media.insert(&new_media(&tenant, b"direct")).await.unwrap_err();
        assert!(matches!(err, DbError::TenantShredding), "{stack:?}: {err}");

        let report = shred(&state.keys, state.pipeline.removal(), &tenant).await.unwrap();
        assert_eq!((report.rows_deleted, report.objects_unreadable), (1, 0), "{stack:?}");
        assert_eq!(tenants::state(&state.db, &tenant).await.unwrap().as_deref(), Some("shredded"));
        let (status, after) = json_of(m.upload_raw(&token, "image/png", png(1500, 42)).await).await;
        assert_eq!(status, 200, "{stack:?}: the tenant starts afresh: {after}");
        let stored = state.media.get(&tenant, after["id"].as_str().unwrap()).await.unwrap().expect("row");
        assert!(stored.dek_version > 1, "{stack:?}: sealed under a new key, not a destroyed one");
        assert_eq!(tenants::state(&state.db, &tenant).await.unwrap().as_deref(), Some("active"));
    }
}

#[tokio::test]
async fn a_process_whose_key_cache_predates_a_shred_cannot_seal_under_the_destroyed_key() {
    for fx in fixtures(KeySettings::default()).await {
        // Another process: it learned the tenant's current DEK before the shred and would keep it.
        let stale = KeySettings { current_ttl: Duration::from_secs(3600), ..KeySettings::default() };
        let (_, writer) = fx.reopen(stale);
        writer.insert(&new_media("acme", b"before the shred")).await.unwrap();
        // The shred here destroys every key of the tenant (its row is gone with it).
        let dir = tempfile::tempdir().unwrap();
        let signer = LinkSigner::new(LinkKey::generate(), url::Url::parse("http://127.0.0.1/").unwrap());
        let blobs = FsBlobStore::open(dir.path(), Arc::new(signer)).await.unwrap();
        let (keys, repo) = fx.reopen(KeySettings::default());
        let removal = Removal::new(Arc::new(blobs), repo.clone(), fx.db.clone(), Duration::from_secs(60), "");
        let report = shred(&keys, &removal, "acme").await.unwrap();
        assert_eq!(report.rows_deleted, 1, "{}", fx.db.backend());
        // The stale process writes again: its cached version is destroyed, so the database refuses
        // it, and the write is sealed again under a fresh key.
        let after = new_media("acme", b"after the shred");
        assert_eq!(writer.insert(&after).await.unwrap(), InsertOutcome::Inserted);
        let (_, cold) = fx.reopen(KeySettings::default());
        let read = cold.get("acme", &after.id).await.unwrap().expect("readable: not sealed under a destroyed key");
        assert_eq!(read.record, after);
        assert!(read.dek_version > 1, "{}: {}", fx.db.backend(), read.dek_version);
    }
}

#[tokio::test]
async fn a_copy_of_a_shredded_tenants_ciphertext_opens_under_no_key_the_service_holds() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_OBJECT_ENCRYPTION", "on")]).await;
        let state = &m.app.state;
        let tenant = format!("copied-{}", random_hex(3));
        let token = m.token(&tenant, "alice", &[]);
        let image = png(200_000, 50);
        let (status, uploaded) = json_of(m.upload_raw(&token, "image/png", image.clone()).await).await;
        assert_eq!(status, 200, "{uploaded}");
        let row = state.media.get(&tenant, uploaded["id"].as_str().unwrap()).await.unwrap().unwrap().record;
        // A backup of the bucket, taken before the shred.
        let copy = collect(state.blobs.get(&row.storage_key, None).await.unwrap().body).await;
        let context = [tenant.as_bytes(), row.storage_key.as_bytes()];
        let version = ObjectHeader::parse(&copy).unwrap().dek_version;
        assert_eq!(Some(version), row.object_dek_version);
        let dek = state.keys.version(&tenant, KeyPurpose::Dek, version).await.unwrap();
        assert_eq!(open_object(&dek, &context, &copy, None).unwrap(), image, "{stack:?}: the copy opens before");
        let destroyed = *dek.bytes();
        drop(dek);

        shred(&state.keys, state.pipeline.removal(), &tenant).await.unwrap();
        // The tenant starts afresh (new keys), and other tenants keep theirs.
        let (status, _) = json_of(m.upload_raw(&token, "image/png", png(3000, 51)).await).await;
        assert_eq!(status, 200);
        json_of(m.upload_raw(&m.alice(), "image/png", png(3000, 52)).await).await;

        state.keys.forget_all();
        let gone = state.keys.version(&tenant, KeyPurpose::Dek, version).await;
        assert!(matches!(gone, Err(DbError::MissingKey { .. })), "{stack:?}: {gone:?}");
        let mut held = 0;
        for key in state.keys.key_rows(None).await.unwrap() {
            if key.state == "destroyed" {
                continue;
            }
            let purpose = if key.purpose == "dek" { KeyPurpose::Dek } else { KeyPurpose::Index };
            let live = state.keys.version(&key.tenant_id, purpose, key.version).await.unwrap();
            // The object key derives from the DEK alone (with the copy's own salt and context): no
            // live key equal to the destroyed one, no key that opens it.
            assert_ne!(*live.bytes(), destroyed, "{stack:?}: {key:?} is the shredded key");
            held += 1;
        }
        assert!(held >= 4, "{stack:?}: the other tenant's and the fresh keys were checked ({held})");
    }
}
