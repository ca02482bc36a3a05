//! What the audit log gives away, through the real upload path: 16 concurrent uploads of one tenant
//! record 16 events in an unbroken chain; the database at rest (a `pg_dump`, the SQLite file) holds
//! no uploader subject, filename or client hint, and the audit table no media ID; once a tenant is
//! shredded its events link to no one, and the same caller afterwards gets an unrelated pseudonym.

use media_api::crypto::audit_mac::PseudonymKind;
use media_api::db::audit::{count_kind, AuditLog};
use media_api::jobs::shred::shred;
use media_api::with_pool;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::app::{random_hex, Stack, STACKS};
use crate::support::media::{media_app, png, MediaApp};

const SUBJECT: &str = "uploader-subject-privacy-4471";
const FILENAME: &str = "holiday-secret-name-8842.png";
const HINT: &str = "client-hint-user-3390";

/// Uploads one PNG with a filename and a client hint; its media ID.
async fn upload(m: &MediaApp, token: &str, seed: u64) -> String {
    let response = m
        .http()
        .post(m.url(&format!("/v1/media?filename={FILENAME}")))
        .bearer_auth(token)
        .header("content-type", "image/png")
        .header("x-principal-id", HINT)
        .body(png(600, seed))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{:?}: {body}", m.stack);
    body["id"].as_str().unwrap().to_owned()
}

/// Everything the database holds at rest, as text: a `pg_dump` of the service's database, or the
/// SQLite file with its write-ahead log.
async fn at_rest(m: &MediaApp) -> String {
    match m.stack {
        Stack::PostgresS3 => {
            let url = m.app.state.config.database.url.expose_secret().to_owned();
            let output = std::process::Command::new("pg_dump").arg("--no-owner").arg(&url).output().unwrap();
            assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
        Stack::SqliteFs => {
            // The database file, its write-ahead log and anything else the service keeps there.
            let data = m.app.dir.path().join("data");
            let mut text = String::new();
            for entry in std::fs::read_dir(&data).unwrap().flatten() {
                if entry.path().is_file() {
                    text.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()));
                }
            }
            assert!(text.contains("audit_events"), "no database file in {}", data.display());
            text
        }
    }
}

#[tokio::test]
async fn sixteen_concurrent_uploads_record_sixteen_events_and_the_database_names_no_one() {
    for stack in STACKS {
        let limits = [("MEDIA_MAX_CONCURRENT_UPLOADS", "32"), ("MEDIA_MAX_UPLOADS_PER_CALLER", "16")];
        let m = media_app(stack, &limits).await;
        let tenant = format!("privacy-{}", random_hex(3));
        let token = m.token(&tenant, SUBJECT, &[]);
        let mut ids = Vec::new();
        let uploads = (0..16u64).map(|seed| upload(&m, &token, seed));
        ids.extend(futures::future::join_all(uploads).await);
        assert_eq!(count_kind(&m.app.state.db, "media.uploaded").await.unwrap(), 16, "{stack:?}");
        let log = AuditLog::new(m.app.state.keys.clone());
        let report = log.verify(None).await.unwrap();
        assert!(report.broken.is_empty(), "{stack:?}: {report:?}");

        let dump = at_rest(&m).await;
        for secret in [SUBJECT, FILENAME, HINT] {
            assert!(!dump.contains(secret), "{stack:?}: {secret:?} is readable at rest");
        }
        let audit: Vec<(Option<String>, Option<String>, String)> = with_pool!(&m.app.state.db, |pool| {
            sqlx::query_as("SELECT actor, subject, details FROM audit_events").fetch_all(pool).await.unwrap()
        });
        let audit = format!("{audit:?}");
        for id in &ids {
            assert!(!audit.contains(id.as_str()), "{stack:?}: media ID {id} in the audit log");
        }
        // The caller is there, under its pseudonym (which an operator with the keys can compute).
        let caller = log.pseudonym(&tenant, PseudonymKind::Caller, SUBJECT).await.unwrap().unwrap();
        assert_eq!(audit.matches(&caller).count(), 16, "{stack:?}: {audit}");
        let first = log.pseudonym(&tenant, PseudonymKind::Media, &ids[0]).await.unwrap().unwrap();
        assert_eq!(audit.matches(&first).count(), 1, "{stack:?}");
    }
}

#[tokio::test]
async fn after_a_shred_the_tenants_events_link_to_no_one() {
    let m = media_app(Stack::PostgresS3, &[]).await;
    let tenant = format!("gone-{}", random_hex(3));
    let token = m.token(&tenant, SUBJECT, &[]);
    upload(&m, &token, 1).await;
    let log = AuditLog::new(m.app.state.keys.clone());
    let before = log.pseudonym(&tenant, PseudonymKind::Caller, SUBJECT).await.unwrap().expect("the tenant has keys");

    shred(&m.app.state.keys, m.app.state.pipeline.removal(), &tenant).await.unwrap();
    assert_eq!(log.pseudonym(&tenant, PseudonymKind::Caller, SUBJECT).await.unwrap(), None, "keys are destroyed");
    let report = log.verify(None).await.unwrap();
    assert!(report.broken.is_empty(), "a shred leaves the chain verifiable: {report:?}");

    // The tenant starts afresh: the same caller's new events carry an unrelated pseudonym.
    upload(&m, &token, 2).await;
    let after = log.pseudonym(&tenant, PseudonymKind::Caller, SUBJECT).await.unwrap().unwrap();
    assert_ne!(before, after);
    let actors: Vec<Option<String>> = with_pool!(&m.app.state.db, |pool| sqlx::query_scalar(
        "SELECT actor FROM audit_events WHERE tenant_id = $1 AND kind = 'media.uploaded' ORDER BY chain_seq"
    )
    .bind(&tenant)
    .fetch_all(pool)
    .await
    .unwrap());
    assert_eq!(actors, [Some(before), Some(after)]);
}
