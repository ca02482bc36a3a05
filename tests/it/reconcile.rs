//! `reconcile` on both stacks: objects under the service's prefix that no row and no journal entry
//! references are deleted once older than the grace period; everything a row or the journal
//! references, and everything outside the prefix, stays.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use media_api::db::journal;
use media_api::http::state::AppState;
use media_api::jobs::reconcile::{reconcile, reconcile_shard};
use media_api::storage::StorageError;
use serde_json::json;

use crate::support::app::{random_hex, sha256_hex, STACKS};
use crate::support::media::{json_of, media_app, png};

async fn put(state: &AppState, key: &str, bytes: Vec<u8>) {
    let body = futures::stream::iter([Ok(Bytes::from(bytes))]).boxed();
    state.blobs.put(key, "image/png", body).await.unwrap();
}

#[tokio::test]
async fn reconcile_deletes_only_old_objects_that_nothing_references() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let alice = m.alice();
        let image = png(1000, 30);
        let (_, kept) = json_of(m.upload_raw(&alice, "image/png", image.clone()).await).await;
        let prepare = json!({"mime_type": "image/png", "bytes": 10});
        let request = m.http().post(m.url("/v1/media/prepare-upload")).bearer_auth(&alice).json(&prepare);
        let (status, _) = json_of(request.send().await.unwrap()).await;
        assert_eq!(status, 200, "a pending row: its staging key is referenced, its object not there yet");
        let state = &m.app.state;
        // An upload in flight: journaled before its first byte, no row yet.
        let in_flight = state.pipeline.new_storage_key();
        journal::open(&state.db, &in_flight).await.unwrap();
        put(state, &in_flight, png(600, 31)).await;
        // What nothing references: an object whose row never came and whose entry is gone.
        let orphan = state.pipeline.new_storage_key();
        put(state, &orphan, png(700, 32)).await;
        // Another deployment's object in the same bucket or directory: outside the prefix.
        let foreign = format!("other-{}/m/{}", random_hex(4), random_hex(8));
        put(state, &foreign, png(800, 33)).await;
        // Something else under the service's own prefix, outside the key spaces it writes.
        let beside = format!("{}/notes/{}", m.prefix, random_hex(8));
        put(state, &beside, png(900, 35)).await;
        let before = m.counts().await;
        let removal = state.pipeline.removal();

        let young = reconcile(removal, Duration::from_secs(3600), false).await.unwrap();
        assert_eq!((young.objects_listed, young.orphans), (0, 0), "{stack:?}: within the grace period: {young:?}");
        let dry = reconcile(removal, Duration::ZERO, true).await.unwrap();
        assert_eq!((dry.orphans, dry.orphans_deleted), (1, 0), "{stack:?}: {dry:?}");
        assert_eq!(m.counts().await, before, "{stack:?}: a dry run deletes nothing");

        let report = reconcile(removal, Duration::ZERO, false).await.unwrap();
        let counts = (report.objects_listed, report.rows, report.journaled, report.orphans, report.orphans_deleted);
        assert_eq!(counts, (3, 2, 1, 1, 1), "{stack:?}: {report:?}");
        assert_eq!(report.failed, 0);
        assert!(matches!(state.blobs.head(&orphan).await, Err(StorageError::NotFound)), "{stack:?}: orphan kept");
        assert!(state.blobs.head(&in_flight).await.is_ok(), "{stack:?}: a journaled object was deleted");
        assert!(state.blobs.head(&foreign).await.is_ok(), "{stack:?}: an object outside the prefix was deleted");
        assert!(state.blobs.head(&beside).await.is_ok(), "{stack:?}: an object outside the key spaces was deleted");
        let download = m.get(&alice, &format!("/v1/media/{}", kept["id"].as_str().unwrap())).send().await.unwrap();
        assert_eq!(download.status(), 200, "{stack:?}");
        assert_eq!(sha256_hex(&download.bytes().await.unwrap()), sha256_hex(&image), "{stack:?}");
        let (rows, objects) = m.counts().await;
        assert_eq!((rows, objects), (before.0, before.1 - 1), "{stack:?}: exactly the orphan went");
        state.blobs.delete(&beside).await.unwrap();
        let again = reconcile(removal, Duration::ZERO, false).await.unwrap();
        assert_eq!(again.orphans, 0, "{stack:?}: {again:?}");

        // A row whose storage key cannot be read (here: its ciphertext replaced) could name any
        // object: the pass refuses to delete anything.
        let id = kept["id"].as_str().unwrap().to_owned();
        let tamper = "UPDATE media_objects SET storage_key_enc = $1 WHERE id = $2";
        let changed = media_api::with_pool!(&state.db, |pool| sqlx::query(tamper)
            .bind(vec![1u8; 48])
            .bind(&id)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))
        .unwrap();
        assert_eq!(changed, 1);
        let second_orphan = state.pipeline.new_storage_key();
        put(state, &second_orphan, png(700, 34)).await;
        let refused = reconcile(removal, Duration::ZERO, false).await.unwrap_err();
        assert!(refused.to_string().contains("1 rows' storage keys cannot be read"), "{stack:?}: {refused}");
        assert!(state.blobs.head(&second_orphan).await.is_ok(), "{stack:?}: deleted despite an unreadable row");
        state.blobs.delete(&foreign).await.unwrap();
    }
}

/// An object key under the service's prefix whose random part starts with hex digit `shard`.
fn key_in_shard(m: &crate::support::media::MediaApp, space: &str, shard: u8) -> String {
    let digit = char::from_digit(u32::from(shard), 16).unwrap();
    format!("{}{space}{digit}{}", m.app.state.pipeline.key_prefix(), &random_hex(16)[1..])
}

#[tokio::test]
async fn a_shard_pass_lists_and_deletes_only_its_own_sixteenth_of_the_key_space() {
    for stack in STACKS {
        let m = media_app(stack, &[("MEDIA_SWEEP_INTERVAL", "0")]).await;
        let state = &m.app.state;
        let (three, five, staging_three) =
            (key_in_shard(&m, "m/", 3), key_in_shard(&m, "m/", 5), key_in_shard(&m, "staging/", 3));
        for key in [&three, &five, &staging_three] {
            put(state, key, png(500, 40)).await;
        }
        let report = reconcile_shard(state.pipeline.removal(), 3, Duration::ZERO).await.unwrap();
        assert_eq!((report.objects_listed, report.orphans_deleted), (2, 2), "{stack:?}: {report:?}");
        assert!(matches!(state.blobs.head(&three).await, Err(StorageError::NotFound)), "{stack:?}");
        assert!(matches!(state.blobs.head(&staging_three).await, Err(StorageError::NotFound)), "{stack:?}");
        assert!(state.blobs.head(&five).await.is_ok(), "{stack:?}: another shard's object was touched");
    }
}

#[tokio::test]
async fn the_background_sweeper_reconciles_every_shard_in_turn_and_keeps_what_is_referenced() {
    let vars = [("MEDIA_SWEEP_INTERVAL", "20ms"), ("MEDIA_RECONCILE_GRACE", "1ms")];
    let m = media_app(crate::support::app::Stack::PostgresS3, &vars).await;
    let alice = m.alice();
    let state = &m.app.state;
    let mut kept = Vec::new();
    for seed in 0..4 {
        let image = png(800, 50 + seed);
        let (status, body) = json_of(m.upload_raw(&alice, "image/png", image.clone()).await).await;
        assert_eq!(status, 200);
        kept.push((body["id"].as_str().unwrap().to_owned(), sha256_hex(&image)));
    }
    let in_flight = state.pipeline.new_storage_key();
    journal::open(&state.db, &in_flight).await.unwrap();
    put(state, &in_flight, png(600, 60)).await;
    let orphans: Vec<String> = (0..16).map(|shard| key_in_shard(&m, "m/", shard)).collect();
    for key in &orphans {
        put(state, key, png(300, 61)).await;
    }
    // Every shard has had a pass once every orphan (one per shard) is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for key in &orphans {
        while state.blobs.head(key).await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "the background passes never reached {key}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(state.blobs.head(&in_flight).await.is_ok(), "a journaled object was deleted");
    for (id, sha) in &kept {
        let download = m.get(&alice, &format!("/v1/media/{id}")).send().await.unwrap();
        assert_eq!(download.status(), 200, "{id}");
        assert_eq!(&sha256_hex(&download.bytes().await.unwrap()), sha);
    }
}
