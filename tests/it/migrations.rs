//! Migrations apply cleanly on both databases, twice, and the audit table refuses changes; rows
//! stored before dedup shared storage carry forward.

use std::sync::Arc;

use media_api::config::DatabaseConfig;
use media_api::crypto::keyring::Keyring;
use media_api::db::media::{Deletion, InsertOutcome, MediaRepo};
use media_api::db::tenant_keys::{KeySettings, TenantKeys};
use media_api::db::Database;
use media_api::with_pool;
use secrecy::SecretString;

use crate::support::app::fresh_postgres_url;
use crate::support::repository::new_media;

fn config(url: String) -> DatabaseConfig {
    DatabaseConfig {
        url: SecretString::from(url),
        max_connections: 2,
        acquire_timeout: std::time::Duration::from_secs(5),
        migrate_on_start: false,
        ca: None,
    }
}

async fn both_databases() -> (Database, Database, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pg = Database::connect(&config(fresh_postgres_url().await)).await.expect("postgres");
    let sqlite_url = format!("sqlite://{}", dir.path().join("nested/dir/media.db").display());
    let sqlite = Database::connect(&config(sqlite_url)).await.expect("sqlite");
    (pg, sqlite, dir)
}

const INSERT_AUDIT: &str =
    "INSERT INTO audit_events (tenant_id, chain_seq, kind, prev_hash, hash) VALUES ('t1', 1, 'test', $1, $2)";

#[tokio::test]
async fn migrations_apply_twice_and_the_second_run_does_nothing() {
    let (pg, sqlite, _dir) = both_databases().await;
    for db in [pg, sqlite] {
        let first = db.migrate().await.expect("first run");
        assert_eq!(first.already_applied, 0, "{}", db.backend());
        assert!(first.newly_applied >= 1, "{}", db.backend());
        let second = db.migrate().await.expect("second run");
        assert_eq!(second.newly_applied, 0, "{}", db.backend());
        assert_eq!(second.already_applied, first.newly_applied, "{}", db.backend());
        db.ping().await.expect("ping");
    }
}

#[tokio::test]
async fn the_audit_table_refuses_update_and_delete() {
    let (pg, sqlite, _dir) = both_databases().await;
    for db in [pg, sqlite] {
        db.migrate().await.expect("migrate");
        let (inserted, update, delete) = with_pool!(&db, |pool| (
            sqlx::query(INSERT_AUDIT)
                .bind(vec![0u8; 32])
                .bind(vec![1u8; 32])
                .execute(pool)
                .await
                .map(|r| r.rows_affected()),
            sqlx::query("UPDATE audit_events SET kind = 'forged'").execute(pool).await.map(|_| ()),
            sqlx::query("DELETE FROM audit_events").execute(pool).await.map(|_| ()),
        ));
        assert_eq!(inserted.expect("insert is allowed"), 1, "{}", db.backend());
        for refused in [update, delete] {
            let message = refused.expect_err("changes are refused").to_string();
            assert!(message.contains("append-only"), "{}: {message}", db.backend());
        }
    }
}

#[tokio::test]
async fn a_key_version_cannot_be_created_twice() {
    let (pg, sqlite, _dir) = both_databases().await;
    const INSERT_KEY: &str = "INSERT INTO tenant_keys (tenant_id, purpose, version, kek_id, wrapped_key, state) \
                              VALUES ('t1', 'dek', $1, 'k1', $2, 'active')";
    for db in [pg, sqlite] {
        db.migrate().await.expect("migrate");
        let (first, second) = with_pool!(&db, |pool| (
            sqlx::query(INSERT_KEY).bind(1i32).bind(vec![1u8]).execute(pool).await.map(|_| ()),
            sqlx::query(INSERT_KEY).bind(1i32).bind(vec![2u8]).execute(pool).await.map(|_| ()),
        ));
        first.expect("the first version is accepted");
        assert!(second.is_err(), "{}: a second row for the same version was accepted", db.backend());
    }
}

/// The migration after which identical bytes of several uploaders share one object.
const SHARED_STORAGE: i64 = 20261126000004;

/// Later migrations that only add a column today's repository writes: applied early too, so the
/// rows "of before" can be written with today's code (their columns carry forward as they would).
const COLUMNS_TODAY_WRITES: [i64; 2] = [20261128000001, JOURNAL_KEPT];

/// The migration after which old objects kept for a grace are journaled with their deadline.
const JOURNAL_KEPT: i64 = 20261129000001;

/// The migrations of `db`'s kind, read from the source tree.
async fn migrator(db: &Database) -> sqlx::migrate::Migrator {
    let dir = match db {
        Database::Postgres(_) => "migrations/postgres",
        Database::Sqlite(_) => "migrations/sqlite",
    };
    sqlx::migrate::Migrator::new(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).await.unwrap()
}

/// Applies exactly the migrations before `version`: the schema of a deployment of before it.
async fn migrate_only_below(db: &Database, version: i64) {
    let mut migrator = migrator(db).await;
    migrator.migrations = migrator.migrations.iter().filter(|m| m.version < version).cloned().collect();
    with_pool!(db, |pool| migrator.run(pool).await).unwrap();
}

/// Applies the migrations before `version` only (the schema a deployment had before it), plus
/// [`COLUMNS_TODAY_WRITES`].
async fn migrate_before(db: &Database, version: i64) {
    let mut migrator = migrator(db).await;
    let earlier: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version < version || COLUMNS_TODAY_WRITES.contains(&m.version))
        .cloned()
        .collect();
    migrator.migrations = earlier.into();
    with_pool!(db, |pool| migrator.run(pool).await).unwrap();
}

async fn media_indexes(db: &Database) -> Vec<String> {
    let sql = match db {
        Database::Postgres(_) => "SELECT indexname FROM pg_indexes WHERE tablename = 'media_objects' ORDER BY 1",
        Database::Sqlite(_) => {
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'media_objects' ORDER BY 1"
        }
    };
    with_pool!(db, |pool| sqlx::query_scalar(sql).fetch_all(pool).await).unwrap()
}

#[tokio::test]
async fn rows_stored_before_dedup_shared_storage_carry_forward_and_start_sharing() {
    let (pg, sqlite, _dir) = both_databases().await;
    for db in [pg, sqlite] {
        let backend = db.backend();
        migrate_before(&db, SHARED_STORAGE).await;
        assert!(media_indexes(&db).await.contains(&"media_objects_dedup".to_owned()), "{backend}: the old schema");
        let keyring = Arc::new(Keyring::parse_env(&format!("k1:{}", Keyring::generate_key())).unwrap());
        let repo = MediaRepo::new(db.clone(), Arc::new(TenantKeys::new(db.clone(), keyring, KeySettings::default())));
        let (alice, other) = (new_media("acme", b"old bytes"), new_media("acme", b"other bytes"));
        for media in [&alice, &other] {
            assert_eq!(repo.insert(media).await.unwrap(), InsertOutcome::Inserted, "{backend}");
        }

        let report = db.migrate().await.unwrap();
        assert_eq!(report.applied_now, vec![SHARED_STORAGE], "{backend}");
        let indexes = media_indexes(&db).await;
        assert!(!indexes.contains(&"media_objects_dedup".to_owned()), "{backend}: the unique index is gone");
        assert!(indexes.contains(&"media_objects_content_group".to_owned()), "{backend}: {indexes:?}");
        for media in [&alice, &other] {
            let read = repo.get("acme", &media.id).await.unwrap().expect("the row carried forward");
            assert_eq!(&read.record, media, "{backend}");
        }
        // The old row is a group of one: another uploader's identical bytes now share its object,
        // and its own uploader's retry still answers it.
        let mut bob = new_media("acme", b"old bytes");
        bob.uploader = "bob".into();
        let joined = InsertOutcome::Joined { storage_key: alice.storage_key.clone(), object_dek_version: None };
        assert_eq!(repo.insert(&bob).await.unwrap(), joined, "{backend}");
        let retry = new_media("acme", b"old bytes");
        assert_eq!(repo.insert(&retry).await.unwrap(), InsertOutcome::Duplicate(alice.id.clone()), "{backend}");
        assert_eq!(repo.delete("acme", &alice.id, None, None).await.unwrap(), Deletion::Shared, "{backend}");
        assert_eq!(repo.delete("acme", &bob.id, None, None).await.unwrap(), Deletion::Last, "{backend}");
        assert_eq!(repo.delete("acme", &other.id, None, None).await.unwrap(), Deletion::Last, "{backend}");
    }
}

#[tokio::test]
async fn rows_stored_before_object_encryption_carry_forward_as_plain() {
    const OBJECT_ENCRYPTION: i64 = 20261128000001;
    const OLD_ROW: &str = "INSERT INTO media_objects (tenant_id, id, status, mime, size_bytes, dek_version, \
                           uploader_enc, storage_key_enc) VALUES ('acme', 'jan_old', 'ready', 'image/png', 3, 1, $1, $1)";
    let (pg, sqlite, _dir) = both_databases().await;
    for db in [pg, sqlite] {
        let backend = db.backend();
        migrate_only_below(&db, OBJECT_ENCRYPTION).await;
        with_pool!(&db, |pool| sqlx::query(OLD_ROW).bind(vec![1u8]).execute(pool).await.map(|_| ())).unwrap();
        let report = db.migrate().await.unwrap();
        assert_eq!(report.applied_now, vec![OBJECT_ENCRYPTION, JOURNAL_KEPT], "{backend}");
        let version: Option<i32> = with_pool!(&db, |pool| sqlx::query_scalar(
            "SELECT object_dek_version FROM media_objects WHERE id = 'jan_old'"
        )
        .fetch_one(pool)
        .await)
        .unwrap();
        assert_eq!(version, None, "{backend}: an old row's object is plain");
    }
}

#[tokio::test]
async fn journal_entries_written_before_kept_objects_carry_forward_under_the_abandoned_write_rule() {
    const OLD_ENTRY: &str = "INSERT INTO blob_journal (storage_key, created_at) VALUES ($1, $2)";
    let (pg, sqlite, _dir) = both_databases().await;
    for db in [pg, sqlite] {
        let backend = db.backend();
        migrate_only_below(&db, JOURNAL_KEPT).await;
        // An upload a crash cut off two hours ago, and an old object the former code journaled as
        // kept until an hour from now (dated forward).
        let now = chrono::Utc::now();
        for (key, at) in [("m/cut-off", now - chrono::Duration::hours(2)), ("m/kept", now + chrono::Duration::hours(1))]
        {
            with_pool!(&db, |pool| sqlx::query(OLD_ENTRY).bind(key).bind(at).execute(pool).await.map(|_| ())).unwrap();
        }
        let report = db.migrate().await.unwrap();
        assert_eq!(report.applied_now, vec![JOURNAL_KEPT], "{backend}");
        // Both keep the rule they were written under: taken once older than the abandoned age.
        let hour_ago = now - chrono::Duration::hours(1);
        let stale = media_api::db::journal::stale(&db, hour_ago, now, 10).await.unwrap();
        assert_eq!(stale, ["m/cut-off"], "{backend}");
        let later = now + chrono::Duration::hours(2);
        let stale = media_api::db::journal::stale(&db, later - chrono::Duration::minutes(30), later, 10).await.unwrap();
        assert_eq!(stale, ["m/cut-off", "m/kept"], "{backend}");
    }
}
