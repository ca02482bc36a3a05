//! `tenant shred`: the tenant's objects, rows and keys go; other tenants are untouched; without
//! `--yes` nothing happens.

use media_api::db::media::MediaRecord;
use media_api::jobs::shred::shred;
use media_api::storage::StorageError;
use media_api::with_pool;

use crate::support::app::{chunked, payload, random_hex, spawn_app, Stack, TestApp, STACKS};
use crate::support::repository::new_media;

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

        let report = shred(&app.state.keys, &app.state.media, app.state.blobs.as_ref(), &doomed).await.unwrap();
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
