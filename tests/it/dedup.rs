//! Dedup as invisible storage sharing (issue 15 item 7), through the HTTP API on both stacks: every
//! upload gets its own ID and record, identical bytes of a tenant share one object, `deduped` answers
//! only the caller who uploaded the bytes before, each user deletes only their own record, and the
//! object goes with its last reference — also when uploads race (in one process and in two), for
//! direct uploads, and through a tenant shred.

use bytes::Bytes;
use media_api::db::audit::count_kind;
use media_api::jobs::shred::shred;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::app::{Stack, STACKS};
use crate::support::media::{json_of, media_app, png, MediaApp};

/// The JSON view of `id` (`GET` with `Accept: application/json`).
async fn view(m: &MediaApp, token: &str, id: &str) -> (StatusCode, Value) {
    json_of(m.get(token, &format!("/v1/media/{id}")).header("accept", "application/json").send().await.unwrap()).await
}

/// The bytes `GET /v1/media/{id}` serves (asserting a 200).
async fn download(m: &MediaApp, token: &str, id: &str) -> Bytes {
    let response = m.get(token, &format!("/v1/media/{id}")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{id}");
    response.bytes().await.unwrap()
}

/// An upload that must succeed: its id and `deduped`.
async fn stored(answer: reqwest::Response) -> (String, bool) {
    let (status, body) = json_of(answer).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (body["id"].as_str().unwrap().to_owned(), body["deduped"].as_bool().unwrap())
}

#[tokio::test]
async fn two_users_uploading_the_same_bytes_get_their_own_records_sharing_one_object() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let db = &m.app.state.db;
        let (alice, bob) = (m.alice(), m.token("tenant-a", "bob", &[]));
        let image = png(5000, 71);

        let (alice_id, deduped) = stored(m.upload_named(&alice, "alice-holiday.png", image.clone()).await).await;
        assert!(!deduped, "{stack:?}: the tenant's first copy");
        let (status, answer) = json_of(m.upload_named(&bob, "bob-scan.png", image.clone()).await).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {answer}");
        let bob_id = answer["id"].as_str().unwrap().to_owned();
        assert_ne!(bob_id, alice_id, "{stack:?}: bob gets his own ID, not alice's");
        assert_eq!(answer["deduped"], false, "{stack:?}: nothing tells bob that someone had these bytes");
        let fetched = m.http().get(answer["presigned_url"].as_str().unwrap()).send().await.unwrap();
        let disposition = fetched.headers()["content-disposition"].to_str().unwrap().to_owned();
        assert!(disposition.contains("bob-scan.png"), "{stack:?}: bob's URL names his file: {disposition}");
        assert_eq!(fetched.bytes().await.unwrap(), Bytes::from(image.clone()));
        assert_eq!(m.counts().await, (2, 1), "{stack:?}: two records, one object");

        // A retry by the same caller answers that caller's record: idempotent, nothing stored.
        let again = stored(m.upload_named(&alice, "renamed.png", image.clone()).await).await;
        assert_eq!(again, (alice_id.clone(), true), "{stack:?}");
        let again = stored(m.upload_named(&bob, "bob-scan.png", image.clone()).await).await;
        assert_eq!(again, (bob_id.clone(), true), "{stack:?}");
        assert_eq!(m.counts().await, (2, 1), "{stack:?}: the retries stored nothing");
        assert_eq!(m.journaled().await, 0, "{stack:?}: the retries' copies are deleted, their entries closed");
        assert_eq!(count_kind(db, "media.uploaded").await.unwrap(), 2, "{stack:?}: one event per new record");

        // Each sees their own record.
        let (status, bob_view) = view(&m, &bob, &bob_id).await;
        assert_eq!((status, bob_view["filename"].as_str()), (StatusCode::OK, Some("bob-scan.png")), "{stack:?}");
        let (_, alice_view) = view(&m, &alice, &alice_id).await;
        assert_eq!(alice_view["filename"].as_str(), Some("alice-holiday.png"), "{stack:?}");

        // Bob cannot delete alice's record; alice deleting hers leaves bob's bytes.
        let (status, refused) = m.delete(&bob, &alice_id).await;
        assert_eq!((status, refused["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_owner")), "{stack:?}");
        assert!(refused["error"].as_str().is_some_and(|e| e.contains("uploader")), "{refused}");
        assert_eq!(m.counts().await, (2, 1), "{stack:?}: the refused delete changed nothing");
        assert_eq!(m.delete(&alice, &alice_id).await.0, StatusCode::NO_CONTENT, "{stack:?}");
        assert_eq!(view(&m, &alice, &alice_id).await.0, StatusCode::NOT_FOUND, "{stack:?}");
        assert_eq!(download(&m, &bob, &bob_id).await, Bytes::from(image.clone()), "{stack:?}");
        assert_eq!(m.counts().await, (1, 1), "{stack:?}: the shared object stays with bob's record");
        assert_eq!(m.journaled().await, 0, "{stack:?}: the shared object was not journaled for deletion");
        assert_eq!(m.sweep_all().await.orphans_deleted, 0, "{stack:?}");
        assert_eq!(download(&m, &bob, &bob_id).await, Bytes::from(image.clone()), "{stack:?}: still after a sweep");

        // Bob's delete takes the object with its last reference.
        assert_eq!(m.delete(&bob, &bob_id).await.0, StatusCode::NO_CONTENT, "{stack:?}");
        assert_eq!(m.counts().await, (0, 0), "{stack:?}: no record, no object");
        assert_eq!(m.journaled().await, 0, "{stack:?}: the object's delete is complete");
        let report = m.sweep_all().await;
        assert_eq!((report.orphans_deleted, report.failed), (0, 0), "{stack:?}: nothing left behind: {report:?}");
        assert_eq!(count_kind(db, "media.deleted").await.unwrap(), 2, "{stack:?}: one event per delete");
    }
}

#[tokio::test]
async fn direct_uploads_share_the_object_at_completion() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let (alice, bob, carol) = (m.alice(), m.token("tenant-a", "bob", &[]), m.token("tenant-a", "carol", &[]));
        let image = png(4096, 72);
        let (alice_id, _) = stored(m.upload_named(&alice, "a.png", image.clone()).await).await;

        // Bob completes a direct upload of the same bytes: his own ID, the shared object.
        let prepared = m.prepare_and_put(&bob, "b.png", image.clone()).await;
        let bob_id = prepared["id"].as_str().unwrap();
        let (status, completed) = m.complete(&bob, bob_id).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {completed}");
        assert_eq!((completed["id"].as_str(), completed["deduped"].as_bool()), (Some(bob_id), Some(false)));
        assert_eq!(m.counts().await, (2, 1), "{stack:?}: the staged and verified copies are gone");

        // Alice's direct upload of bytes she has: her earlier record; the pending one goes.
        let prepared = m.prepare_and_put(&alice, "again.png", image.clone()).await;
        let (status, completed) = m.complete(&alice, prepared["id"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{stack:?}: {completed}");
        assert_eq!((completed["id"].as_str(), completed["deduped"].as_bool()), (Some(alice_id.as_str()), Some(true)));
        assert_eq!(view(&m, &alice, prepared["id"].as_str().unwrap()).await.0, StatusCode::NOT_FOUND, "{stack:?}");
        assert_eq!(m.counts().await, (2, 1), "{stack:?}");

        // Carol never completes: reading her pending ID verifies it, keeping her ID.
        let prepared = m.prepare_and_put(&carol, "c.png", image.clone()).await;
        let carol_id = prepared["id"].as_str().unwrap();
        assert_eq!(download(&m, &carol, carol_id).await, Bytes::from(image.clone()), "{stack:?}");
        let (_, carol_view) = view(&m, &carol, carol_id).await;
        assert_eq!((carol_view["id"].as_str(), carol_view["filename"].as_str()), (Some(carol_id), Some("c.png")));
        assert_eq!(m.counts().await, (3, 1), "{stack:?}: three records, one object");
        assert_eq!(count_kind(&m.app.state.db, "media.uploaded").await.unwrap(), 3, "{stack:?}");

        for (token, id) in [(&bob, bob_id), (&alice, alice_id.as_str())] {
            assert_eq!(m.delete(token, id).await.0, StatusCode::NO_CONTENT, "{stack:?}");
            assert_eq!(download(&m, &carol, carol_id).await, Bytes::from(image.clone()), "{stack:?}");
        }
        assert_eq!(m.delete(&carol, carol_id).await.0, StatusCode::NO_CONTENT, "{stack:?}");
        m.sweep_all().await;
        assert_eq!(m.counts().await, (0, 0), "{stack:?}");
        // Left: the staging key of alice's given-up pending upload (its object is deleted), journaled
        // until its upload URL has expired, as for every removed pending upload.
        assert_eq!(m.journaled().await, 1, "{stack:?}");
    }
}

#[tokio::test]
async fn eight_callers_racing_identical_uploads_keep_eight_records_and_one_object() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let image = png(150_000, 73);
        let tokens: Vec<String> = (0..8).map(|i| m.token("tenant-a", &format!("user-{i}"), &[])).collect();
        let uploads = tokens.iter().enumerate().map(|(i, token)| {
            let (m, body) = (&m, image.clone());
            async move { m.upload_named(token, &format!("user-{i}.png"), body).await }
        });
        let mut ids = Vec::new();
        for answer in futures::future::join_all(uploads).await {
            let (id, deduped) = stored(answer).await;
            assert!(!deduped, "{stack:?}: no caller had these bytes before");
            ids.push(id);
        }
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 8, "{stack:?}: {ids:?}");
        assert_eq!(m.counts().await, (8, 1), "{stack:?}: every record, one object");
        assert_eq!(m.journaled().await, 0, "{stack:?}: the losers' copies were deleted");
        for (i, (token, id)) in tokens.iter().zip(&ids).enumerate() {
            let (_, own) = view(&m, token, id).await;
            assert_eq!(own["filename"].as_str(), Some(format!("user-{i}.png").as_str()), "{stack:?}");
        }
        assert_eq!(download(&m, &tokens[7], &ids[7]).await, Bytes::from(image.clone()));

        // All delete at once: exactly one of them is the last reference.
        let deletes = tokens.iter().zip(&ids).map(|(token, id)| m.delete(token, id));
        for (status, body) in futures::future::join_all(deletes).await {
            assert_eq!(status, StatusCode::NO_CONTENT, "{stack:?}: {body}");
        }
        assert_eq!(m.counts().await, (0, 0), "{stack:?}: the object went with the last record");
        assert_eq!(m.journaled().await, 0, "{stack:?}");
        let db = &m.app.state.db;
        assert_eq!(count_kind(db, "media.uploaded").await.unwrap(), 8, "{stack:?}");
        assert_eq!(count_kind(db, "media.deleted").await.unwrap(), 8, "{stack:?}");
    }
}

#[tokio::test]
async fn a_delete_of_the_last_reference_racing_new_uploads_of_its_bytes_loses_no_object() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let (alice, bob, carol) = (m.alice(), m.token("tenant-a", "bob", &[]), m.token("tenant-a", "carol", &[]));
        for round in 0..6 {
            let image = png(20_000, 200 + round);
            let (alice_id, _) = stored(m.upload_named(&alice, "a.png", image.clone()).await).await;
            // Alice deletes the only reference while bob and carol upload the same bytes: whichever
            // order the group is taken in, their records must end up with an object.
            let (deleted, bob_answer, carol_answer) = tokio::join!(
                m.delete(&alice, &alice_id),
                m.upload_named(&bob, "b.png", image.clone()),
                m.upload_named(&carol, "c.png", image.clone()),
            );
            assert_eq!(deleted.0, StatusCode::NO_CONTENT, "{stack:?}: {}", deleted.1);
            let (bob_id, carol_id) = (stored(bob_answer).await.0, stored(carol_answer).await.0);
            assert_eq!(download(&m, &bob, &bob_id).await, Bytes::from(image.clone()), "{stack:?}: round {round}");
            assert_eq!(download(&m, &carol, &carol_id).await, Bytes::from(image.clone()), "{stack:?}: round {round}");
            assert_eq!(m.counts().await, (2, 1), "{stack:?}: round {round}");
            assert_eq!(m.journaled().await, 0, "{stack:?}: round {round}");
            let (bob_gone, carol_gone) = tokio::join!(m.delete(&bob, &bob_id), m.delete(&carol, &carol_id));
            assert_eq!((bob_gone.0, carol_gone.0), (StatusCode::NO_CONTENT, StatusCode::NO_CONTENT));
            assert_eq!(m.counts().await, (0, 0), "{stack:?}: round {round}");
            assert_eq!(m.journaled().await, 0, "{stack:?}: round {round}");
        }
    }
}

#[tokio::test]
async fn identical_uploads_racing_through_two_processes_keep_every_record_and_one_object() {
    let master = format!("k1:{}", media_api::crypto::keyring::Keyring::generate_key());
    let a = media_app(Stack::PostgresS3, &[("MEDIA_MASTER_KEYS", master.as_str())]).await;
    let url = a.app.state.config.database.url.expose_secret().to_owned();
    let shared =
        [("MEDIA_MASTER_KEYS", master.as_str()), ("MEDIA_DATABASE_URL", &url), ("MEDIA_STORAGE_PREFIX", &a.prefix)];
    let b = media_app(Stack::PostgresS3, &shared).await;
    let image = png(120_000, 74);
    // Callers 0, 2, 4, 6 upload through a, the others through b; each then reads through the other.
    let apps = |i: usize| if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
    let callers: Vec<(String, String)> = (0..8)
        .map(|i| {
            let (via, other) = apps(i);
            (via.token("tenant-a", &format!("user-{i}"), &[]), other.token("tenant-a", &format!("user-{i}"), &[]))
        })
        .collect();
    let uploads = callers.iter().enumerate().map(|(i, (token, _))| {
        let ((via, _), body) = (apps(i), image.clone());
        async move { via.upload_named(token, &format!("user-{i}.png"), body).await }
    });
    let mut ids = Vec::new();
    for answer in futures::future::join_all(uploads).await {
        let (id, deduped) = stored(answer).await;
        assert!(!deduped);
        ids.push(id);
    }
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 8, "{ids:?}");
    assert_eq!(a.counts().await, (8, 1), "every record, one object, across two processes");
    assert_eq!(a.journaled().await, 0, "the losers' copies were deleted");
    for (i, ((_, other_token), id)) in callers.iter().zip(&ids).enumerate() {
        let (_, other) = apps(i);
        let (status, own) = view(other, other_token, id).await;
        assert_eq!((status, own["filename"].as_str()), (StatusCode::OK, Some(format!("user-{i}.png").as_str())));
        assert_eq!(download(other, other_token, id).await, Bytes::from(image.clone()));
    }
}

#[tokio::test]
async fn a_shred_deletes_a_shared_object_once_and_leaves_nothing() {
    for stack in STACKS {
        let m = media_app(stack, &[]).await;
        let (alice, bob) = (m.alice(), m.token("tenant-a", "bob", &[]));
        let image = png(3000, 75);
        stored(m.upload_named(&alice, "a.png", image.clone()).await).await;
        stored(m.upload_named(&bob, "b.png", image.clone()).await).await;
        stored(m.upload_named(&bob, "other.png", png(3000, 76)).await).await;
        assert_eq!(m.counts().await, (3, 2), "{stack:?}");
        let state = &m.app.state;
        let report = shred(&state.keys, state.pipeline.removal(), "tenant-a").await.unwrap();
        assert_eq!((report.rows_deleted, report.objects_deleted, report.objects_unreadable), (3, 2, 0), "{stack:?}");
        assert_eq!(m.counts().await, (0, 0), "{stack:?}: every object is gone");
    }
}
