//! The audit hash chain on both databases: events from key operations chain per tenant, `audit
//! verify` accepts an intact log and names the first broken link after a row is edited behind the
//! triggers' back.

use media_api::db::audit::{self, AuditEvent};
use media_api::db::tenant_keys::KeySettings;
use media_api::db::Database;
use media_api::with_pool;

use crate::support::repository::{fixtures, new_media};

#[tokio::test]
async fn key_events_chain_per_tenant_and_an_edit_behind_the_triggers_is_found() {
    for fx in fixtures(KeySettings::default()).await {
        for tenant in ["acme", "globex"] {
            fx.repo.insert(&new_media(tenant, tenant.as_bytes())).await.unwrap();
        }
        for i in 0..3 {
            let details = serde_json::json!({ "n": i });
            let event =
                AuditEvent { tenant: "acme", kind: "test.event", actor: Some("tester"), subject: Some("s"), details };
            audit::append(&fx.db, &event).await.unwrap();
        }
        let report = audit::verify(&fx.db).await.unwrap();
        assert_eq!(report.chains, 2, "{}", fx.db.backend());
        assert_eq!(report.events, 2 + 2 + 3, "a DEK and an index key per tenant, plus three events");
        assert!(report.broken.is_empty(), "{report:?}");

        // Edit event 3 of acme's chain through a connection that gets past the triggers.
        let forge = "UPDATE audit_events SET actor = 'someone-else' WHERE tenant_id = 'acme' AND chain_seq = 3";
        match &fx.db {
            Database::Postgres(pool) => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query(forge).execute(&mut *tx).await.unwrap();
                sqlx::query("ALTER TABLE audit_events ENABLE TRIGGER audit_events_no_update")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            }
            Database::Sqlite(pool) => {
                sqlx::query("DROP TRIGGER audit_events_no_update").execute(pool).await.unwrap();
                sqlx::query(forge).execute(pool).await.unwrap();
            }
        }
        let report = audit::verify(&fx.db).await.unwrap();
        assert_eq!(report.broken.len(), 1, "{}: {report:?}", fx.db.backend());
        assert_eq!((report.broken[0].tenant.as_str(), report.broken[0].chain_seq), ("acme", 3));

        let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
            .args(["audit", "verify"])
            .env_clear()
            .env("MEDIA_DATABASE_URL", &fx.db_url)
            .env("MEDIA_MASTER_KEYS", format!("k1:{}", fx.key_text))
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("\"acme\" is broken at event 3"), "{stderr}");
    }
}

#[tokio::test]
async fn deleting_an_event_is_refused_and_the_chain_stays_intact() {
    for fx in fixtures(KeySettings::default()).await {
        fx.repo.insert(&new_media("acme", b"x")).await.unwrap();
        let delete = with_pool!(&fx.db, |pool| sqlx::query("DELETE FROM audit_events WHERE chain_seq = 1")
            .execute(pool)
            .await
            .map(|_| ()));
        assert!(delete.is_err(), "{}: delete was allowed", fx.db.backend());
        assert!(audit::verify(&fx.db).await.unwrap().broken.is_empty());
    }
}
