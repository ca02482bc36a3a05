//! The encrypted repository on both databases: round trips, values that do not authenticate where
//! they are found, no plaintext at rest, per-tenant dedup, key creation races and the DEK budget.

use media_api::crypto::envelope::KeyPurpose;
use media_api::crypto::CryptoError;
use media_api::db::media::{Deletion, InsertOutcome, MediaStatus};
use media_api::db::tenant_keys::KeySettings;
use media_api::db::{Database, DbError};
use media_api::with_pool;

use crate::support::app::random_hex;
use crate::support::repository::{fixtures, new_media};

fn is_integrity(err: &DbError) -> bool {
    matches!(err, DbError::Crypto(CryptoError::Integrity | CryptoError::KeyMismatch))
}

#[tokio::test]
async fn rows_round_trip_and_reads_are_scoped_to_the_tenant() {
    for fx in fixtures(KeySettings::default()).await {
        let media = new_media("acme", b"png bytes 1");
        assert_eq!(fx.repo.insert(&media).await.unwrap(), InsertOutcome::Inserted);
        let read = fx.repo.get("acme", &media.id).await.unwrap().expect("row");
        assert_eq!(read.record.filename, media.filename);
        assert_eq!(read.record.uploader, media.uploader);
        assert_eq!(read.record.user_hint, media.user_hint);
        assert_eq!(read.record.storage_key, media.storage_key);
        assert_eq!(read.record.sha256, media.sha256);
        assert_eq!(read.record.metadata, media.metadata);
        assert_eq!((read.record.size, read.dek_version, read.record.status), (11, 1, MediaStatus::Ready));
        assert_eq!(read.record, media, "the whole record round trips");
        assert!(fx.repo.get("other-tenant", &media.id).await.unwrap().is_none(), "{}", fx.db.backend());
        let (_, cold) = fx.reopen(KeySettings::default());
        assert_eq!(cold.get("acme", &media.id).await.unwrap().expect("row").record, media);
        assert_eq!(fx.repo.delete("acme", &media.id, None, None).await.unwrap(), Deletion::Last);
        assert!(fx.repo.get("acme", &media.id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn a_cached_row_is_served_only_to_its_own_tenant() {
    for fx in fixtures(KeySettings::default()).await {
        let cached = fx.repo.clone().with_cache(std::time::Duration::from_secs(600));
        let media = new_media("acme", b"png bytes cached");
        assert_eq!(cached.insert(&media).await.unwrap(), InsertOutcome::Inserted);
        assert_eq!(cached.get("acme", &media.id).await.unwrap().expect("row").record, media);
        // Deleted behind the cache's back (a repository without it, as another process would):
        // the owner is still served the cached copy, which shows the id is in the cache.
        assert_eq!(fx.repo.delete("acme", &media.id, None, None).await.unwrap(), Deletion::Last);
        assert!(cached.get("acme", &media.id).await.unwrap().is_some(), "{}: served from the cache", fx.db.backend());
        // The cache is keyed by id alone: another tenant asking for that id gets nothing from it.
        assert!(cached.get("other-tenant", &media.id).await.unwrap().is_none(), "{}", fx.db.backend());
        let wanted = [media.id.clone()];
        assert!(cached.get_many("other-tenant", &wanted).await.unwrap().is_empty(), "{}", fx.db.backend());
        cached.forget(&media.id);
        assert!(cached.get("acme", &media.id).await.unwrap().is_none(), "forgotten, and gone from the database");
    }
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_row_column_or_tenant_fails_with_data_integrity() {
    for fx in fixtures(KeySettings::default()).await {
        let a = new_media("acme", b"a");
        let b = new_media("acme", b"b");
        let other_tenant = new_media("globex", b"c");
        for media in [&a, &b, &other_tenant] {
            fx.repo.insert(media).await.unwrap();
        }
        // Another row of the same tenant and key: storage keys swapped.
        let copy_row = "UPDATE media_objects SET storage_key_enc = (SELECT storage_key_enc FROM media_objects WHERE id = $1) WHERE id = $2";
        with_pool!(&fx.db, |pool| sqlx::query(copy_row).bind(&a.id).bind(&b.id).execute(pool).await.map(|_| ()))
            .unwrap();
        let err = fx.repo.get("acme", &b.id).await.unwrap_err();
        assert!(is_integrity(&err), "{}: {err}", fx.db.backend());
        // Another column of the same row.
        let copy_column = "UPDATE media_objects SET uploader_enc = user_hint_enc WHERE id = $1";
        with_pool!(&fx.db, |pool| sqlx::query(copy_column).bind(&a.id).execute(pool).await.map(|_| ())).unwrap();
        assert!(is_integrity(&fx.repo.get("acme", &a.id).await.unwrap_err()));
        // Another tenant's value (sealed under another DEK and AAD).
        let copy_tenant = "UPDATE media_objects SET filename_enc = (SELECT filename_enc FROM media_objects WHERE id = $1) WHERE id = $2";
        let c2 = new_media("globex", b"d");
        fx.repo.insert(&c2).await.unwrap();
        with_pool!(&fx.db, |pool| sqlx::query(copy_tenant).bind(&a.id).bind(&c2.id).execute(pool).await.map(|_| ()))
            .unwrap();
        assert!(is_integrity(&fx.repo.get("globex", &c2.id).await.unwrap_err()));
        // A flipped bit in a stored value.
        let flip = "UPDATE media_objects SET sha256_enc = $2 WHERE id = $1";
        let mut sealed: Vec<u8> =
            with_pool!(&fx.db, |pool| sqlx::query_scalar("SELECT sha256_enc FROM media_objects WHERE id = $1")
                .bind(&other_tenant.id)
                .fetch_one(pool)
                .await)
            .unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        with_pool!(&fx.db, |pool| sqlx::query(flip)
            .bind(&other_tenant.id)
            .bind(&sealed)
            .execute(pool)
            .await
            .map(|_| ()))
        .unwrap();
        assert!(is_integrity(&fx.repo.get("globex", &other_tenant.id).await.unwrap_err()));
    }
}

#[tokio::test]
async fn a_wrapped_dek_copied_to_another_tenant_is_refused_on_unwrap() {
    for fx in fixtures(KeySettings::default()).await {
        let a = new_media("acme", b"a");
        let b = new_media("globex", b"b");
        fx.repo.insert(&a).await.unwrap();
        fx.repo.insert(&b).await.unwrap();
        let steal = "UPDATE tenant_keys SET wrapped_key = (SELECT wrapped_key FROM tenant_keys WHERE tenant_id = 'acme' \
                     AND purpose = 'dek' AND version = 1) WHERE tenant_id = 'globex' AND purpose = 'dek' AND version = 1";
        with_pool!(&fx.db, |pool| sqlx::query(steal).execute(pool).await.map(|_| ())).unwrap();
        let (_, cold) = fx.reopen(KeySettings::default());
        let err = cold.get("globex", &b.id).await.unwrap_err();
        assert!(matches!(err, DbError::Crypto(CryptoError::KeyMismatch)), "{}: {err}", fx.db.backend());
    }
}

#[tokio::test]
async fn no_known_value_appears_in_a_plain_dump_of_the_tables() {
    for fx in fixtures(KeySettings::default()).await {
        let media = new_media("acme", b"content");
        fx.repo.insert(&media).await.unwrap();
        let dump_sql = "SELECT * FROM media_objects";
        let keys_sql = "SELECT * FROM tenant_keys";
        let mut dump = Vec::new();
        match &fx.db {
            Database::Postgres(pool) => {
                for sql in [dump_sql, keys_sql] {
                    let text: Vec<String> = sqlx::query_scalar(&format!("SELECT row_to_json(t)::text FROM ({sql}) t"))
                        .fetch_all(pool)
                        .await
                        .unwrap();
                    dump.extend(text.join("\n").into_bytes());
                }
            }
            Database::Sqlite(pool) => {
                use sqlx::{Column, Row, ValueRef};
                for sql in [dump_sql, keys_sql] {
                    for row in sqlx::query(sql).fetch_all(pool).await.unwrap() {
                        for column in row.columns() {
                            let raw = row.try_get_raw(column.ordinal()).unwrap();
                            if raw.is_null() {
                                continue;
                            }
                            if let Ok(bytes) = row.try_get::<Vec<u8>, _>(column.ordinal()) {
                                dump.extend(bytes);
                            } else if let Ok(text) = row.try_get::<String, _>(column.ordinal()) {
                                dump.extend(text.into_bytes());
                            }
                        }
                    }
                }
            }
        }
        let dump_text = String::from_utf8_lossy(&dump).to_lowercase();
        let sha = media.sha256.unwrap();
        for secret in [
            "secret-holiday-filename",
            "uploader-subject-7f3a",
            "client-user-hint-91",
            &media.storage_key,
            "metadata-value-x100",
            &hex::encode(sha),
        ] {
            assert!(!dump_text.contains(&secret.to_lowercase()), "{}: {secret} found in the dump", fx.db.backend());
        }
        assert!(!dump.windows(32).any(|w| w == sha), "{}: raw sha256 found", fx.db.backend());
        assert!(dump_text.contains("image/png"), "the dump did read the rows");
    }
}

#[tokio::test]
async fn dedup_is_per_tenant_through_the_blind_index() {
    for fx in fixtures(KeySettings::default()).await {
        let first = new_media("acme", b"same bytes");
        let second = new_media("acme", b"same bytes");
        let elsewhere = new_media("globex", b"same bytes");
        assert_eq!(fx.repo.insert(&first).await.unwrap(), InsertOutcome::Inserted);
        assert_eq!(fx.repo.insert(&second).await.unwrap(), InsertOutcome::Duplicate(first.id.clone()));
        assert_eq!(fx.repo.insert(&elsewhere).await.unwrap(), InsertOutcome::Inserted, "{}", fx.db.backend());
        assert!(fx.repo.get("acme", &second.id).await.unwrap().is_none(), "the duplicate row was not stored");
    }
}

#[tokio::test]
async fn rows_of_two_uploaders_share_one_storage_key_and_only_the_last_delete_journals_it() {
    for fx in fixtures(KeySettings::default()).await {
        let backend = fx.db.backend();
        let first = new_media("acme", b"shared bytes");
        let mut second = new_media("acme", b"shared bytes");
        second.uploader = "another-uploader".into();
        second.filename = Some("second.png".into());
        assert_eq!(fx.repo.insert(&first).await.unwrap(), InsertOutcome::Inserted);
        let joined = InsertOutcome::Joined { storage_key: first.storage_key.clone(), object_dek_version: None };
        assert_eq!(fx.repo.insert(&second).await.unwrap(), joined, "{backend}");
        let read = fx.repo.get("acme", &second.id).await.unwrap().expect("the second row is stored").record;
        assert_eq!(read.storage_key, first.storage_key, "{backend}: it references the first row's object");
        assert_eq!((read.filename, read.uploader), (second.filename.clone(), second.uploader.clone()));
        // Its uploader again: that row comes back, nothing is stored.
        let mut retry = new_media("acme", b"shared bytes");
        retry.uploader = second.uploader.clone();
        assert_eq!(fx.repo.insert(&retry).await.unwrap(), InsertOutcome::Duplicate(second.id.clone()));
        assert!(fx.repo.get("acme", &retry.id).await.unwrap().is_none(), "{backend}");

        let journaled = |key: String| {
            let db = fx.db.clone();
            async move {
                let sql = "SELECT COUNT(*) FROM blob_journal WHERE storage_key = $1";
                let n: i64 = with_pool!(&db, |pool| sqlx::query_scalar(sql).bind(&key).fetch_one(pool).await).unwrap();
                n
            }
        };
        let at = Some((first.storage_key.as_str(), chrono::Utc::now()));
        assert_eq!(fx.repo.delete("acme", &first.id, None, at).await.unwrap(), Deletion::Shared, "{backend}");
        assert_eq!(journaled(first.storage_key.clone()).await, 0, "{backend}: a referenced object is not journaled");
        assert_eq!(fx.repo.delete("acme", &first.id, None, at).await.unwrap(), Deletion::None, "{backend}");
        assert_eq!(fx.repo.delete("acme", &second.id, None, at).await.unwrap(), Deletion::Last, "{backend}");
        assert_eq!(journaled(first.storage_key.clone()).await, 1, "{backend}: the last delete journals the key");
    }
}

#[tokio::test]
async fn concurrent_first_writes_create_one_key_per_purpose() {
    for fx in fixtures(KeySettings::default()).await {
        let tenant = format!("new-{}", random_hex(4));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (keys, _) = fx.reopen(KeySettings::default());
            let tenant = tenant.clone();
            tasks.push(tokio::spawn(async move { keys.current(&tenant, KeyPurpose::Dek).await.map(|k| *k.bytes()) }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap().unwrap());
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{}: writers got different keys", fx.db.backend());
        let rows: i64 =
            with_pool!(&fx.db, |pool| sqlx::query_scalar("SELECT COUNT(*) FROM tenant_keys WHERE tenant_id = $1")
                .bind(&tenant)
                .fetch_one(pool)
                .await)
            .unwrap();
        assert_eq!(rows, 1, "{}", fx.db.backend());
    }
}

#[tokio::test]
async fn passing_the_encryption_budget_rolls_a_new_dek_and_old_rows_stay_readable() {
    let settings = KeySettings { encryption_budget: 10, ..KeySettings::default() };
    for fx in fixtures(settings).await {
        let mut inserted = Vec::new();
        for i in 0..4u8 {
            let media = new_media("acme", &[i]);
            fx.repo.insert(&media).await.unwrap();
            inserted.push(media);
        }
        let versions: Vec<u32> = {
            let mut v = Vec::new();
            for media in &inserted {
                v.push(fx.repo.get("acme", &media.id).await.unwrap().unwrap().dek_version);
            }
            v
        };
        // Each row seals 6 values: the budget of 10 is passed by the second row.
        assert_eq!(versions, vec![1, 1, 2, 2], "{}", fx.db.backend());
    }
}
