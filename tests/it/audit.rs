//! The keyed audit chain on both databases: an edit behind the triggers' back is found even when the
//! editor recomputes a plain hash, a cut tail is found against a checkpoint, concurrent appends from
//! two pools all land, and events of before the keyed format are carried forward (pseudonymized and
//! rechained) by the reseal that `migrate` runs.

use std::sync::Arc;

use media_api::db::audit::{Actor, AuditEvent, AuditLog, Subject, SYSTEM_CHAIN};
use media_api::db::tenant_keys::KeySettings;
use media_api::db::Database;
use media_api::with_pool;
use sha2::{Digest, Sha256};

use crate::support::repository::{fixtures, new_media, Fixture};

fn log(fx: &Fixture) -> AuditLog {
    AuditLog::new(fx.repo.keys().clone())
}

/// Runs `sql` with the append-only triggers lifted, as someone with full database access could.
async fn behind_the_triggers(db: &Database, sql: &str) {
    match db {
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
            sqlx::query(sql).execute(&mut *tx).await.unwrap();
            sqlx::query("ALTER TABLE audit_events ENABLE TRIGGER USER").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("DROP TRIGGER IF EXISTS audit_events_no_update").execute(pool).await.unwrap();
            sqlx::query("DROP TRIGGER IF EXISTS audit_events_no_delete").execute(pool).await.unwrap();
            sqlx::query(sql).execute(pool).await.unwrap();
        }
    }
}

async fn append_events(log: &AuditLog, tenant: &str, count: usize) {
    for i in 0..count {
        let event = AuditEvent {
            tenant,
            kind: "test.event",
            actor: Actor::Caller("tester-subject-55"),
            subject: Subject::Media("jan_testmediaid0001"),
            details: serde_json::json!({ "n": i }),
        };
        log.append(&event).await.unwrap();
    }
}

/// Runs the binary's `audit …` against the fixture; (exit code, stdout, stderr).
fn audit_cli(fx: &Fixture, args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["audit"];
    all.extend_from_slice(args);
    cli(fx, &all)
}

/// Runs the binary with `args` against the fixture's database and keyring.
fn cli(fx: &Fixture, args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_media-api"))
        .args(args)
        .env_clear()
        .env("MEDIA_DATABASE_URL", &fx.db_url)
        .env("MEDIA_MASTER_KEYS", format!("k1:{}", fx.key_text))
        .output()
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (output.status.code(), text(output.stdout), text(output.stderr))
}

#[tokio::test]
async fn events_chain_per_tenant_and_an_edit_is_found_even_with_a_recomputed_hash() {
    for fx in fixtures(KeySettings::default()).await {
        let log = log(&fx);
        for tenant in ["acme", "globex"] {
            fx.repo.insert(&new_media(tenant, tenant.as_bytes())).await.unwrap();
        }
        append_events(&log, "acme", 3).await;
        let report = log.verify(None).await.unwrap();
        assert_eq!(report.chains, 3, "{}: acme, globex and the system chain", fx.db.backend());
        assert_eq!(report.events, 2 + 2 + 1 + 3, "a DEK and an index key per tenant, the audit key, three events");
        assert_eq!(report.legacy_events, 0);
        assert!(report.broken.is_empty(), "{report:?}");

        // Someone with database access edits event 3 of acme and recomputes its hash the way an
        // unkeyed chain would (SHA-256 of prev and the fields), and marks it as of the old format.
        let (prev, at): (Vec<u8>, chrono::DateTime<chrono::Utc>) = with_pool!(&fx.db, |pool| sqlx::query_as(
            "SELECT prev_hash, occurred_at FROM audit_events WHERE tenant_id = 'acme' AND chain_seq = 3"
        )
        .fetch_one(pool)
        .await
        .unwrap());
        let forged = legacy_hash(&prev, ["acme", "3", &micros(&at), "test.event", "someone-else", "\0", "{}"]);
        let sql = format!(
            "UPDATE audit_events SET actor = 'someone-else', subject = NULL, details = '{{}}', format = 1, \
             hash = {} WHERE tenant_id = 'acme' AND chain_seq = 3",
            sql_bytes(&fx.db, &forged)
        );
        behind_the_triggers(&fx.db, &sql).await;
        let report = log.verify(None).await.unwrap();
        assert_eq!(report.broken.len(), 1, "{}: {report:?}", fx.db.backend());
        assert_eq!((report.broken[0].tenant.as_str(), report.broken[0].chain_seq), ("acme", 3));
        assert!(report.broken[0].reason.contains("unkeyed format"), "{report:?}");

        let (code, _, stderr) = audit_cli(&fx, &["verify"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("\"acme\" is broken at event 3"), "{stderr}");

        // A later `migrate` (a deploy, a restart) does not re-sign the downgraded event, and the
        // reseal cannot be asked for by hand either.
        let (code, stdout, stderr) = migrate_cli(&fx);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        let (code, _, stderr) = audit_cli(&fx, &["verify"]);
        assert_eq!(code, Some(1), "{}: resealed by a later migrate: {stderr}", fx.db.backend());
        let (code, stdout, _) = audit_cli(&fx, &["checkpoint"]);
        assert_eq!(code, Some(1), "a checkpoint of a broken chain would bless the edit: {stdout}");
    }
}

#[tokio::test]
async fn a_removed_audit_key_is_not_silently_replaced() {
    for fx in fixtures(KeySettings::default()).await {
        append_events(&log(&fx), "acme", 2).await;
        with_pool!(&fx.db, |pool| sqlx::query("DELETE FROM tenant_keys WHERE tenant_id = ''")
            .execute(pool)
            .await
            .map(|_| ())
            .unwrap());
        let (cold, _) = fx.reopen(KeySettings::default());
        let cold = AuditLog::new(cold);
        let event = AuditEvent {
            tenant: "acme",
            kind: "test.event",
            actor: Actor::System,
            subject: Subject::Nothing,
            details: serde_json::json!({}),
        };
        let err = cold.append(&event).await.expect_err("a new audit key would make the history unverifiable");
        assert!(matches!(err, media_api::db::DbError::AuditKeyMissing), "{}: {err}", fx.db.backend());
        let report = cold.verify(None).await.unwrap();
        assert!(!report.broken.is_empty(), "{report:?}");
        assert!(report.broken.iter().all(|b| b.reason.contains("audit key is missing")), "{report:?}");
    }
}

#[tokio::test]
async fn a_content_edit_under_the_keyed_format_is_found() {
    for fx in fixtures(KeySettings::default()).await {
        let log = log(&fx);
        append_events(&log, "acme", 4).await;
        assert!(log.verify(None).await.unwrap().broken.is_empty());
        behind_the_triggers(&fx.db, "UPDATE audit_events SET details = '{\"n\": 99}' WHERE chain_seq = 4").await;
        let report = log.verify(None).await.unwrap();
        let broken: Vec<_> = report.broken.iter().map(|b| (b.tenant.as_str(), b.chain_seq)).collect();
        assert!(broken.contains(&("acme", 4)), "{}: {report:?}", fx.db.backend());
        assert!(report.broken.iter().all(|b| b.reason.contains("MAC")), "{report:?}");
    }
}

#[tokio::test]
async fn a_cut_tail_passes_a_plain_verify_but_not_one_against_a_checkpoint() {
    for fx in fixtures(KeySettings::default()).await {
        let log = log(&fx);
        append_events(&log, "acme", 5).await;
        let (code, checkpoint, stderr) = audit_cli(&fx, &["checkpoint"]);
        assert_eq!(code, Some(0), "{stderr}");
        let parsed: serde_json::Value = serde_json::from_str(&checkpoint).unwrap();
        let acme = parsed["chains"].as_array().unwrap().iter().find(|c| c["tenant"] == "acme").unwrap().clone();
        assert_eq!(acme["chain_seq"], 5, "{checkpoint}");
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &checkpoint).unwrap();
        let path = file.path().to_str().unwrap();

        append_events(&log, "acme", 2).await;
        let (code, _, stderr) = audit_cli(&fx, &["verify", "--checkpoint", path]);
        assert_eq!(code, Some(0), "{}: events after the checkpoint are fine: {stderr}", fx.db.backend());

        // Cut the last three events (two after the checkpoint, and the checkpointed head).
        behind_the_triggers(&fx.db, "DELETE FROM audit_events WHERE tenant_id = 'acme' AND chain_seq >= 5").await;
        let plain = log.verify(None).await.unwrap();
        assert!(plain.broken.is_empty(), "without a checkpoint a cut tail still links up: {plain:?}");
        let (code, stdout, stderr) = audit_cli(&fx, &["verify", "--checkpoint", path]);
        assert_eq!(code, Some(1), "{}: {stdout}", fx.db.backend());
        assert!(stderr.contains("the chain ends at event 4 but the checkpoint saw event 5"), "{stderr}");
        assert!(stdout.contains("\"checkpoint_chains\""), "{stdout}");
    }
}

#[tokio::test]
async fn concurrent_appends_from_two_pools_all_land_in_one_unbroken_chain() {
    for fx in fixtures(KeySettings::default()).await {
        // A second connection pool with a cold key cache: another process, as far as the log knows.
        let (other_keys, _) = fx.reopen(KeySettings::default());
        let other_db = match &fx.db {
            Database::Postgres(_) => {
                let config = media_api::config::DatabaseConfig {
                    url: secrecy::SecretString::from(fx.db_url.clone()),
                    max_connections: 8,
                    acquire_timeout: std::time::Duration::from_secs(10),
                    migrate_on_start: false,
                    ca: None,
                };
                Database::connect(&config).await.unwrap()
            }
            Database::Sqlite(_) => fx.db.clone(),
        };
        let other = AuditLog::new(Arc::new(media_api::db::tenant_keys::TenantKeys::new(
            other_db,
            fx.keyring.clone(),
            KeySettings::default(),
        )));
        drop(other_keys);
        let logs = [log(&fx), other];
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let log = logs[i % 2].clone();
            tasks.spawn(async move { append_events(&log, "acme", 1).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
        let chain: Vec<i64> = with_pool!(&fx.db, |pool| sqlx::query_scalar(
            "SELECT chain_seq FROM audit_events WHERE tenant_id = 'acme' ORDER BY chain_seq"
        )
        .fetch_all(pool)
        .await
        .unwrap());
        assert_eq!(chain, (1..=32).collect::<Vec<i64>>(), "{}", fx.db.backend());
        assert!(logs[0].verify(None).await.unwrap().broken.is_empty());
    }
}

#[tokio::test]
async fn events_of_before_the_keyed_format_are_pseudonymized_and_rechained() {
    for fx in fixtures(KeySettings::default()).await {
        // The database as the previous release left it: no `format` column, migration 3 not applied.
        for sql in [
            "DROP INDEX audit_events_legacy",
            "ALTER TABLE audit_events DROP COLUMN format",
            "DELETE FROM _sqlx_migrations WHERE version = 20261126000003",
        ] {
            with_pool!(&fx.db, |pool| sqlx::query(sql).execute(pool).await.map(|_| ()).unwrap());
        }
        // Events as the previous release wrote them: plain SHA-256 chain, names in the clear.
        let mut heads = std::collections::HashMap::new();
        let legacy = [
            ("legacy", "media.uploaded", Some("alice-legacy-subject"), Some("jan_legacymediaid01")),
            ("legacy", "media.deleted", Some("alice-legacy-subject"), Some("jan_legacymediaid01")),
            (SYSTEM_CHAIN, "auth.refused", None, Some("192.0.2.77")),
        ];
        for (seq, (tenant, kind, actor, subject)) in legacy.iter().enumerate() {
            let seq = if *tenant == SYSTEM_CHAIN { 1 } else { seq as i64 + 1 };
            let at = chrono::Utc::now();
            let at = chrono::DateTime::parse_from_rfc3339(&micros(&at)).unwrap().to_utc();
            let prev_here: Vec<u8> = heads.get(tenant).cloned().unwrap_or_else(|| vec![0u8; 32]);
            let fields =
                [*tenant, &seq.to_string(), &micros(&at), kind, actor.unwrap_or("\0"), subject.unwrap_or("\0"), "{}"];
            let hash = legacy_hash(&prev_here, fields);
            let sql = "INSERT INTO audit_events (tenant_id, chain_seq, occurred_at, kind, actor, subject, details, \
                 prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, '{}', $7, $8)";
            with_pool!(&fx.db, |pool| sqlx::query(sql)
                .bind(tenant)
                .bind(seq)
                .bind(at)
                .bind(kind)
                .bind(actor)
                .bind(subject)
                .bind(&prev_here)
                .bind(&hash)
                .execute(pool)
                .await
                .map(|_| ())
                .unwrap());
            heads.insert(*tenant, hash);
        }
        let log = log(&fx);

        // The `migrate` that adds the format reseals them; the next one does nothing; by hand it is
        // refused (a reseal is on record).
        let (code, stdout, stderr) = migrate_cli(&fx);
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("3 event(s) of 2 chain(s) pseudonymized and resealed"), "{stdout}");
        let (code, stdout, _) = migrate_cli(&fx);
        assert_eq!(code, Some(0));
        assert!(!stdout.contains("resealed"), "{stdout}");
        let (code, _, stderr) = audit_cli(&fx, &["reseal-legacy"]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("resealed already"), "{stderr}");

        let after = log.verify(None).await.unwrap();
        assert_eq!((after.legacy_events, after.broken.len()), (0, 0), "{}: {after:?}", fx.db.backend());
        let names: Vec<(Option<String>, Option<String>)> =
            with_pool!(&fx.db, |pool| sqlx::query_as("SELECT actor, subject FROM audit_events ORDER BY seq")
                .fetch_all(pool)
                .await
                .unwrap());
        let all = format!("{names:?}");
        for secret in ["alice-legacy-subject", "jan_legacymediaid01", "192.0.2.77"] {
            assert!(!all.contains(secret), "{secret} still in the clear: {all}");
        }
        // "legacy" never had keys: its names link to no one; the address is under the audit key.
        assert!(all.contains("caller:unlinkable") && all.contains("media:unlinkable"), "{all}");
        let address = log.pseudonym(SYSTEM_CHAIN, media_api::crypto::audit_mac::PseudonymKind::Address, "192.0.2.77");
        assert!(all.contains(&address.await.unwrap().unwrap()), "{all}");
    }
}

fn migrate_cli(fx: &Fixture) -> (Option<i32>, String, String) {
    cli(fx, &["migrate"])
}

/// The unkeyed hash of the previous release (and of anyone recomputing a link without the key).
fn legacy_hash(prev: &[u8], fields: [&str; 7]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    for part in fields {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().to_vec()
}

fn micros(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A byte string literal for `db`'s SQL.
fn sql_bytes(db: &Database, bytes: &[u8]) -> String {
    match db {
        Database::Postgres(_) => format!("'\\x{}'::bytea", hex::encode(bytes)),
        Database::Sqlite(_) => format!("X'{}'", hex::encode(bytes)),
    }
}
