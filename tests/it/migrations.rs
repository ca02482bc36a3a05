//! Migrations apply cleanly on both databases, twice, and the audit table refuses changes.

use media_api::config::DatabaseConfig;
use media_api::db::Database;
use media_api::with_pool;
use secrecy::SecretString;

use crate::support::app::fresh_postgres_url;

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
